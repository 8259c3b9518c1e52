"""The napari plugin (``napari.yaml``): a dock widget that segments an image layer, and a reader for our label TIFFs.

The widget segments the selected image layer (the plane on screen, for a stack) with the ready model or a ``.keras``
file of your choice, through the package's API (``Model.segment``: the same nuclei as ``predict``), and adds a Labels
layer whose features are the measurements. The model runs in a process of its own (``remote.RemoteSegmenter``:
TensorFlow and the viewer's OpenGL can crash together in one process), followed by a worker thread, so the viewer
stays responsive and shows the progress. The reader opens the
label TIFFs that ``predict`` writes (``labels/<name>.tif``) as Labels layers, at their pixel size. Needs the optional
``napari`` extra (``pip install "nucleunet[napari]"``).
"""

import logging
from pathlib import Path

import napari.viewer
import numpy as np
import tifffile
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import thread_worker

from nucleunet import outputs
from nucleunet.calibration import UNKNOWN, Calibration, from_tiff
from nucleunet.errors import UserError
from nucleunet.models import find_model
from nucleunet.remote import RemoteSegmenter

log = logging.getLogger("nucleunet.napari")

READY = "the ready model (unet_dsb2018)"


class SegmentWidget(Container):
    """Segment nuclei: an image layer and a model in, a Labels layer with the measurements as features out."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image", choices=self._image_layers)
        self.model_file = FileEdit(label="model", filter="*.keras", value="",
                                   tooltip=f"a .keras file; empty: {READY}")
        self.tta = CheckBox(label="test-time augmentation", value=True,
                            tooltip="average the 8 flips and rotations: better outlines, about 8x the time")
        self.run_button = PushButton(text="Segment")
        self.progress = ProgressBar(label="tiles", value=0, visible=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.layer, self.model_file, self.tta, self.run_button, self.progress, self.status])
        self.run_button.changed.connect(self.run)
        napari_viewer.layers.events.inserted.connect(self.layer.reset_choices)
        napari_viewer.layers.events.removed.connect(self.layer.reset_choices)
        self.segmenter: RemoteSegmenter | None = None
        self.worker = None

    def _image_layers(self, _widget=None) -> list:
        return [layer for layer in self.viewer.layers if layer.__class__.__name__ == "Image"]

    def model_path(self) -> str | None:
        """The chosen model's ``.keras`` file (None: the ready model), checked to exist."""
        path = str(self.model_file.value or "")
        return None if path in ("", ".") else str(find_model(path))

    def image(self) -> tuple[np.ndarray, str]:
        """The selected layer's image as the API takes it (the plane on screen, for a stack), and its name."""
        layer = self.layer.value
        if layer is None:
            raise UserError("no image layer to segment: open an image first")
        data = np.asarray(layer.data[-1] if layer.multiscale else layer.data)
        plane_axes = 3 if layer.rgb else 2
        if data.ndim > plane_axes:  # a stack: the plane the viewer shows
            step = self.viewer.dims.current_step[:data.ndim - plane_axes]
            data = data[tuple(step)]
        return data, layer.name

    def run(self) -> None:
        """Segment the selected image in the model's process, waited on by a worker thread; the result becomes a
        Labels layer."""
        try:
            image, name = self.image()
            model_path = self.model_path()
        except UserError as error:
            self.status.value = f"error: {error}"
            return
        layer = self.layer.value
        if self.segmenter is None:
            self.segmenter = RemoteSegmenter()
        self.run_button.enabled, self.progress.visible, self.status.value = False, True, f"segmenting {name}"
        self.worker = _follow(self.segmenter.segment(model_path, image, name=name,
                                                     pixel_size=_layer_pixel_size(layer), tta=bool(self.tta.value)))
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda result: self._add_labels(result, name, layer))
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker.start()

    def _on_progress(self, step: tuple[str, float]) -> None:
        kind, value = step
        if kind == "total":
            self.progress.max, self.progress.value = max(int(value), 1), 0
        else:
            self.progress.value = min(self.progress.value + int(round(value)), self.progress.max)

    def _on_error(self, error: Exception) -> None:
        self.progress.visible = False
        self.status.value = f"error: {error}"

    def _add_labels(self, result: dict, name: str, layer) -> None:
        self.progress.visible = False
        self.status.value = f"{result['count']} nuclei in {name}"
        self.viewer.add_labels(result["labels"], name=f"{name} nuclei", features=result["measurements"],
                               scale=tuple(layer.scale)[-2:], translate=tuple(layer.translate)[-2:])


@thread_worker
def _follow(messages):
    """Yield the model process's progress as it comes, and return its result."""
    for kind, value in messages:
        if kind == "result":
            return value
        yield kind, value
    raise RuntimeError("the model's process gave no result")


def _layer_pixel_size(layer) -> Calibration:
    """A layer's pixel size where its scale is in micrometres (not the default 1), else unknown."""
    scale = float(tuple(layer.scale)[-1])
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units else ""
    if scale != 1.0 and unit in ("micrometer", "micron", "µm", "um"):
        return Calibration(scale, "option")
    return UNKNOWN


def get_reader(path: str | list[str]):
    """napari's reader hook: ``read_labels`` for a label TIFF this package wrote, else None (napari tries others)."""
    if isinstance(path, list) or not str(path).lower().endswith((".tif", ".tiff")):
        return None
    try:
        with tifffile.TiffFile(path) as tiff:
            software = tiff.pages[0].tags.get("Software")
            ours = software is not None and software.value == outputs.SOFTWARE
            labels = ours and np.issubdtype(tiff.pages[0].dtype, np.integer)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return read_labels if labels else None


def read_labels(path: str) -> list[tuple]:
    """A label TIFF as napari layer data: [(labels, {name, scale in micrometres if calibrated}, 'labels')]."""
    with tifffile.TiffFile(path) as tiff:
        labels = tiff.asarray()
        pixels = from_tiff(tiff, str(path))
    metadata = {"name": Path(path).stem}
    if pixels.known:
        metadata.update(scale=(pixels.pixel_size, pixels.pixel_size), units=("micrometer", "micrometer"))
    return [(labels, metadata, "labels")]

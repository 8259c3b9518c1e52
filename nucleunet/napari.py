"""The napari plugin (``napari.yaml``): a dock widget that segments an image layer, and a reader for our label TIFFs.

The widget segments the selected image layer (the plane on screen, for a stack) with the ready model or a ``.keras``
file of your choice, through the package's API (``Model.segment``: the same nuclei as ``predict``), in a worker thread
so the viewer stays responsive, and adds a Labels layer whose features are the measurements. The reader opens the
label TIFFs that ``predict`` writes (``labels/<name>.tif``) as Labels layers, at their pixel size. Needs the optional
``napari`` extra (``pip install "nucleunet[napari]"``).
"""

import logging
import queue
import threading
from pathlib import Path

import napari.viewer
import numpy as np
import tifffile
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import thread_worker

from nucleunet import outputs
from nucleunet.api import Model, Segmentation, load_model
from nucleunet.calibration import UNKNOWN, Calibration, from_tiff
from nucleunet.errors import UserError

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
        self._models: dict[str, Model] = {}
        self.worker = None

    def _image_layers(self, _widget=None) -> list:
        return [layer for layer in self.viewer.layers if layer.__class__.__name__ == "Image"]

    def model(self) -> Model:
        """The chosen model, loaded once."""
        path = str(self.model_file.value or "")
        key = path if path not in ("", ".") else READY
        if key not in self._models:
            self._models[key] = load_model(None if key == READY else path)
        return self._models[key]

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
        """Segment the selected image in a worker thread; the result becomes a Labels layer."""
        try:
            image, name = self.image()
            model = self.model()
        except UserError as error:
            self.status.value = f"error: {error}"
            return
        layer = self.layer.value
        pixel_size = _layer_pixel_size(layer)
        self.run_button.enabled, self.progress.visible, self.status.value = False, True, f"segmenting {name}"
        self.worker = _segment_in_thread(model, image, name, pixel_size, tta=bool(self.tta.value))
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda found: self._add_labels(found, name, layer))
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

    def _add_labels(self, found: Segmentation, name: str, layer) -> None:
        self.progress.visible = False
        self.status.value = f"{found.count} nuclei in {name}"
        features = found.measurements
        self.viewer.add_labels(found.labels, name=f"{name} nuclei", features=features,
                               scale=tuple(layer.scale)[-2:], translate=tuple(layer.translate)[-2:])


@thread_worker
def _segment_in_thread(model: Model, image: np.ndarray, name: str, pixel_size: Calibration, *, tta: bool):
    """``Model.segment`` of one image in a thread of its own, yielding ('total', tiles) and ('tiles', done) as it
    goes (for the progress bar), and returning its ``Segmentation``."""
    updates: queue.Queue = queue.Queue()
    result: dict = {}

    def work():
        try:
            result["found"] = model.segment(image, name=name, pixel_size=pixel_size, tta=tta,
                                            progress=lambda tiles: updates.put(("tiles", tiles)),
                                            total=lambda tiles: updates.put(("total", tiles)))
        except Exception as error:  # noqa: BLE001 - raised again in the worker, which reports it
            result["error"] = error
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (update := updates.get()) is not None:
        yield update
    if "error" in result:
        raise result["error"]
    return result["found"]


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

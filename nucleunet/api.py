"""The public API: load a model, segment an image array.

    import nucleunet
    model = nucleunet.load_model()                 # the ready model; or a name, a .keras file, a run folder
    result = model.segment(image)                  # image: (H, W) or (H, W, C) array, any dtype and range
    result.labels                                  # (H, W) int32, 0 = background, nuclei 1..n
    result.measurements                            # pandas DataFrame, one row per nucleus

``Model.segment`` does for one array exactly what ``predict`` does for one image it has read: the same
pre-processing, flat field, automatic zoom, test-time augmentation, post-processing and nucleus score, from the
model's ``postprocessing.json``. ``nucleunet.segment_files`` segments many files and writes what ``predict`` writes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nucleunet import imaging, inputs, outputs, prediction
from nucleunet.calibration import UNKNOWN, Calibration, check_pixel_size, plausibility, zoom_for_diameter
from nucleunet.errors import UserError
from nucleunet.models import DEFAULT_MODEL, TrainedModel, find_model
from nucleunet.postprocessing import MAX_SCALE, MIN_SCALE, Postprocessing
from nucleunet.tiling import MIN_OVERLAP, TILE_SIZE

log = logging.getLogger("nucleunet")


@dataclass(eq=False)
class Segmentation:
    """The nuclei of one image, as ``Model.segment`` found them.

    Attributes
    ----------
    labels : ndarray, shape (H, W), int32
        0 = background, nuclei numbered 1..n.
    mask : ndarray, shape (H, W), bool
        The foreground: where the nucleus probability is above the threshold.
    probability : ndarray, shape (H, W), float32 in [0, 1], or None
        The nucleus probability (with ``probability=True``).
    scores : ndarray, shape (n,), float64 in [0, 1], or None
        How likely each nucleus is a true one (nucleus i + 1's at i), where the model has a nucleus score.
    scale : float
        The zoom the image was predicted at (chosen per image with scale 'auto').
    unevenness : float
        How much the background level varies across the image (``imaging.background_unevenness``).
    flattened, smoothed : bool
        Whether the background was flattened, and the image smoothed, before prediction.
    nonfinite_pixels : int
        NaN or infinite pixels replaced by the median of the others.
    calibration : Calibration
        The pixel size (micrometres) and where it comes from; unknown unless given or read from the file.
    image : ndarray, shape (H, W) or (H, W, C)
        The image the intensities are measured in: the input, or its ``channel``.
    solidity : ndarray, shape (n,), float64, or None
        Each nucleus's solidity as the nucleus score measured it (NaN where it did not: a nucleus of a large image
        that a neighbouring block's nucleus trimmed), which ``measurements`` reuses; None without a nucleus score.
    """

    labels: np.ndarray
    mask: np.ndarray
    probability: np.ndarray | None
    scores: np.ndarray | None
    scale: float
    unevenness: float
    flattened: bool
    smoothed: bool
    nonfinite_pixels: int
    calibration: Calibration
    image: np.ndarray = dataclasses.field(repr=False)
    solidity: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def count(self) -> int:
        """The number of nuclei."""
        return int(self.labels.max(initial=0))

    @functools.cached_property
    def areas(self) -> np.ndarray:
        """The area (pixels) of each nucleus, nucleus i + 1's at i: ndarray, shape (n,), int64."""
        labels = self.labels
        # counted over the foreground only: a count over every pixel of a large image first copies it to int64
        return np.bincount(labels[labels > 0], minlength=self.count + 1)[1:]

    @functools.cached_property
    def measurements(self) -> pd.DataFrame:
        """One row per nucleus, in label order: label, centroid, area, perimeter, equivalent diameter,
        eccentricity, solidity, mean and max intensity in ``image`` (per channel for colour), and its
        ``score`` where the model has a nucleus score (``outputs.measure``); with a known pixel size also
        ``area_um2``, ``perimeter_um``, ``equivalent_diameter_um`` and ``pixel_size_um``."""
        table = outputs.measure(self.labels, self.image, pixel_size=self.calibration.pixel_size,
                                solidity=self.solidity)
        if self.scores is not None:
            table["score"] = np.round(np.asarray(self.scores)[table["label"].to_numpy() - 1], 3)
        return table


class Model:
    """A trained nucleus segmentation model with its settings; what ``load_model`` returns.

    Attributes
    ----------
    name : str
        The ready model's name, or the path of the ``.keras`` file.
    path : Path
        The ``.keras`` file.
    postprocessing : Postprocessing
        The settings ``segment`` uses: the model's ``postprocessing.json``.
    normalization : (float, float)
        The percentiles of each image's intensities stretched to 0 and 1, as in training.
    engine : str
        What the network runs on: 'int8' (the model's 8-bit copy on ONNX Runtime: about 2x faster, labels within a
        stated tolerance of float32's, ``tests/test_int8.py``) where the model has one and the CPU computes 8-bit dot
        products, else 'onnx' (ONNX Runtime, where the model has an ONNX copy and onnxruntime is installed) or
        'keras', these two giving the same labels (``tests/test_onnx.py``); see ``models.ENGINES``.
    """

    def __init__(self, trained: TrainedModel, name: str | None = None, engine: str = "auto"):
        self.trained = trained
        self.name = name or str(trained.path)
        self.engine = trained.engine(engine)  # what the network runs on: 'onnx', 'int8' or 'keras'
        # one network for this model and its with_settings copies
        self._load = functools.cache(functools.partial(trained.predictor, self.engine))

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    @property
    def path(self) -> Path:
        return self.trained.path

    @property
    def postprocessing(self) -> Postprocessing:
        return self.trained.postprocessing

    @property
    def normalization(self) -> tuple[float, float]:
        return self.trained.normalization

    @property
    def predictor(self) -> tuple[prediction.PredictTiles, int, int]:
        """The network as ``prediction.PredictTiles``, its tile size and tile overlap; loaded at first use and
        shared with the models ``with_settings`` makes of this one."""
        return self._load()

    def with_settings(self, **overrides) -> Model:
        """This model with single post-processing fields replaced (``Postprocessing``'s: ``tta=False``,
        ``scale=1.0``, ``threshold=0.5``, ...), the network shared; a name that is not a field, or a bad value,
        is a ``UserError``."""
        if not overrides:
            return self
        fields = {field.name for field in dataclasses.fields(Postprocessing)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise UserError(f"unknown setting(s) {', '.join(unknown)}: the settings are {', '.join(sorted(fields))}")
        changed = Model(dataclasses.replace(self.trained, postprocessing=self.postprocessing.replace(**overrides)),
                        self.name, self.engine)
        changed._load = self._load
        return changed

    def with_network(self, predict_tiles: prediction.PredictTiles) -> Model:
        """This model's settings and run files with another network in place of its ``.keras`` file: e.g. the same
        model served by TensorFlow Serving or exported (``export``), as a ``prediction.PredictTiles`` callable that maps
        tiles (N, T, T, 1) float32 in [0, 1] to probabilities (N, T, T, C). It is given tiles of the size the model
        was trained on."""
        config = self.trained.config
        tile_size = config.tile_size if config else TILE_SIZE
        min_overlap = config.min_overlap if config else MIN_OVERLAP
        served = Model(self.trained, self.name, "keras")
        served._load = lambda: (predict_tiles, tile_size, min_overlap)
        return served

    @property
    def min_side(self) -> int:
        """The smallest image side the network can use: one pixel at its coarsest level, 2 ** (depth - 1)."""
        config = self.trained.config
        return 2 ** ((config.depth if config else 5) - 1)

    def prepare(self, image, *, channel: int | None = None, name: str = "image",
                max_pixels: int = inputs.MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, int]:
        """An image array as the network is to see it.

        Parameters
        ----------
        image : array, shape (H, W) or (H, W, C) with C <= 4, any real dtype and range
            RGB(A) is converted to gray by luminance unless ``channel`` picks one.
        channel : int, optional
            The nuclear channel (0-based) of a multichannel image.
        name : str
            Names the image in messages.
        max_pixels : int
            A larger image is refused (``inputs.MAX_PIXELS`` by default).

        Returns
        -------
        plane : ndarray, shape (H, W) or (H, W, 3|4): the image (its ``channel``), non-finite pixels replaced
        preprocessed : ndarray, shape (H, W), float32 in [0, 1]: gray, stretched, nuclei bright (``imaging.preprocess``)
        nonfinite : int, how many pixels were NaN or infinite

        Raises
        ------
        UserError
            An array of another shape, an empty one, one smaller than ``min_side`` or larger than ``max_pixels``, one
            of a non-numeric dtype, or one without a finite pixel.
        """
        array = np.asarray(image)
        if array.dtype.kind not in "biuf":
            raise UserError(f"{name}: expected an array of numbers, got dtype {array.dtype}")
        if array.ndim == 2:
            axes = "YX"
        elif array.ndim == 3 and array.shape[-1] <= 4:
            axes = "YXS"
        else:
            raise UserError(f"{name}: expected an image of shape (H, W) or (H, W, C) with at most 4 channels, got "
                            f"shape {array.shape}; segment a stack or a channel-first array plane by plane")
        if array.size == 0:
            raise UserError(f"{name}: the image is empty (shape {array.shape})")
        if min(array.shape[:2]) < self.min_side:
            raise UserError(f"{name}: {array.shape[0]} x {array.shape[1]} pixels, too small to segment: the network "
                            f"needs at least {self.min_side} x {self.min_side}")
        if array.shape[0] * array.shape[1] > max_pixels:
            raise UserError(f"{name}: {array.shape[0] * array.shape[1]:,} pixels, over the limit of {max_pixels:,} "
                            f"(max_pixels, --max-pixels)")
        (_, plane), = inputs.planes(array, axes, channel=channel, name=name)
        plane, nonfinite = imaging.replace_nonfinite(plane, name=name)
        if nonfinite:
            log.warning("%s: %d pixel values are NaN or infinite; replaced by the median of the others", name,
                        nonfinite)
        if composite := imaging.composite_channels(plane):
            log.warning("%s looks like a fluorescence composite (signal in %s): it is converted to gray by "
                        "luminance, which weighs blue 0.07; if the nuclei are in one channel, pass --channel N "
                        "(channel=N in Python; 0 red, 1 green, 2 blue)", name, " and ".join(composite))
        return plane, imaging.preprocess(plane, self.normalization), nonfinite

    def segment(self, image, *, channel: int | None = None, pixel_size: float | Calibration | None = None,
                diameter: float | None = None, probability: bool = False, preprocessed: bool = False,
                name: str = "image", max_pixels: int = inputs.MAX_PIXELS, progress=None, total=None,
                **settings) -> Segmentation:
        """Find the nuclei of one image.

        Parameters
        ----------
        image : array, shape (H, W) or (H, W, C) with C <= 4, any real dtype and range
            As ``prepare`` takes it; or, with ``preprocessed``, shape (H, W) float32 in [0, 1] as ``prepare``
            returns it (the DSB loader's ``ImageRecord.image``).
        channel : int, optional
            The nuclear channel (0-based) of a multichannel image.
        pixel_size : float or Calibration, optional
            Micrometres per pixel: the measurements get micrometre columns, and ``diameter`` is read in micrometres.
        diameter : float, optional
            The typical diameter of the image's nuclei (micrometres with a pixel size, else pixels): the image is
            zoomed to bring it to the model's training nuclei (``calibration.zoom_for_diameter``) instead of the
            model's own zoom (the automatic one, for the ready model).
        probability : bool
            Also return the nucleus probability map.
        name : str
            Names the image in messages.
        max_pixels : int
            A larger image is refused (``prepare``).
        progress, total : callable, optional
            Called with the number of tiles each model call predicted, and once with how many there are in all
            (``prediction.segment_image``): a progress bar's ``update`` and total.
        **settings
            Overrides of single post-processing fields for this call (``with_settings``): ``tta=False``,
            ``scale=1.0``, ``min_score=None``, ...

        Returns
        -------
        Segmentation
        """
        calibration = pixel_size if isinstance(pixel_size, Calibration) else (
            UNKNOWN if pixel_size is None else Calibration(check_pixel_size(pixel_size, what="pixel_size"), "option"))
        if diameter is not None:
            settings = {**settings, "scale": self._zoom_for(diameter, calibration)}
        if settings:
            return self.with_settings(**settings).segment(image, channel=channel, pixel_size=calibration,
                                                          probability=probability, preprocessed=preprocessed,
                                                          name=name, max_pixels=max_pixels, progress=progress,
                                                          total=total)
        if preprocessed:
            plane = np.asarray(image)
            if plane.ndim != 2:
                raise UserError(f"{name}: a preprocessed image has shape (H, W), got {plane.shape}")
            model_input, nonfinite = plane, 0
        else:
            plane, model_input, nonfinite = self.prepare(image, channel=channel, name=name, max_pixels=max_pixels)
        predict_tiles, tile_size, min_overlap = self.predictor
        found = prediction.segment_image(predict_tiles, model_input, self.postprocessing, tile_size=tile_size,
                                         min_overlap=min_overlap, probability=probability, progress=progress,
                                         total=total)
        result = Segmentation(labels=found.labels, mask=found.mask,
                            probability=None if found.probability is None else found.probability.astype(np.float32),
                            scores=found.scores, scale=found.scale, unevenness=found.unevenness,
                            flattened=found.flattened, smoothed=found.smoothed, nonfinite_pixels=nonfinite,
                            calibration=calibration, image=plane, solidity=found.solidity)
        if warning := plausibility(_median_diameter(result.areas), calibration, name):
            log.warning(warning)
        return result

    def _zoom_for(self, diameter: float, calibration: Calibration) -> float:
        zoom = zoom_for_diameter(diameter, calibration, self.postprocessing.nucleus_area)
        if not MIN_SCALE <= zoom <= MAX_SCALE:
            unit = "µm" if calibration.known else "pixels"
            raise UserError(f"a nucleus diameter of {diameter:g} {unit} asks for a zoom of {zoom:.3g}, outside "
                            f"{MIN_SCALE}-{MAX_SCALE}: is the diameter (or the pixel size) right?")
        return zoom


def _median_diameter(areas: np.ndarray) -> float:
    """The median equivalent diameter (pixels) of nuclei of ``areas`` (pixels); 0 without nuclei."""
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if len(areas) else 0.0


def load_model(name_or_path: str | Path | None = None, *, engine: str = "auto") -> Model:
    """A model to segment with.

    Parameters
    ----------
    name_or_path : str or Path, optional
        None: the ready model (``models/README.md``); the name of a ready model (``READY_MODELS``); a ``.keras``
        file; or a folder that holds ``model.keras`` (a training run or an export), with its run files.
    engine : 'auto', 'float32', 'onnx', 'keras' or 'int8'
        What the network runs on (``Model.engine``, ``models.ENGINES``): 'auto' takes the 8-bit copy where the model
        has one and the CPU computes 8-bit dot products, else as 'float32': ONNX Runtime where it can, else Keras.

    Raises
    ------
    MissingPathError
        Nothing found where ``name_or_path`` says (the message names where it looked).

    Examples
    --------
    >>> import nucleunet
    >>> model = nucleunet.load_model()
    >>> model.name
    'unet_dsb2018'
    """
    return Model(TrainedModel.open(find_model(name_or_path)),
                 name=DEFAULT_MODEL if name_or_path is None else str(name_or_path), engine=engine)

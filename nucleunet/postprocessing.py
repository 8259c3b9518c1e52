"""How a model's maps become nuclei: the post-processing settings (``postprocessing.json``) and maps -> instances.

NumPy and scikit-image only. The maps come from ``prediction`` (nucleus probability, and where nuclei touch for
contact-aware models); ``Postprocessing.labels`` turns them into a label image, 0 = background, nuclei 1..n::

    settings = Postprocessing.load(run_dir / "postprocessing.json")   # chosen on CV by `tune`
    labels = settings.labels(maps)                                    # (H, W) int32 instances
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import skimage.morphology
import skimage.segmentation

from nucleunet import nucleus_score, runs
from nucleunet.errors import UserError

log = logging.getLogger("nucleunet.postprocessing")

# The zooms that scale='auto' chooses from: steps of sqrt(2) over 0.35-2.83x, and the largest speck as a fraction of
# an image's typical nucleus area; both chosen on CV images shrunk and enlarged 0.25x-4x (experiments/zoom_range.py;
# docs/results.md, "Automatic scale").
AUTO_SCALES = tuple(float(2 ** (step / 2)) for step in range(-3, 4))  # 0.35, 0.5, 0.71, 1, 1.41, 2, 2.83
MAX_SPECK_FRACTION = 0.25
# Zooms are products of sqrt(2)'s powers: one that is this close above a bound (1.001 times it) counts as on it.
ZOOM_ROUNDING = 1.001

# Bounds of the settings, so that no option or settings file asks for absurd work: a zoom beyond MAX_SCALE makes a
# block of 2048 x 2048 pixels (prediction.segment_image) a model input of more than 8,192 x 8,192.
MIN_SCALE, MAX_SCALE = 0.05, 4.0
MIN_TILE, MAX_TILE, TILE_MULTIPLE = 32, 4096, 16
MAX_MIN_SIZE = 10**6
MAX_MARKER_HEIGHT = 1000.0
MAX_NUCLEUS_AREA = 10**7
# The numbers of views test-time augmentation may take (``Postprocessing.tta_views``; ``prediction.TTA_VIEWS``).
TTA_VIEW_COUNTS = (2, 4, 8)

# Fields that earlier versions wrote into postprocessing.json and that their decision rules rejected
# (docs/results.md), with the value that meant "off": a file that has them still loads.
REMOVED_FIELDS = {"min_size_relative": None, "auto_gain": False, "gain": 1.0, "gain_base": 0.0}


class Nuclei(NamedTuple):
    """What ``Postprocessing.nuclei`` finds in the maps of an image."""

    labels: np.ndarray  # (H, W) int32, 0 = background, nuclei 1..n
    scores: np.ndarray | None  # (n,) float64 in [0, 1], nucleus i + 1's at i; None without a score model
    solidity: np.ndarray | None  # (n,) float64, each nucleus's area over its convex hull's, as the score measured it


@dataclass(frozen=True)
class Postprocessing:
    """How a model's maps become nuclei; saved as ``postprocessing.json`` beside the model.

    Training writes its config's values; ``tune`` replaces them with the best on the CV split;
    ``evaluate`` and ``predict`` read them, and their command-line options override single fields.

    The defaults were chosen on the CV split with ``tune`` (``docs/results.md``): connected
    components beat the distance watershed (CV mAP 0.437 against at most 0.402 for marker heights
    1..5) and dropping specks of <= 30 pixels beat 15 and 0; for contact models a contact probability
    above 0.2 seeds no nucleus (chosen among 0.1..0.7).

    Attributes
    ----------
    threshold : float in (0, 1)
        Foreground where the nucleus probability is above it.
    min_size : int
        Largest object (pixels) dropped as a speck, but at most ``MAX_SPECK_FRACTION`` of the image's typical
        nucleus area: in an image of nuclei smaller than ``min_size`` (a low magnification) they are kept.
    marker_height : float or None
        None: split touching nuclei by the contact channel if the model has one, else not at all;
        a number: by a distance watershed with markers that high (``probability_to_labels``).
    contact_threshold : float in (0, 1)
        With a contact channel: pixels of higher contact probability seed no nucleus.
    tta : bool
        Test-time augmentation when predicting the maps: the model's maps of ``tta_views`` flipped or turned views
        of the image, averaged.
    tta_views : int, 2, 4 or 8
        With ``tta``, how many views (``prediction.TTA_VIEWS``): 2, the image and its mirror image; 4, its four
        mirrorings; 8, those and their quarter turns. The model's work grows with the number.
    tta_extra_zooms : bool
        With ``tta`` and ``extra_zooms``: the extra zooms are predicted with the same views (True), or the image
        alone (False: the views at ``scale`` only; an extra zoom of 1.41 holds twice the pixels, so its views
        cost the most).
    scale : float or 'auto'
        The images are zoomed by it before the model sees them (``prediction.predict_maps``); ``min_size`` stays
        in the image's own pixels. 'auto': each image by its own zoom, the one of ``AUTO_SCALES`` that
        brings its typical nucleus area, measured in a first pass at 1x, closest to ``nucleus_area``
        (``adaptation.resolve``).
    nucleus_area : float or None
        The typical nucleus area (pixels) of the images the model was trained on (``reference_area``);
        what scale 'auto' zooms toward. Training runs record it.
    tile_size : int, 'auto' or None
        The tiles the model sees: None, the size it was trained on; 'auto', the fewest tiles of at most
        ``prediction.AUTO_TILE_MAX`` pixels that cover each image (``tiling.inference_tile_size``); or a side.
    min_score : float in (0, 1) or None
        Drop the nuclei that ``score_model`` gives a lower score: the probability, learnt on training images,
        that a predicted nucleus matches a true one (``nucleus_score``). None: keep every nucleus.
    score_model : dict or None
        ``nucleus_score.ScoreModel.as_dict()``, written by ``tune --fit-score``.
    extra_zooms : tuple of float
        Relative zooms at which each image is predicted as well, the maps averaged with those at ``scale``
        (``zooms``): (1.41,) also predicts at 1.41 times the zoom (zoomed in: twice the pixels, so about 3x the
        model's work in all). A zoom outside ``AUTO_SCALES``' range is left out. Empty: ``scale`` alone.
    flat_field : bool
        Flatten an uneven background (a ramp of haze or stray light, vignetting: a flat-field error) before
        predicting, in each image whose background level varies by more than
        ``adaptation.MAX_BACKGROUND_UNEVENNESS``; an evenly lit image is left as it is. On by default: on CV it
        raised the background-ramp shift's mAP from 0.542 to 0.589 and lowered no other column (docs/results.md,
        "Uneven illumination").
    denoise : bool
        Smooth a noisy image (a Gaussian of ``imaging.DENOISE_SIGMA`` pixels) before predicting, where its pixel
        noise is above ``adaptation.MIN_DENOISE_NOISE`` and its edges are not soft (``adaptation.denoises``); a
        clean or blurred image is left as it is.
    """

    threshold: float = 0.5
    min_size: int = 30
    marker_height: float | None = None
    contact_threshold: float = 0.2
    tta: bool = False
    tta_views: int = 8
    tta_extra_zooms: bool = True
    scale: float | str = 1.0
    tile_size: int | str | None = None
    nucleus_area: float | None = None
    min_score: float | None = None
    score_model: dict | None = dataclasses.field(default=None, repr=False)  # long: in postprocessing.json
    extra_zooms: tuple[float, ...] = ()
    flat_field: bool = True
    denoise: bool = False

    def __post_init__(self):
        if isinstance(self.extra_zooms, (str, bytes)) or not isinstance(self.extra_zooms, (list, tuple)):
            raise UserError(f"extra_zooms must be a list of zooms in [{MIN_SCALE}, {MAX_SCALE}] other than 1, got "
                            f"{self.extra_zooms!r}")
        for zoom in self.extra_zooms:
            _check_number("extra_zooms", zoom, MIN_SCALE, MAX_SCALE)
            if zoom == 1:
                raise UserError("extra_zooms must not hold 1: the zoom of scale itself")
        object.__setattr__(self, "extra_zooms", tuple(float(zoom) for zoom in self.extra_zooms))  # comparable
        _check_number("threshold", self.threshold, 0.0, 1.0, open_ends=True)
        _check_number("contact_threshold", self.contact_threshold, 0.0, 1.0, open_ends=True)
        _check_number("min_size", self.min_size, 0, MAX_MIN_SIZE, integer=True)
        object.__setattr__(self, "min_size", int(self.min_size))
        if self.marker_height is not None:
            _check_number("marker_height", self.marker_height, 0.0, MAX_MARKER_HEIGHT, open_ends=True, none=True)
        if self.scale != "auto":
            _check_number("scale", self.scale, MIN_SCALE, MAX_SCALE, auto=True)
        if self.nucleus_area is not None:
            _check_number("nucleus_area", self.nucleus_area, 0.0, MAX_NUCLEUS_AREA, open_ends=True, none=True)
        if self.scale == "auto" and self.nucleus_area is None:
            raise UserError("scale 'auto' needs the typical nucleus area of the model's training images "
                            "(nucleus_area in its postprocessing.json), which this model's files do not give: "
                            "run 'tune' on the model once to add it, or give a --scale factor")
        for name in ("tta", "tta_extra_zooms", "flat_field", "denoise"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.tta_views, bool) or self.tta_views not in TTA_VIEW_COUNTS:
            raise UserError(f"tta_views must be one of {', '.join(map(str, TTA_VIEW_COUNTS))}, got {self.tta_views!r}")
        object.__setattr__(self, "tta_views", int(self.tta_views))
        if self.tile_size not in (None, "auto") and not (
                isinstance(self.tile_size, int) and not isinstance(self.tile_size, bool)
                and MIN_TILE <= self.tile_size <= MAX_TILE and self.tile_size % TILE_MULTIPLE == 0):
            raise UserError(f"tile_size must be None, 'auto' or a side of {MIN_TILE}-{MAX_TILE} pixels divisible by "
                            f"{TILE_MULTIPLE}, got {self.tile_size!r}")
        if self.min_score is not None:
            _check_number("min_score", self.min_score, 0.0, 1.0, open_ends=True, none=True)
            if self.score_model is None:
                raise UserError("min_score needs a score model (score_model in postprocessing.json), which these "
                                "settings do not have: run 'tune --fit-score' on the model to fit one")
        if self.score_model is not None:
            try:
                nucleus_score.ScoreModel.from_dict(self.score_model)
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise UserError(f"score_model is not a valid score model: {error}") from None

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "the post-processing settings") -> Postprocessing:
        """From a dict: a loaded ``postprocessing.json``, or a ``TrainConfig``'s fields (other keys are ignored).

        A field of ``REMOVED_FIELDS`` is ignored; where its value was not the one that meant "off" (so that
        these settings now find other nuclei than when it was written), with one warning that names ``source``.
        """
        changed = sorted(name for name, off in REMOVED_FIELDS.items() if name in values and values[name] != off)
        if changed:
            log.warning("%s: ignoring %s, removed from this version (docs/results.md says why); the nuclei found may "
                        "differ from those found when it was written", source, ", ".join(changed))
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Postprocessing:
        """Read a ``postprocessing.json``; a bad field is a ``UserError`` that names the file and the field."""
        values = runs.read_json(path)
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected the post-processing settings as a JSON object, got {values!r:.60}")
        try:
            return cls.from_dict(values, source=str(path))
        except UserError as error:
            raise UserError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        runs.write_json(path, dataclasses.asdict(self))

    def replace(self, **changes) -> Postprocessing:
        """A copy with the fields in ``changes`` replaced (command-line overrides)."""
        return dataclasses.replace(self, **changes)

    def labels(self, maps: np.ndarray) -> np.ndarray:
        """Instances from ``prediction.predict_maps``: ndarray (H, W), int32, 0 = background, nuclei 1..n.

        Split by the contact channel if there is one and no marker height is set, else as
        ``probability_to_labels`` without contacts; then, with ``min_score``, the nuclei scoring under it dropped.
        """
        if self.min_score is None:  # no cut: the scores are not needed
            return self._split(maps)
        return self.nuclei(maps).labels

    def nuclei(self, maps: np.ndarray, kept_by=None) -> Nuclei:
        """``labels(maps)``, and with a ``score_model`` the score of each of its nuclei (measured before the cut,
        as the cut saw it) and the solidity the score measured (``outputs.measure`` reuses it).

        ``kept_by``: a function of the labels that says which nuclei will be kept (bool, shape (n + 1,), index 0 the
        background): only their convex hulls are measured, and the others' scores and solidity are not meaningful
        (a block of a large image keeps only the nuclei centred in it)."""
        labels = self._split(maps)
        if self.score_model is None:
            return Nuclei(labels, None, None)
        measured = nucleus_score.measure_nuclei(maps, labels, hulls=None if kept_by is None else kept_by(labels)[1:])
        scores = self.scorer.predict(measured)
        solidity = measured[:, nucleus_score.FEATURES.index("solidity")]
        if self.min_score is None:
            return Nuclei(labels, scores, solidity)
        kept = scores >= self.min_score
        return Nuclei(nucleus_score.drop_unsure(labels, scores, self.min_score), scores[kept], solidity[kept])

    def _split(self, maps: np.ndarray) -> np.ndarray:
        contact = maps[..., 1] if maps.shape[-1] > 1 and self.marker_height is None else None
        return probability_to_labels(maps[..., 0], threshold=self.threshold, min_size=self.min_size,
                                     marker_height=self.marker_height, contact=contact,
                                     contact_threshold=self.contact_threshold)

    @property
    def scorer(self) -> nucleus_score.ScoreModel | None:
        """The score model (``score_model``) as a ``nucleus_score.ScoreModel``, or None."""
        return None if self.score_model is None else nucleus_score.ScoreModel.from_dict(self.score_model)

    @property
    def zooms(self) -> tuple[float, ...]:
        """The zooms the maps are predicted at: ``scale`` (a number: after ``adaptation.resolve``), then ``scale``
        times each of ``extra_zooms`` that lies within ``AUTO_SCALES``' range."""
        if self.scale == "auto":
            raise ValueError("scale 'auto' has no zooms before it is resolved for an image (adaptation.resolve)")
        return (self.scale, *(exact_zoom(self.scale * zoom) for zoom in self.extra_zooms
                              if within_zoom_range(self.scale * zoom)))

    @property
    def views(self) -> int:
        """How many views of an image the model predicts at ``scale``: ``tta_views`` with ``tta``, else 1."""
        return self.tta_views if self.tta else 1

    @property
    def zoom_views(self) -> tuple[int, ...]:
        """How many views the model predicts at each of ``zooms``: ``views`` at ``scale``, and at the extra zooms
        too unless ``tta_extra_zooms`` is off (then one)."""
        extra = self.views if self.tta_extra_zooms else 1
        return (self.views,) + (extra,) * (len(self.zooms) - 1)

    def mask(self, maps: np.ndarray) -> np.ndarray:
        """The thresholded nucleus channel: ndarray (H, W), bool (what the pixel Dice scores)."""
        return maps[..., 0] > self.threshold


def _check_number(name: str, value, low: float, high: float, *, integer: bool = False, open_ends: bool = False,
                  none: bool = False, auto: bool = False) -> None:
    """A ``UserError`` naming ``name`` unless ``value`` is a number (an integer with ``integer``) in [low, high]
    ((low, high) with ``open_ends``); the message says what else the field may be (None, 'auto')."""
    kind = "an integer" if integer else "a number"
    bounds = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
    allowed = kind + " in " + bounds + (" or None" if none else "") + (" or 'auto'" if auto else "")
    good = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
    good = good and (not integer or float(value).is_integer()) and (low < value < high if open_ends
                                                                     else low <= value <= high)
    if not good:
        raise UserError(f"{name} must be {allowed}, got {value!r}")


def exact_zoom(zoom: float) -> float:
    """``zoom`` as the power of sqrt(2) it is within rounding of (a product of ``AUTO_SCALES``: 0.71 x 1.41 is
    1.0000000000000002 in floating point, and must be 1 for the image to be predicted as it is, and the automatic
    zoom's first pass reused, rather than resized by a factor of one); any other zoom as it is.

    Examples
    --------
    >>> 2**-0.5 * 2**0.5 == 1.0, exact_zoom(2**-0.5 * 2**0.5) == 1.0, exact_zoom(1.3)
    (False, True, 1.3)
    """
    snapped = float(2 ** (round(2 * np.log2(zoom)) / 2))
    return snapped if abs(zoom - snapped) <= 1e-9 * snapped else zoom


def within_zoom_range(zoom: float) -> bool:
    """Whether ``zoom`` lies within ``AUTO_SCALES``' range (give or take rounding): the zooms the model was made for."""
    return min(AUTO_SCALES) / ZOOM_ROUNDING <= zoom <= max(AUTO_SCALES) * ZOOM_ROUNDING


def probability_to_labels(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 30,
    marker_height: float | None = None,
    contact: np.ndarray | None = None,
    contact_threshold: float = 0.2,
) -> np.ndarray:
    """Split the predicted foreground into nuclei.

    With a ``contact`` map (the second output of a contact-aware U-Net), the foreground minus the
    predicted contacts gives one seed per nucleus, and a watershed on the contact map grows the
    seeds back over the whole foreground, so touching nuclei meet where their contact is most likely.

    Threshold, then a watershed on the distance transform: every maximum of the distance to the
    background that stands at least ``marker_height`` pixels above its surroundings seeds one
    nucleus (``skimage.morphology.h_maxima``), so two touching round nuclei, joined by a neck,
    come out as two. Objects of ``min_size`` pixels or fewer are dropped.

    Parameters
    ----------
    probability : ndarray, shape (H, W), float in [0, 1]
    threshold : float
        Foreground where ``probability > threshold``.
    min_size : int
        Largest object (in pixels) to drop as a speck; but never one of more than ``MAX_SPECK_FRACTION`` of
        the typical area of the objects found (``typical_area``), so that small nuclei are not all dropped,
        unless it is under ``min_size`` as the model sees it at the largest automatic zoom (3 pixels for 30).
    marker_height : float or None
        None (the default): no splitting, connected components only. Not with ``contact``.
    contact : ndarray, shape (H, W), float in [0, 1], optional
        Probability that a pixel lies where two nuclei touch.
    contact_threshold : float
        Seeds are foreground pixels with ``contact <= contact_threshold``.

    Returns
    -------
    labels : ndarray, shape (H, W), int32, 0 = background, nuclei numbered 1..n
    """
    probability = np.asarray(probability)
    if probability.ndim != 2:
        raise ValueError(f"expected a probability map of shape (H, W), got shape {probability.shape}")
    foreground = probability > threshold
    if contact is not None:
        contact = np.asarray(contact)
        if contact.shape != probability.shape:
            raise ValueError(f"contact map of shape {contact.shape} for a probability map of shape {probability.shape}")
        if marker_height is not None:
            raise ValueError("give either a contact map or a marker height, not both")
        markers = skimage.measure.label(foreground & (contact <= contact_threshold), connectivity=1)
        labels = skimage.segmentation.watershed(contact, markers, mask=foreground)
    elif marker_height is None:
        labels = skimage.measure.label(foreground, connectivity=1)
    else:
        distance = ndi.distance_transform_edt(foreground)
        markers = skimage.measure.label(skimage.morphology.h_maxima(distance, marker_height))
        labels = skimage.segmentation.watershed(-distance, markers, mask=foreground)
    return finish_labels(labels, foreground, min_size=min_size,
                         orphans=contact is not None or marker_height is not None)


def finish_labels(labels: np.ndarray, foreground: np.ndarray, *, min_size: int = 30,
                  orphans: bool = True) -> np.ndarray:
    """The last steps of ``probability_to_labels`` once ``foreground`` is split into ``labels``: with
    ``orphans``, every foreground part that no marker reached (too flat, or all contact) becomes a nucleus of its
    own; then specks are dropped (``min_size``: as ``probability_to_labels``) and the nuclei numbered 1..n
    (ndarray (H, W), int32)."""
    if orphans:
        parts = skimage.measure.label(foreground & (labels == 0), connectivity=1)
        labels = np.where(parts > 0, parts + labels.max(), labels)
    areas = np.bincount(labels.ravel())  # counted once, for the typical area and the specks
    # Nuclei smaller than min_size (a low magnification) are not specks; nor is one pixel a nucleus.
    floor = int(min_size / max(AUTO_SCALES) ** 2)
    min_size = min(min_size, max(int(MAX_SPECK_FRACTION * _typical_of_areas(areas[1:])), floor))
    relabelled, _, _ = skimage.segmentation.relabel_sequential(drop_specks(labels, min_size, areas=areas))
    return relabelled.astype(np.int32)


def drop_specks(labels: np.ndarray, min_size: int, *, areas: np.ndarray | None = None) -> np.ndarray:
    """``labels`` with the objects of ``min_size`` pixels or fewer set to background (0: none dropped);
    ``areas``: ``np.bincount(labels.ravel())`` where the caller has it already."""
    if min_size <= 0:
        return labels
    small = (np.bincount(labels.ravel()) if areas is None else areas) <= min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def typical_area(labels: np.ndarray) -> float:
    """The area of the object a foreground pixel typically belongs to: the area-weighted median of the objects'
    areas (0 without objects). Many small specks barely move it, as they hold few of the pixels.

    Examples
    --------
    >>> labels = np.zeros((20, 20), int); labels[:10, :10] = 1; labels[15, 15] = 2; labels[17, 17] = 3
    >>> typical_area(labels)
    100.0
    """
    return _typical_of_areas(np.bincount(np.asarray(labels).ravel())[1:])


def _typical_of_areas(areas: np.ndarray) -> float:
    """``typical_area`` from the objects' areas (zeros, for unused labels, ignored)."""
    areas = np.sort(areas[areas > 0])
    if not len(areas):
        return 0.0
    weight = np.cumsum(areas)
    return float(areas[np.searchsorted(weight, weight[-1] / 2)])


def reference_area(label_images) -> float:
    """The typical nucleus area of a training set: the median over its images of ``typical_area`` (images
    without nuclei left out; 0 if none has any). What ``Postprocessing.nucleus_area`` records.

    Examples
    --------
    >>> small, large = np.zeros((40, 40), int), np.zeros((40, 40), int)
    >>> small[:5, :10] = 1; large[:20, :20] = 1
    >>> reference_area([small, small, large, np.zeros((4, 4), int)])
    50.0
    """
    areas = [typical_area(labels) for labels in label_images]
    areas = [area for area in areas if area > 0]
    return float(np.median(areas)) if areas else 0.0

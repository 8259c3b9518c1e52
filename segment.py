"""From a model to nuclei: tiled prediction, post-processing, the competition metric, choosing the settings.

The model reaches this module as a callable (``make_predictor``), so nothing here imports Keras.

    predict_tiles = make_predictor(model)                           # any Keras model, or your own callable
    maps = predict_maps(predict_tiles, image, tta=True)             # (H, W, C): nuclei [, contacts]
    settings = Postprocessing.load(run_dir / "postprocessing.json")  # chosen on CV by `tune`
    labels = settings.labels(maps)                                   # (H, W) int32 instances
    score = score_image(true_labels, labels)                         # IoU -> matches -> AP, once per image
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import skimage.morphology
import skimage.segmentation
import skimage.transform

import nucleus_score
import runs
import tiling
from errors import UserError
from imaging import (background_unevenness, central, denoise, edge_sharpness, flatten_background, noise_sigma,
                     replace_nonfinite)
from tiling import MIN_OVERLAP, TILE_SIZE, inference_tile_size, make_tiles, stitch_tiles

log = logging.getLogger("segment")

# The competition's IoU thresholds: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)

# The largest tile side with tile_size='auto': an image up to 2048 x 2048 is one tile, as fast as one call
# on the whole image (bench/bench_large.py).
AUTO_TILE_MAX = 2048

# The most pixels one model call sees (``make_predictor``): what a call's activations take grows with its
# pixels (about 0.4 GiB per megapixel for the ready model on the CPU), so large tiles go one by one.
MAX_BATCH_PIXELS = 2**21

# The zooms that scale='auto' chooses from: steps of sqrt(2) over 0.35-2.83x, and the largest speck as a fraction of
# an image's typical nucleus area; both chosen on CV images shrunk and enlarged 0.25x-4x (bench/zoom_range.py;
# docs/results.md, "Automatic scale").
AUTO_SCALES = tuple(float(2 ** (step / 2)) for step in range(-3, 4))  # 0.35, 0.5, 0.71, 1, 1.41, 2, 2.83
MAX_SPECK_FRACTION = 0.25
# scale='auto' zooms no image in whose edges are softer than this (``imaging.edge_sharpness``, which discounts pixel
# noise): zooming a blurred image in enlarges its blur too and loses nuclei. The largest limit (in steps of 0.01) under
# which at most 5 % of the CV images as they are and none shrunk to 0.5x or less (with or without noise) fall; most
# blurred CV images, noisy or not, fall under it (bench/sharpness.py; docs/results.md, "Blurred images with noise").
MIN_ZOOM_IN_SHARPNESS = 0.40
# denoise smooths an image (``imaging.denoise``) whose pixel noise is above this (``imaging.noise_sigma``, in the
# preprocessed image's 0-1 range; clean CV images measure at most 0.015) and whose edges are not soft (edge sharpness at
# least MIN_ZOOM_IN_SHARPNESS: a blurred image is not smoothed further). Fixed before it was tried
# (docs/results/denoise/decision_rule.txt).
MIN_DENOISE_NOISE = 0.015
# auto_gain brightens an image whose nuclei, found by scale='auto''s first pass, have a level (``nucleus_level``) under
# MIN_NUCLEUS_LEVEL (the training images' 1st percentile, rounded down) to TARGET_NUCLEUS_LEVEL (their median): a few
# specks far brighter than the nuclei make the stretch dim them. Fixed before it was tried
# (docs/results/auto-gain/decision_rule.txt).
MIN_NUCLEUS_LEVEL = 0.28
TARGET_NUCLEUS_LEVEL = 0.61
# ... about the background, by at most MAX_GAIN, where the first pass finds at least MIN_GAIN_NUCLEI nuclei and the
# brightened first pass neither more than twice as many plus 5 nor fewer than half as many
# (docs/results/auto-gain/decision_rule_v2.txt).
MAX_GAIN = 4.0
MIN_GAIN_NUCLEI = 3
# flat_field flattens the background of an image (``imaging.flatten_background``) whose background level varies by
# more than this across it (``imaging.background_unevenness``, in the preprocessed image's 0-1 range): the smallest
# limit, in steps of 0.01, that at most 5 % of the CV images as they are pass (bench/background.py; docs/results.md,
# "Uneven illumination").
MAX_BACKGROUND_UNEVENNESS = 0.06
# Zooms are products of sqrt(2)'s powers: one that is this close above a bound (1.001 times it) counts as on it.
ZOOM_ROUNDING = 1.001

PredictTiles = Callable[[np.ndarray], np.ndarray]
"""Maps tiles, shape (N, T, T, 1) float32 in [0, 1], to probabilities (N, T, T, C): nuclei [, contacts]."""


# --------------------------------------------------------------------------------------------
# Tiled prediction
# --------------------------------------------------------------------------------------------

def make_predictor(model, batch_size: int = 8, max_pixels: int = MAX_BATCH_PIXELS) -> PredictTiles:
    """``PredictTiles`` for a Keras model: ``model.predict_on_batch`` over batches of ``batch_size`` tiles,
    fewer where they would hold more than ``max_pixels`` pixels (at least one tile a call).

    ``predict_on_batch`` per batch, not ``model.predict`` per image: ``predict``'s per-call set-up
    cost 28 % of stitched inference (``bench/bench_infer.py``).
    """
    def predict_tiles(tiles: np.ndarray) -> np.ndarray:
        step = max(min(batch_size, max_pixels // max(tiles.shape[1] * tiles.shape[2], 1)), 1)
        return np.concatenate([np.asarray(model.predict_on_batch(tiles[start:start + step]))
                               for start in range(0, len(tiles), step)])

    return predict_tiles


def predict_maps(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile_size=TILE_SIZE,
    min_overlap: int = MIN_OVERLAP,
    tta: bool = False,
    scale: float = 1.0,
) -> np.ndarray:
    """Every output channel of the model over a whole image of any size, from overlapping tiles.

    Parameters
    ----------
    predict_tiles : callable
        (N, T, T, 1) float32 -> (N, T, T, C) float probabilities, e.g. ``make_predictor(model)``;
        channel 0 is the nucleus probability, channel 1 (contact-aware models) where nuclei touch.
    image : ndarray, shape (H, W), float32 in [0, 1]
        A preprocessed image (``imaging.preprocess``). NaN or infinite pixels are replaced as
        ``imaging.replace_nonfinite`` says, with a warning; none finite is a ``UserError``.
    tile_size : int, (rows, cols), or 'auto'
        The tiles the model sees; 'auto': ``tiling.inference_tile_size`` of the image with tiles of
        at most ``AUTO_TILE_MAX`` pixels (a model that takes any size is needed).
    tta : bool
        Test-time augmentation: average the predictions of the 8 flips/rotations (8x the time).
    scale : float
        Zoom the image by this factor before predicting (2: nuclei twice as large as in the image, for
        nuclei smaller than the training set's), and the maps back to the image's size afterwards.

    Returns
    -------
    ndarray, shape (H, W, C), float32 in [0, 1]
        Tile predictions blended with ``tiling.tile_weights`` and cropped to the image.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a preprocessed image of shape (H, W), got shape {image.shape}")
    image, count = replace_nonfinite(image)
    if count:
        log.warning("%d pixel values are NaN or infinite; replaced by the median of the others", count)
    if scale <= 0:
        raise UserError(f"scale must be positive, got {scale}")
    if scale != 1.0:
        shape = image.shape
        zoomed = skimage.transform.resize(image, [max(int(round(side * scale)), 1) for side in shape], order=1,
                                          anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        maps = predict_maps(predict_tiles, zoomed, tile_size=tile_size, min_overlap=min_overlap, tta=tta)
        return skimage.transform.resize(maps, shape + maps.shape[2:], order=1, preserve_range=True).astype(np.float32)
    if tile_size == "auto":
        tile_size = inference_tile_size(image.shape, AUTO_TILE_MAX, min_overlap)
    tiles, corners = make_tiles(image.astype(np.float32), tile_size, min_overlap)
    tiles = tiles[..., None]
    transforms = range(8) if tta else (0,)
    total = None
    for k in transforms:
        turned = np.ascontiguousarray(dihedral_tiles(tiles, k))  # rectangular tiles turn into (N, W, H, 1)
        predicted = np.asarray(predict_tiles(turned))
        if predicted.ndim != 4 or predicted.shape[:3] != turned.shape[:3] or predicted.shape[3] < 1:
            raise ValueError(f"the model returned shape {predicted.shape} for tiles of shape {turned.shape}")
        restored = dihedral_tiles(predicted.astype(np.float32, copy=False), k, inverse=True)
        total = restored if total is None else total + restored
    return stitch_tiles(total / len(transforms) if len(transforms) > 1 else total, corners, image.shape, tile_size)


def predict_probability(predict_tiles: PredictTiles, image: np.ndarray, **options) -> np.ndarray:
    """Nucleus probability of a whole image: channel 0 of ``predict_maps`` (same options).

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]
    """
    return predict_maps(predict_tiles, image, **options)[..., 0]


def dihedral_tiles(tiles: np.ndarray, k: int, *, inverse: bool = False) -> np.ndarray:
    """One of the 8 flips/rotations of square tiles, shape (N, T, T, C); ``k`` in 0..7.

    ``inverse=True`` undoes transform ``k``.
    """
    if inverse:
        if k >= 4:
            tiles = tiles[:, :, ::-1]
        return np.rot90(tiles, -(k % 4), axes=(1, 2))
    tiles = np.rot90(tiles, k % 4, axes=(1, 2))
    return tiles[:, :, ::-1] if k >= 4 else tiles


# --------------------------------------------------------------------------------------------
# Post-processing: maps to instances
# --------------------------------------------------------------------------------------------

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
    min_size_relative : float or None
        Instead of ``min_size``'s fixed pixels, drop the objects of at most this fraction of the image's
        typical nucleus area (``typical_area``: estimated from the objects found), so that the rule holds
        for nuclei of any size and magnification; None: ``min_size``.
    marker_height : float or None
        None: split touching nuclei by the contact channel if the model has one, else not at all;
        a number: by a distance watershed with markers that high (``probability_to_labels``).
    contact_threshold : float in (0, 1)
        With a contact channel: pixels of higher contact probability seed no nucleus.
    tta : bool
        Test-time augmentation (the 8 flips/rotations averaged) when predicting the maps.
    scale : float or 'auto'
        The images are zoomed by it before the model sees them (``predict_maps``); ``min_size`` stays
        in the image's own pixels. 'auto': each image by its own zoom, the one of ``AUTO_SCALES`` that
        brings its typical nucleus area, measured in a first pass at 1x, closest to ``nucleus_area``
        (``resolve``).
    nucleus_area : float or None
        The typical nucleus area (pixels) of the images the model was trained on (``reference_area``);
        what scale 'auto' zooms toward. Training runs record it.
    tile_size : int, 'auto' or None
        The tiles the model sees: None, the size it was trained on; 'auto', the fewest tiles of at most
        ``AUTO_TILE_MAX`` pixels that cover each image (``tiling.inference_tile_size``); or a side.
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
        predicting, in each image whose background level varies by more than ``MAX_BACKGROUND_UNEVENNESS``
        (``prepare``); an evenly lit image is left as it is. On by default: on CV it raised the background-ramp
        shift's mAP from 0.542 to 0.589 and lowered no other column (docs/results.md, "Uneven illumination").
    denoise : bool
        Smooth a noisy image (a Gaussian of ``imaging.DENOISE_SIGMA`` pixels) before predicting, where its pixel
        noise is above ``MIN_DENOISE_NOISE`` and its edges are not soft (``denoises``); a clean or blurred image is
        left as it is.
    auto_gain : bool
        With scale 'auto': where the nuclei that the first pass finds are dim (``nucleus_level`` under
        ``MIN_NUCLEUS_LEVEL``), brighten the image so that they reach ``TARGET_NUCLEUS_LEVEL`` (``resolve``).
    gain, gain_base : float
        The image is stretched by ``gain`` about ``gain_base`` (``brighten``) before the model sees it: 1 and 0 (left
        as it is), or what ``resolve`` chose for one image with ``auto_gain``.
    """

    threshold: float = 0.5
    min_size: int = 30
    min_size_relative: float | None = None
    marker_height: float | None = None
    contact_threshold: float = 0.2
    tta: bool = False
    scale: float | str = 1.0
    tile_size: int | str | None = None
    nucleus_area: float | None = None
    min_score: float | None = None
    score_model: dict | None = dataclasses.field(default=None, repr=False)  # long: in postprocessing.json
    extra_zooms: tuple[float, ...] = ()
    flat_field: bool = True
    denoise: bool = False
    auto_gain: bool = False
    gain: float = 1.0
    gain_base: float = 0.0

    def __post_init__(self):
        try:
            extra = tuple(float(zoom) for zoom in self.extra_zooms)
        except (TypeError, ValueError):
            raise UserError(f"extra_zooms must be a list of positive numbers, got {self.extra_zooms!r}") from None
        if not all(zoom > 0 and zoom != 1.0 for zoom in extra):
            raise UserError(f"extra_zooms must be positive numbers other than 1, got {self.extra_zooms!r}")
        object.__setattr__(self, "extra_zooms", extra)  # a list from JSON: a tuple, so that settings compare equal
        if not 0.0 < self.threshold < 1.0:
            raise UserError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.contact_threshold < 1.0:
            raise UserError(f"contact_threshold must be in (0, 1), got {self.contact_threshold}")
        if self.min_size < 0:
            raise UserError(f"min_size must be non-negative, got {self.min_size}")
        if self.min_size_relative is not None and not 0.0 < self.min_size_relative < 1.0:
            raise UserError(f"min_size_relative must be in (0, 1) or None, got {self.min_size_relative}")
        if self.marker_height is not None and not self.marker_height > 0:
            raise UserError(f"marker_height must be positive or None, got {self.marker_height}")
        if self.scale != "auto" and not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise UserError(f"scale must be a positive number or 'auto', got {self.scale!r}")
        if self.nucleus_area is not None and not self.nucleus_area > 0:
            raise UserError(f"nucleus_area must be positive or None, got {self.nucleus_area}")
        if self.scale == "auto" and self.nucleus_area is None:
            raise UserError("scale 'auto' needs the typical nucleus area of the model's training images "
                            "(nucleus_area in its postprocessing.json), which this model's files do not give: "
                            "run 'tune' on the model once to add it, or give a --scale factor")
        if not (isinstance(self.gain, (int, float)) and self.gain >= 1.0):
            raise UserError(f"gain must be a number of at least 1, got {self.gain!r}")
        if not (isinstance(self.gain_base, (int, float)) and 0.0 <= self.gain_base < 1.0):
            raise UserError(f"gain_base must be a number in [0, 1), got {self.gain_base!r}")
        for name in ("flat_field", "denoise", "auto_gain"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.tile_size not in (None, "auto") and not (isinstance(self.tile_size, int) and self.tile_size >= 32):
            raise UserError(f"tile_size must be None, 'auto' or a side of at least 32 pixels, got {self.tile_size!r}")
        if self.min_score is not None and not 0.0 < self.min_score < 1.0:
            raise UserError(f"min_score must be in (0, 1) or None, got {self.min_score}")
        if self.min_score is not None and self.score_model is None:
            raise UserError("min_score needs a score model (score_model in postprocessing.json), which these "
                            "settings do not have: run 'tune --fit-score' on the model to fit one")
        if self.score_model is not None:
            try:
                nucleus_score.ScoreModel.from_dict(self.score_model)
            except (TypeError, ValueError) as error:
                raise UserError(f"score_model in the post-processing settings is not a valid score model: {error}")

    @classmethod
    def from_dict(cls, values: dict) -> Postprocessing:
        """From a dict: a loaded ``postprocessing.json``, or a ``TrainConfig``'s fields (other keys are ignored)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Postprocessing:
        return cls.from_dict(runs.read_json(path))

    def save(self, path: str | os.PathLike) -> None:
        runs.write_json(path, dataclasses.asdict(self))

    def replace(self, **changes) -> Postprocessing:
        """A copy with the fields in ``changes`` replaced (command-line overrides)."""
        return dataclasses.replace(self, **changes)

    def labels(self, maps: np.ndarray) -> np.ndarray:
        """Instances from ``predict_maps``: ndarray (H, W), int32, 0 = background, nuclei 1..n.

        Split by the contact channel if there is one and no marker height is set, else as
        ``probability_to_labels`` without contacts; then, with ``min_score``, the nuclei scoring under it dropped.
        """
        if self.min_score is None:  # no cut: the scores are not needed
            return self._split(maps)
        return self.labels_and_scores(maps)[0]

    def labels_and_scores(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``labels(maps)``, and with a ``score_model`` the score of each of its nuclei: ndarray, shape (n,),
        float64 in [0, 1], nucleus i + 1's at i (measured before the cut, as the cut saw it); else None."""
        labels = self._split(maps)
        if self.score_model is None:
            return labels, None
        scores = self.scorer.score(maps, labels)
        if self.min_score is None:
            return labels, scores
        return nucleus_score.drop_unsure(labels, scores, self.min_score), scores[scores >= self.min_score]

    def _split(self, maps: np.ndarray) -> np.ndarray:
        contact = maps[..., 1] if maps.shape[-1] > 1 and self.marker_height is None else None
        return probability_to_labels(maps[..., 0], threshold=self.threshold, min_size=self.min_size,
                                     min_size_relative=self.min_size_relative, marker_height=self.marker_height,
                                     contact=contact, contact_threshold=self.contact_threshold)

    @property
    def scorer(self) -> nucleus_score.ScoreModel | None:
        """The score model (``score_model``) as a ``nucleus_score.ScoreModel``, or None."""
        return None if self.score_model is None else nucleus_score.ScoreModel.from_dict(self.score_model)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Postprocessing]:
        """A preprocessed image as the model is to see it, and these settings for it with ``flat_field`` and ``denoise``
        off (the image is not measured again).

        With ``flat_field``, the background is flattened (``imaging.flatten_background``) if its level varies by more
        than ``MAX_BACKGROUND_UNEVENNESS`` (``imaging.background_unevenness``); with ``denoise``, the image is then
        smoothed (``imaging.denoise``) if ``denoises`` says so of ``image`` as given. Otherwise ``image`` itself."""
        settings = self.replace(flat_field=False, denoise=False)
        if settings == self:
            return image, self
        unevenness = background_unevenness(image) if self.flat_field else 0.0
        smooth = self.denoises(image)  # decided on the image as given, as predict's counts.csv reports it
        if self.flattens(unevenness):
            log.debug("background unevenness %.3f: the background is flattened", unevenness)
            image = flatten_background(image)
        if smooth:
            log.debug("pixel noise above %.3f: the image is smoothed", MIN_DENOISE_NOISE)
            image = denoise(image)
        return image, settings

    def flattens(self, unevenness: float) -> bool:
        """Whether ``prepare`` flattens an image whose ``imaging.background_unevenness`` is ``unevenness``."""
        return self.flat_field and unevenness > MAX_BACKGROUND_UNEVENNESS

    def denoises(self, image: np.ndarray) -> bool:
        """Whether ``prepare`` smooths ``image`` (preprocessed): with ``denoise``, where the pixel noise of its central
        2048 x 2048 pixels (``imaging.noise_sigma``) is above ``MIN_DENOISE_NOISE`` and their edge sharpness
        (``imaging.edge_sharpness``) is at least ``MIN_ZOOM_IN_SHARPNESS`` (a blurred image is not smoothed)."""
        if not self.denoise:
            return False
        part = central(image)
        return noise_sigma(part) > MIN_DENOISE_NOISE and edge_sharpness(part) >= MIN_ZOOM_IN_SHARPNESS

    def maps(self, predict_tiles: PredictTiles, image: np.ndarray, *, tile_size: int = TILE_SIZE,
             min_overlap: int = MIN_OVERLAP) -> np.ndarray:
        """``predict_maps`` of ``image`` (``prepare``d) with this object's ``tta``, ``scale`` (with 'auto',
        ``resolve``) and ``tile_size`` (if set; else the ``tile_size`` given: the model's); with ``extra_zooms``, the
        mean of the maps at each of ``zooms``."""
        image, settings = self.prepare(image)
        settings, done = settings.resolve(predict_tiles, image, tile_size=tile_size, min_overlap=min_overlap)
        if done is not None:
            return done
        image = brighten(image, settings.gain, settings.gain_base)
        total = None
        for zoom in settings.zooms:
            maps = predict_maps(predict_tiles, image, tile_size=settings.tile_size or tile_size,
                                min_overlap=min_overlap, tta=settings.tta, scale=zoom)
            total = maps if total is None else total + maps
        return total / len(settings.zooms) if len(settings.zooms) > 1 else total

    @property
    def zooms(self) -> tuple[float, ...]:
        """The zooms the maps are predicted at: ``scale`` (a number: after ``resolve``), then ``scale`` times each of
        ``extra_zooms`` that lies within ``AUTO_SCALES``' range."""
        if self.scale == "auto":
            raise ValueError("scale 'auto' has no zooms before it is resolved for an image (resolve)")
        return (self.scale, *(self.scale * zoom for zoom in self.extra_zooms if within_zoom_range(self.scale * zoom)))

    def resolve(self, predict_tiles: PredictTiles, image: np.ndarray, *, tile_size: int = TILE_SIZE,
                min_overlap: int = MIN_OVERLAP, most: int = AUTO_TILE_MAX) -> tuple[Postprocessing, np.ndarray | None]:
        """This object with the zoom it gives ``image`` as ``scale``, and the maps already predicted if they are
        the image's (else None).

        ``image`` as the model is to see it (``prepare``). A number stays as it is. 'auto' becomes the zoom of
        ``AUTO_SCALES`` that brings the image's typical nucleus area (``typical_area`` of a first pass at 1x without
        test-time augmentation, on at most the central ``most`` x ``most`` pixels; nuclei smaller than ``min_size``
        count, ``probability_to_labels``, and so do those under ``min_score``) closest to ``nucleus_area``
        (``choose_scale``); but no zoom above 1x where those pixels' edges are softer than
        ``MIN_ZOOM_IN_SHARPNESS`` (``imaging.edge_sharpness``: a blurred image): 1x rather than a zoom in, and none of
        ``extra_zooms`` that would take it above 1x. That first pass is returned when it covers the whole image, the
        zoom is 1 and ``tta`` is off: it is then the prediction. With ``auto_gain``, where the nuclei of that first
        pass are dim (``_auto_gain``), ``gain`` and ``gain_base`` brighten them toward ``TARGET_NUCLEUS_LEVEL`` and
        the first pass is made again on the brightened pixels; unless it then finds more than twice as many nuclei
        plus 5, or fewer than half as many (the brightened noise, or the background, became nuclei): then the image
        is left as it is.
        """
        if self.scale != "auto":
            return self, None
        part = brighten(central(image, most), self.gain, self.gain_base)
        first = self.replace(scale=1.0, tta=False, min_score=None, extra_zooms=(), auto_gain=False, gain=1.0,
                             gain_base=0.0)
        maps = first.maps(predict_tiles, part, tile_size=tile_size, min_overlap=min_overlap)  # every nucleus counts
        labels, gain, base = first.labels(maps), self.gain, self.gain_base
        if self.auto_gain and self.gain == 1.0:
            more, around, brightened = _auto_gain(part, labels)
            if more > 1.0:
                again = first.maps(predict_tiles, brightened, tile_size=tile_size, min_overlap=min_overlap)
                again_labels = first.labels(again)
                found, before = int(again_labels.max()), int(labels.max())
                if before / 2 <= found <= 2 * before + 5:
                    log.debug("dim nuclei: the image is brightened %.2fx about %.3f", more, around)
                    gain, base, part, maps, labels = more, around, brightened, again, again_labels
                else:
                    log.debug("brightened %.2fx, the first pass found %d objects instead of %d: not brightened",
                              more, found, before)
        area = typical_area(labels)
        scale, extra_zooms = choose_scale(area, self.nucleus_area), self.extra_zooms
        zooms_in = max(self.replace(scale=scale).zooms) > ZOOM_ROUNDING
        if zooms_in and (sharpness := edge_sharpness(part)) < MIN_ZOOM_IN_SHARPNESS:
            log.debug("edge sharpness %.3f: a blurred image is not zoomed in", sharpness)
            scale = min(scale, 1.0)
            extra_zooms = tuple(zoom for zoom in extra_zooms if scale * zoom <= ZOOM_ROUNDING)
        resolved = self.replace(scale=scale, extra_zooms=extra_zooms, auto_gain=False, gain=gain, gain_base=base)
        log.debug("typical nucleus area at 1x: %.0f pixels; zoom %.2f", area, resolved.scale)
        done = part.shape == image.shape and resolved.zooms == (1.0,) and not self.tta
        return resolved, (maps if done else None)

    def mask(self, maps: np.ndarray) -> np.ndarray:
        """The thresholded nucleus channel: ndarray (H, W), bool (what the pixel Dice scores)."""
        return maps[..., 0] > self.threshold


def probability_to_labels(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    min_size: int = 30,
    min_size_relative: float | None = None,
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
    min_size_relative : float, optional
        Instead of ``min_size`` (and that limit): drop objects of at most this fraction of ``typical_area(labels)``.
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
    return finish_labels(labels, foreground, min_size=min_size, min_size_relative=min_size_relative,
                         orphans=contact is not None or marker_height is not None)


def finish_labels(labels: np.ndarray, foreground: np.ndarray, *, min_size: int = 30,
                  min_size_relative: float | None = None, orphans: bool = True) -> np.ndarray:
    """The last steps of ``probability_to_labels`` once ``foreground`` is split into ``labels``: with
    ``orphans``, every foreground part that no marker reached (too flat, or all contact) becomes a nucleus of its
    own; then specks are dropped (``min_size``, ``min_size_relative``: as ``probability_to_labels``) and the
    nuclei numbered 1..n (ndarray (H, W), int32)."""
    if orphans:
        parts = skimage.measure.label(foreground & (labels == 0), connectivity=1)
        labels = np.where(parts > 0, parts + labels.max(), labels)
    areas = np.bincount(labels.ravel())  # counted once, for the typical area and the specks
    if min_size_relative is not None:
        min_size = int(min_size_relative * _typical_of_areas(areas[1:]))
    else:  # nuclei smaller than min_size (a low magnification) are not specks; nor is one pixel a nucleus
        floor = int(min_size / max(AUTO_SCALES) ** 2)
        min_size = min(min_size, max(int(MAX_SPECK_FRACTION * _typical_of_areas(areas[1:])), floor))
    relabelled, _, _ = skimage.segmentation.relabel_sequential(drop_specks(labels, min_size, areas=areas))
    return relabelled.astype(np.int32)


def within_zoom_range(zoom: float) -> bool:
    """Whether ``zoom`` lies within ``AUTO_SCALES``' range (give or take rounding): the zooms the model was made for."""
    return min(AUTO_SCALES) / ZOOM_ROUNDING <= zoom <= max(AUTO_SCALES) * ZOOM_ROUNDING


def choose_scale(area: float, reference: float, scales: tuple[float, ...] = AUTO_SCALES) -> float:
    """The zoom of ``scales`` (``AUTO_SCALES``) that brings nuclei of typical ``area`` closest to ``reference``
    (both in pixels; closest in log area); 1 where no nucleus was found (``area`` 0).

    Examples
    --------
    >>> choose_scale(400, 400), choose_scale(100, 400), choose_scale(1600, 400), choose_scale(0, 400)
    (1.0, 2.0, 0.5, 1.0)
    >>> round(choose_scale(200, 400), 3), round(choose_scale(10, 400), 3), choose_scale(10, 400, (0.5, 1.0, 2.0))
    (1.414, 2.828, 2.0)
    """
    if area <= 0:
        return 1.0
    wanted = np.log(reference / area) / 2  # a zoom s multiplies areas by s**2
    return min(scales, key=lambda scale: abs(np.log(scale) - wanted))


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


def brighten(image: np.ndarray, gain: float, base: float = 0.0) -> np.ndarray:
    """``image`` (in [0, 1]) stretched by ``gain`` about ``base``, ``base + (image - base) * gain``, clipped to [0, 1]
    (a new float32 array); itself for a gain of 1."""
    if gain == 1.0:
        return image
    stretched = (image - np.float32(base)) * np.float32(gain) + np.float32(base)
    return np.clip(stretched, 0.0, 1.0, out=stretched).astype(np.float32, copy=False)


def _auto_gain(image: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray | None]:
    """The gain, the background level it stretches about, and the brightened ``image``, for an image whose nuclei
    (``labels``, at least ``MIN_GAIN_NUCLEI``) are dim: their ``nucleus_level`` under ``MIN_NUCLEUS_LEVEL``. The
    background level is the median of the pixels outside every nucleus; the gain brings the nuclei's level to
    ``TARGET_NUCLEUS_LEVEL`` about it, at most ``MAX_GAIN``. (1, 0, None) where nothing is to be done."""
    if labels.max() < MIN_GAIN_NUCLEI or not (labels == 0).any():
        return 1.0, 0.0, None
    level = nucleus_level(image, labels)
    base = float(np.median(image[labels == 0]))
    if level is None or level >= MIN_NUCLEUS_LEVEL or level <= base:
        return 1.0, 0.0, None
    gain = min((TARGET_NUCLEUS_LEVEL - base) / (level - base), MAX_GAIN)
    if gain <= 1.0:
        return 1.0, 0.0, None
    return gain, base, brighten(image, gain, base)


def nucleus_level(image: np.ndarray, labels: np.ndarray) -> float | None:
    """How bright an image's nuclei are: the median, over the objects of ``labels``, of each one's 90th percentile
    intensity in ``image`` (preprocessed, nuclei bright); None without objects.

    Examples
    --------
    >>> image = np.zeros((10, 10), np.float32); image[:4, :4] = 0.2; image[6:, 6:] = 0.6; image[6:, :2] = 0.3
    >>> labels = np.zeros((10, 10), int); labels[:4, :4] = 1; labels[6:, 6:] = 2; labels[6:, :2] = 3
    >>> round(nucleus_level(image, labels), 2)
    0.3
    """
    count = int(labels.max())
    if count == 0:
        return None
    tops = ndi.labeled_comprehension(image, labels, np.arange(1, count + 1),
                                     lambda values: np.percentile(values, 90), np.float64, np.nan)
    tops = tops[np.isfinite(tops)]
    return float(np.median(tops)) if len(tops) else None


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


class Segmented(NamedTuple):
    """What ``segment_image`` returns."""

    labels: np.ndarray
    mask: np.ndarray
    probability: np.ndarray | None
    scale: float
    scores: np.ndarray | None


def segment_image(predict_tiles: PredictTiles, image: np.ndarray, settings: Postprocessing, *,
                  tile_size: int = TILE_SIZE, min_overlap: int = MIN_OVERLAP, block_size: int = 2048,
                  margin: int = 128, probability: bool = True,
                  progress=None, total=None) -> Segmented:
    """Nuclei of an image of any size, block by block so that memory stays bounded.

    An image no larger than ``block_size`` in both directions is predicted in one piece
    (``Postprocessing.maps`` and ``labels``). A larger one is cut into ``block_size`` blocks, each
    predicted and post-processed with ``margin`` pixels of context around it; a block keeps the nuclei
    whose centre lies in it, whole, so a nucleus cut by a block border comes out in one piece (nuclei
    up to ``margin`` pixels across; larger ones may be cut).

    Parameters
    ----------
    image : ndarray, shape (H, W), float32 in [0, 1], preprocessed
    probability : bool
        Also return the nucleus probability (2 bytes a pixel: leave it out of a large image unless needed).
    progress : callable, optional
        Called with the number of tiles each model call predicted (e.g. a tqdm bar's ``update``).
    total : callable, optional
        Called once, when the zoom is known, with the number of tiles ``progress`` will count in all (``tile_count``;
        the automatic zoom's first pass is not counted, unless it is the whole prediction).

    Returns
    -------
    Segmented, a named tuple of:
    labels : ndarray, shape (H, W), int32, nuclei numbered 1..n
    mask : ndarray, shape (H, W), bool: the foreground (``settings.mask``)
    probability : ndarray, shape (H, W), float16, or None: the nucleus channel
    scale : float, the zoom the image was predicted at (``Postprocessing.resolve``: one for all blocks)
    scores : ndarray, shape (n,), float64, or None: each nucleus's score (``Postprocessing.labels_and_scores``), nucleus
        i + 1's at i; None without a score model
    """
    image, settings = settings.prepare(image)  # the whole image, not block by block
    settings, done = settings.resolve(predict_tiles, image, tile_size=tile_size, min_overlap=min_overlap,
                                      most=block_size)
    if total is not None or (progress is not None and done is not None):
        tiles = tile_count(image.shape, settings, tile_size, min_overlap, block_size, margin)
        if total is not None:
            total(tiles)
        if progress is not None and done is not None:  # the first pass was the whole prediction
            progress(tiles)
    if progress is not None:
        predict_tiles = _counting(predict_tiles, progress, 8 if settings.tta else 1)
    height, width = image.shape
    if height <= block_size and width <= block_size:
        maps = done if done is not None else settings.maps(predict_tiles, image, tile_size=tile_size,
                                                           min_overlap=min_overlap)
        labels, scores = settings.labels_and_scores(maps)
        return Segmented(labels, settings.mask(maps), maps[..., 0].astype(np.float16) if probability else None,
                         settings.scale, scores)
    labels = np.zeros((height, width), np.int32)
    mask = np.zeros((height, width), bool)
    nucleus = np.zeros((height, width), np.float16) if probability else None
    count, scores = 0, ([] if settings.score_model is not None else None)
    for top in range(0, height, block_size):
        for left in range(0, width, block_size):
            bottom, right = min(top + block_size, height), min(left + block_size, width)
            r0, c0 = max(top - margin, 0), max(left - margin, 0)
            r1, c1 = min(bottom + margin, height), min(right + margin, width)
            maps = settings.maps(predict_tiles, image[r0:r1, c0:c1], tile_size=tile_size, min_overlap=min_overlap)
            inner = maps[top - r0:bottom - r0, left - c0:right - c0]
            mask[top:bottom, left:right] = settings.mask(inner)
            if nucleus is not None:
                nucleus[top:bottom, left:right] = inner[..., 0]
            block_labels, block_scores = settings.labels_and_scores(maps)
            del maps, inner
            for region in skimage.measure.regionprops(block_labels):
                row, col = region.centroid
                if not (top <= row + r0 < bottom and left <= col + c0 < right):
                    continue  # a neighbouring block owns it
                rows, cols = region.coords[:, 0] + r0, region.coords[:, 1] + c0
                free = labels[rows, cols] == 0  # where a neighbour's nucleus overlaps it, the neighbour keeps them
                count += 1
                labels[rows[free], cols[free]] = count
                if scores is not None:
                    scores.append(block_scores[region.label - 1])
    return Segmented(labels, mask, nucleus, settings.scale, None if scores is None else np.asarray(scores))


def tile_count(shape: tuple[int, int], settings: Postprocessing, tile_size=TILE_SIZE,
               min_overlap: int = MIN_OVERLAP, block_size: int = 2048, margin: int = 128) -> int:
    """How many tiles ``segment_image`` predicts for an image of ``shape``, at each of its zooms (for a progress bar;
    scale 'auto' counts as 1x, and its first pass is not counted: ``segment_image`` reports the count at the zoom it
    chose)."""
    zooms = (settings.replace(scale=1.0) if settings.scale == "auto" else settings).zooms

    def tiles_of(size):
        count = 0
        for zoom in zooms:
            zoomed = tuple(max(int(round(side * zoom)), 1) for side in size)
            side = settings.tile_size or tile_size
            side = inference_tile_size(zoomed, AUTO_TILE_MAX, min_overlap) if side == "auto" else side
            count += len(tiling.tile_grid(zoomed, side, min_overlap))
        return count

    height, width = shape
    if height <= block_size and width <= block_size:
        return tiles_of(shape)
    return sum(tiles_of((min(top + block_size + margin, height) - max(top - margin, 0),
                         min(left + block_size + margin, width) - max(left - margin, 0)))
               for top in range(0, height, block_size) for left in range(0, width, block_size))


def _counting(predict_tiles: PredictTiles, progress, calls_per_tile: int) -> PredictTiles:
    """``predict_tiles`` that also reports how many image tiles it predicted (each seen ``calls_per_tile`` times)."""
    def counted(tiles: np.ndarray) -> np.ndarray:
        predicted = predict_tiles(tiles)
        progress(len(tiles) / calls_per_tile)
        return predicted

    return counted


def drop_specks(labels: np.ndarray, min_size: int, *, areas: np.ndarray | None = None) -> np.ndarray:
    """``labels`` with the objects of ``min_size`` pixels or fewer set to background (0: none dropped);
    ``areas``: ``np.bincount(labels.ravel())`` where the caller has it already."""
    if min_size <= 0:
        return labels
    small = (np.bincount(labels.ravel()) if areas is None else areas) <= min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


# --------------------------------------------------------------------------------------------
# The competition metric: IoU -> matches -> precision per threshold, computed once per image
# --------------------------------------------------------------------------------------------

def pixel_dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Dice coefficient of two binary masks: ``2 |T & P| / (|T| + |P|)``; 1.0 when both are empty.

    Parameters
    ----------
    truth, predicted : ndarray, shape (H, W), bool (or anything where nonzero = foreground)

    Examples
    --------
    >>> pixel_dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    0.5
    """
    truth, predicted = np.asarray(truth) > 0, np.asarray(predicted) > 0
    if truth.shape != predicted.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, predicted {predicted.shape}")
    total = int(truth.sum()) + int(predicted.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(truth, predicted).sum()) / total


def overlap_counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pixels shared by every true and predicted object, the background (row and column 0) included.

    Parameters
    ----------
    truth, predicted : ndarray, shape (H, W), int, 0 = background

    Returns
    -------
    ndarray, shape (n_true + 1, n_predicted + 1), int64, objects in the order of the sorted nonzero labels

    Examples
    --------
    >>> overlap_counts(np.array([[1, 1, 0, 0]]), np.array([[0, 2, 2, 0]])).tolist()
    [[1, 1], [1, 1]]
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, predicted {predicted.shape}")
    truth = skimage.segmentation.relabel_sequential(truth.astype(np.int64))[0]
    predicted = skimage.segmentation.relabel_sequential(predicted.astype(np.int64))[0]
    n_true, n_pred = int(truth.max(initial=0)), int(predicted.max(initial=0))
    joint = np.bincount((truth * (n_pred + 1) + predicted).ravel(), minlength=(n_true + 1) * (n_pred + 1))
    return joint.reshape(n_true + 1, n_pred + 1)


def iou_from_overlaps(joint: np.ndarray) -> np.ndarray:
    """``iou_matrix`` from ``overlap_counts``: shape (n_true, n_predicted), float64."""
    intersection = joint[1:, 1:].astype(np.float64)
    area_true, area_pred = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    union = area_true[:, None] + area_pred[None, :] - intersection
    return intersection / np.maximum(union, 1)


def iou_matrix(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Intersection over union of every true and predicted object.

    Parameters
    ----------
    truth, predicted : ndarray, shape (H, W), int, 0 = background

    Returns
    -------
    ndarray, shape (n_true, n_predicted), float64, in the order of the sorted nonzero labels

    Examples
    --------
    >>> iou_matrix(np.array([[1, 1, 0, 0]]), np.array([[0, 2, 2, 0]])).tolist()
    [[0.3333333333333333]]
    """
    return iou_from_overlaps(overlap_counts(truth, predicted))


def precisions(iou: np.ndarray, thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """The competition's precision at each IoU threshold: ``TP / (TP + FP + FN)``.

    For thresholds of 0.5 and above, a true and a predicted nucleus match when their IoU is above
    the threshold, and a nucleus can match at most one other. No true and no predicted nuclei
    scores 1; only one of them empty, 0.

    Parameters
    ----------
    iou : ndarray, shape (n_true, n_predicted), from ``iou_matrix``

    Returns
    -------
    ndarray, shape (len(thresholds),), float64 in [0, 1]

    Examples
    --------
    >>> precisions(np.array([[0.7, 0.0], [0.0, 0.0]]), [0.5, 0.75]).tolist()  # 1 match, 1 missed, 1 false
    [0.3333333333333333, 0.0]
    """
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.min() < 0.5:
        raise ValueError("IoU thresholds below 0.5 allow one nucleus to match several; use >= 0.5")
    n_true, n_pred = iou.shape
    if n_true == 0 and n_pred == 0:
        return np.ones(len(thresholds))
    tp = np.array([(iou > t).sum() for t in thresholds], np.float64)
    return tp / (n_true + n_pred - tp)


@dataclass(frozen=True)
class ImageScore:
    """Everything the reports need about one predicted image, from one IoU matrix.

    Attributes
    ----------
    map : float
        The DSB2018 score: mean of ``ap`` over the IoU thresholds 0.50..0.95.
    ap : tuple of float
        Precision at each threshold (``precisions``); ``ap50`` is the first.
    f1_50 : float
        F1 of the matches at IoU 0.5.
    dice : float
        Pixel Dice of the foregrounds.
    true, predicted : int
        Nuclei counts.
    matched_true, matched_predicted : ndarray, bool
        Which true nuclei (labels 1..n in sorted order) and which predicted ones match at IoU 0.5.
    """

    map: float
    ap: tuple
    ap50: float
    f1_50: float
    dice: float
    true: int
    predicted: int
    matched_true: np.ndarray
    matched_predicted: np.ndarray

    def row(self) -> dict:
        """The numbers, for a table."""
        return {"dice": self.dice, "map": self.map, "ap50": self.ap50, "f1_50": self.f1_50,
                "true_nuclei": self.true, "predicted_nuclei": self.predicted}


def score_image(truth: np.ndarray, predicted: np.ndarray, predicted_mask: np.ndarray | None = None) -> ImageScore:
    """Score one image: IoU matrix, matches, precision per threshold and pixel Dice, each computed once.

    Parameters
    ----------
    truth, predicted : ndarray, shape (H, W), int, 0 = background
    predicted_mask : ndarray, shape (H, W), bool, optional
        The foreground the pixel Dice scores (``Postprocessing.mask``); default ``predicted > 0``.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2]])
    >>> score = score_image(a, a)
    >>> score.map, score.dice, score.matched_predicted.tolist()
    (1.0, 1.0, [True, True])
    """
    iou = iou_matrix(truth, predicted)
    values = precisions(iou)
    n_true, n_pred = iou.shape
    matches = iou > 0.5
    f1 = 1.0 if n_true + n_pred == 0 else 2 * int(matches.sum()) / (n_true + n_pred)
    mask = np.asarray(predicted) > 0 if predicted_mask is None else predicted_mask
    return ImageScore(map=float(values.mean()), ap=tuple(values.tolist()), ap50=float(values[0]), f1_50=float(f1),
                      dice=pixel_dice(truth, mask), true=int(n_true), predicted=int(n_pred),
                      matched_true=matches.any(axis=1), matched_predicted=matches.any(axis=0))


def average_precision(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The 2018 Data Science Bowl score of one image: mean precision over IoU 0.50..0.95.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2]])
    >>> average_precision(a, a), average_precision(a, np.zeros_like(a))
    (1.0, 0.0)
    """
    return float(precisions(iou_matrix(truth, predicted)).mean())


# --------------------------------------------------------------------------------------------
# Choosing the post-processing on the CV split
# --------------------------------------------------------------------------------------------

TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNE_MARKER_HEIGHTS = (1.0, 2.0, 3.0, 5.0)
TUNE_MIN_SIZES = (0, 15, 30)
TUNE_CONTACT_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
# The score cuts (``Postprocessing.min_score``) tune tries on top of the best other settings, after no cut.
TUNE_MIN_SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def tuning_grid(has_contacts: bool, tta: bool, scale: float | str = 1.0, tile_size=None,
                nucleus_area: float | None = None, relative_min_sizes: tuple[float, ...] = (),
                extra_zooms: tuple[float, ...] = (), flat_field: bool = True,
                denoise: bool = False, auto_gain: bool = False) -> list[Postprocessing]:
    """The settings ``tune_postprocessing`` tries: every threshold and speck size (in pixels, and each of
    ``relative_min_sizes``: fractions of the image's typical nucleus area) with every way of splitting (by the
    contact channel at each contact threshold if the model has one, else not at all; or by a distance watershed
    of each marker height). ``tta``, ``scale``, ``tile_size``, ``nucleus_area``, ``extra_zooms``, ``flat_field``,
    ``denoise`` and ``auto_gain`` say how the maps were predicted and are the same in every setting.

    Relative sizes are not tried by default: in every tune that tried them (0.1, 0.2 and 0.3 of the typical
    area; the ready model's ``tuning.csv``) the best was 0.004-0.006 mAP below a fixed 30 pixels, and they
    doubled the grid."""
    splits = ([(None, c) for c in TUNE_CONTACT_THRESHOLDS] if has_contacts else [(None, 0.2)])
    splits += [(height, 0.2) for height in TUNE_MARKER_HEIGHTS]
    sizes = [(pixels, None) for pixels in TUNE_MIN_SIZES] + [(30, fraction) for fraction in relative_min_sizes]
    return [Postprocessing(threshold=threshold, min_size=min_size, min_size_relative=relative, marker_height=height,
                           contact_threshold=contact, tta=tta, scale=scale, tile_size=tile_size,
                           nucleus_area=nucleus_area, extra_zooms=extra_zooms, flat_field=flat_field,
                           denoise=denoise, auto_gain=auto_gain)
            for threshold, (height, contact), (min_size, relative) in itertools.product(TUNE_THRESHOLDS, splits, sizes)]


def tune_postprocessing(maps: list[np.ndarray], truths: list[np.ndarray], grid: list[Postprocessing],
                        *, progress=None) -> list[dict]:
    """Mean DSB score over the images of every setting of ``grid``, best first.

    Parameters
    ----------
    maps : list of ndarray, shape (H, W, C), from ``predict_maps`` (with the grid's ``tta`` and ``scale``)
    truths : list of ndarray, shape (H, W), int, the true labels of the same images
    grid : list of Postprocessing, e.g. ``tuning_grid``
    progress : callable wrapping an iterable (e.g. ``tqdm``), optional

    Returns
    -------
    list of dict: the setting's fields and ``mean_map``, sorted by ``mean_map``, highest first
    (ties keep the grid's order).
    """
    if len(maps) != len(truths) or not maps:
        raise ValueError(f"need the same positive number of maps and truths, got {len(maps)} and {len(truths)}")
    rows = []
    for settings in (progress or iter)(grid):
        scores = [average_precision(truth, settings.labels(image_maps)) for image_maps, truth in zip(maps, truths)]
        rows.append({**dataclasses.asdict(settings), "mean_map": float(np.mean(scores))})
    return sorted(rows, key=lambda row: -row["mean_map"])

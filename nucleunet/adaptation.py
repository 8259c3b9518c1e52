"""Per-image choices made before the network sees an image: flat field, denoise, and the automatic zoom.

NumPy and scikit-image only. ``prepare`` measures a preprocessed image once and flattens or smooths it where the
settings ask for it; ``resolve`` turns scale 'auto' into the zoom that brings the image's nuclei, found in a
quick first pass at 1x, to the size the model was trained on. The first pass reaches this module as a callable
(``FirstPass``), so nothing here predicts by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from nucleunet.imaging import background_unevenness, central, denoise, edge_sharpness, flatten_background, noise_sigma
from nucleunet.postprocessing import AUTO_SCALES, ZOOM_ROUNDING, Postprocessing, typical_area

log = logging.getLogger("nucleunet.adaptation")

# scale='auto' zooms no image in whose edges are softer than this (``imaging.edge_sharpness``, which discounts pixel
# noise): zooming a blurred image in enlarges its blur too and loses nuclei. The largest limit (in steps of 0.01) under
# which at most 5 % of the CV images as they are and none shrunk to 0.5x or less (with or without noise) fall; most
# blurred CV images, noisy or not, fall under it (experiments/sharpness.py; docs/results.md, "Blurred images with
# noise").
MIN_ZOOM_IN_SHARPNESS = 0.40
# denoise smooths an image (``imaging.denoise``) whose pixel noise is above this (``imaging.noise_sigma``, in the
# preprocessed image's 0-1 range; clean CV images measure at most 0.015) and whose edges are not soft (edge sharpness at
# least MIN_ZOOM_IN_SHARPNESS: a blurred image is not smoothed further). Fixed before it was tried
# (docs/results/denoise/decision_rule.txt).
MIN_DENOISE_NOISE = 0.015
# flat_field flattens the background of an image (``imaging.flatten_background``) whose background level varies by
# more than this across it (``imaging.background_unevenness``, in the preprocessed image's 0-1 range): the smallest
# limit, in steps of 0.01, that at most 5 % of the CV images as they are pass (experiments/background.py;
# docs/results.md, "Uneven illumination").
MAX_BACKGROUND_UNEVENNESS = 0.06

FirstPass = Callable[[np.ndarray], np.ndarray]
"""Maps an image, shape (H, W) float32 in [0, 1], to the model's maps at 1x without test-time augmentation,
shape (H, W, C) float32 (``prediction.predict_maps``)."""


class Prepared(NamedTuple):
    """What ``prepare`` returns: the image as the model is to see it, the settings left to apply to it, and what
    was measured and done."""

    image: np.ndarray
    settings: Postprocessing
    unevenness: float
    flattened: bool
    smoothed: bool


def prepare(image: np.ndarray, settings: Postprocessing) -> Prepared:
    """A preprocessed image as the model is to see it, and ``settings`` for it with ``flat_field`` and ``denoise``
    off (the image is not measured again).

    The background's unevenness (``imaging.background_unevenness``) is always measured; with ``flat_field``, the
    background is flattened (``imaging.flatten_background``) if it is above ``MAX_BACKGROUND_UNEVENNESS``; with
    ``denoise``, the image is then smoothed (``imaging.denoise``) if ``denoises`` says so of ``image`` as given.
    Otherwise ``image`` itself.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32 in [0, 1], preprocessed (``imaging.preprocess``)
    settings : Postprocessing
    """
    unevenness = background_unevenness(image)
    flattened, smoothed = flattens(settings, unevenness), denoises(settings, image)  # both of the image as given
    if flattened:
        log.debug("background unevenness %.3f: the background is flattened", unevenness)
        image = flatten_background(image)
    if smoothed:
        log.debug("pixel noise above %.3f: the image is smoothed", MIN_DENOISE_NOISE)
        image = denoise(image)
    return Prepared(image, settings.replace(flat_field=False, denoise=False), unevenness, flattened, smoothed)


def flattens(settings: Postprocessing, unevenness: float) -> bool:
    """Whether ``prepare`` flattens an image whose ``imaging.background_unevenness`` is ``unevenness``."""
    return settings.flat_field and unevenness > MAX_BACKGROUND_UNEVENNESS


def denoises(settings: Postprocessing, image: np.ndarray) -> bool:
    """Whether ``prepare`` smooths ``image`` (preprocessed): with ``denoise``, where the pixel noise of its central
    2048 x 2048 pixels (``imaging.noise_sigma``) is above ``MIN_DENOISE_NOISE`` and their edge sharpness
    (``imaging.edge_sharpness``) is at least ``MIN_ZOOM_IN_SHARPNESS`` (a blurred image is not smoothed)."""
    if not settings.denoise:
        return False
    part = central(image)
    return noise_sigma(part) > MIN_DENOISE_NOISE and edge_sharpness(part) >= MIN_ZOOM_IN_SHARPNESS


def resolve(settings: Postprocessing, image: np.ndarray, first_pass: FirstPass, *,
            most: int = 2048) -> tuple[Postprocessing, np.ndarray | None]:
    """``settings`` with the zoom it gives ``image`` as ``scale``, and the first pass's maps where they cover the
    whole image (else None): the image's maps at 1x without test-time augmentation, which the prediction reuses.

    ``image`` as the model is to see it (``prepare``). A number stays as it is. 'auto' becomes the zoom of
    ``AUTO_SCALES`` that brings the image's typical nucleus area (``typical_area`` of the labels of
    ``first_pass``, on at most the central ``most`` x ``most`` pixels; nuclei smaller than ``min_size`` count,
    ``postprocessing.probability_to_labels``, and so do those under ``min_score``) closest to ``nucleus_area``
    (``choose_scale``); but no zoom above 1x where those pixels' edges are softer than ``MIN_ZOOM_IN_SHARPNESS``
    (``imaging.edge_sharpness``: a blurred image): 1x rather than a zoom in, and none of ``extra_zooms`` that would
    take it above 1x.
    """
    if settings.scale != "auto":
        return settings, None
    part = central(image, most)
    maps = first_pass(part)
    labels = settings.replace(scale=1.0, tta=False, min_score=None, extra_zooms=()).labels(maps)  # every nucleus
    area = typical_area(labels)
    scale, extra_zooms = choose_scale(area, settings.nucleus_area), settings.extra_zooms
    zooms_in = max(settings.replace(scale=scale).zooms) > ZOOM_ROUNDING
    if zooms_in and (sharpness := edge_sharpness(part)) < MIN_ZOOM_IN_SHARPNESS:
        log.debug("edge sharpness %.3f: a blurred image is not zoomed in", sharpness)
        scale = min(scale, 1.0)
        extra_zooms = tuple(zoom for zoom in extra_zooms if scale * zoom <= ZOOM_ROUNDING)
    resolved = settings.replace(scale=scale, extra_zooms=extra_zooms)
    log.debug("typical nucleus area at 1x: %.0f pixels; zoom %.2f", area, resolved.scale)
    return resolved, (maps if part.shape == image.shape else None)


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

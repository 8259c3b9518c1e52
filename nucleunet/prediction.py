"""From a model to maps and nuclei: tiled prediction with weighted stitching and test-time augmentation, the zooms
an image is predicted at, and block-wise segmentation of images of any size.

The model reaches this module as a callable (``PredictTiles``; ``make_predictor`` wraps a Keras model), so nothing
here imports Keras. Users segment through the package's API (``nucleunet.load_model(...).segment(image)``), which
calls ``segment_image``::

    predict_tiles = make_predictor(keras_model)
    segmented = segment_image(predict_tiles, image, settings, tile_size=256)   # labels, mask, probability, ...
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import skimage.transform

from nucleunet import adaptation, tiling
from nucleunet.errors import UserError
from nucleunet.imaging import replace_nonfinite
from nucleunet.postprocessing import Postprocessing
from nucleunet.tiling import MIN_OVERLAP, TILE_SIZE, inference_tile_size, make_tiles, stitch_tiles

log = logging.getLogger("nucleunet.prediction")

# The largest tile side with tile_size='auto': an image up to 1024 x 1024 is one tile, and a stitched pass runs at
# least as fast as one call on the whole image up to 2000 x 2000 (bench/bench_large.py). One call on a larger tile
# keeps more activations than the whole 10,000 x 10,000 image may (ONNX Runtime, ready model: 0.47 GiB at 768 x 768,
# 0.92 GiB at 1024 x 1024, 1.95 GiB at 1632 x 1632; docs/results/price/decision_rule.txt; 768 until its third
# candidate, 1024, passed its conditions).
AUTO_TILE_MAX = 1024

# The most pixels one model call sees (``make_predictor``): what a call's activations take grows with its
# pixels (about 0.8 GiB per megapixel for the ready model on ONNX Runtime), so 8 trained tiles of 256 x 256 fill a
# call and a larger tile goes alone.
MAX_BATCH_PIXELS = 2**19

# The most pixels of an image the automatic zoom's first pass looks at (its central part; ``adaptation.resolve``).
FIRST_PASS_MAX = 2048

# The views of test-time augmentation by how many are asked for (``Postprocessing.tta_views``), as
# ``dihedral_tiles``' numbers: 2, the image and its mirror; 4, the four mirrorings (no transposition); 8, all the
# flips and quarter turns.
TTA_VIEWS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}

# The most tile pixels sent to the model together, all views of an image's tiles at once where they fit: a small
# image's one or two tiles then fill batches instead of going one by one, while a large image's views still go in
# turn (about 0.1 GiB of tiles and maps at this size).
MAX_VIEW_PIXELS = 2**23

PredictTiles = Callable[[np.ndarray], np.ndarray]
"""Maps tiles, shape (N, T, T, 1) float32 in [0, 1], to probabilities (N, T, T, C): nuclei [, contacts]."""


def make_predictor(model, batch_size: int = 8, max_pixels: int = MAX_BATCH_PIXELS) -> PredictTiles:
    """``PredictTiles`` for a Keras model: ``model.predict_on_batch`` over batches of ``batch_size`` tiles,
    fewer where they would hold more than ``max_pixels`` pixels (at least one tile a call); blank tiles (one value
    throughout) once per value.

    ``predict_on_batch`` per batch, not ``model.predict`` per image: ``predict``'s per-call set-up
    cost 28 % of stitched inference (``bench/bench_infer.py``).
    """
    def in_batches(tiles: np.ndarray) -> np.ndarray:
        step = max(min(batch_size, max_pixels // max(tiles.shape[1] * tiles.shape[2], 1)), 1)
        if len(tiles) <= step:  # one call: its output as it is, not copied by a concatenation of one
            return np.asarray(model.predict_on_batch(tiles))
        return np.concatenate([np.asarray(model.predict_on_batch(tiles[start:start + step]))
                               for start in range(0, len(tiles), step)])

    def predict_tiles(tiles: np.ndarray) -> np.ndarray:
        # A blank tile (one value throughout: an empty part of a slide or mosaic) is predicted once per value; its
        # copies get that output (the same input gives the same output), not a call each.
        pixels = tuple(range(1, tiles.ndim))  # a view of flipped tiles need not be contiguous: not reshaped
        low = tiles.min(axis=pixels)
        blank = low == tiles.max(axis=pixels)
        if not blank.any() or len(tiles) == 1:
            return in_batches(tiles)
        _, first, which = np.unique(low[blank], return_index=True, return_inverse=True)
        once = in_batches(tiles[np.flatnonzero(blank)[first]])
        predicted = np.empty((len(tiles),) + once.shape[1:], once.dtype)
        predicted[blank] = once[which]
        if not blank.all():
            predicted[~blank] = in_batches(tiles[~blank])
        return predicted

    return predict_tiles


def predict_maps(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile_size=TILE_SIZE,
    min_overlap: int = MIN_OVERLAP,
    tta: bool | int = False,
    scale: float = 1.0,
    identity: np.ndarray | None = None,
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
    tta : bool or int
        Test-time augmentation: average the predictions of this many flipped or turned views of the image
        (``TTA_VIEWS``: 1, 2, 4 or 8; True is 8, False 1), at that many times the model's work.
    scale : float
        Zoom the image by this factor before predicting (2: nuclei twice as large as in the image, for
        nuclei smaller than the training set's), and the maps back to the image's size afterwards.
    identity : ndarray, shape (H, W, C), optional
        The maps of the image as it is (no view turned, at scale 1 and these tiles), already predicted (the
        automatic zoom's first pass): they are reused, not predicted again.

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
    views = tta_views(tta)
    if identity is not None and scale != 1.0:
        raise ValueError("identity: the maps of the image as it is, at scale 1")
    if identity is not None and views == (0,):
        return identity
    if scale != 1.0:
        shape = image.shape
        zoomed = skimage.transform.resize(image, [max(int(round(side * scale)), 1) for side in shape], order=1,
                                          anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        maps = predict_maps(predict_tiles, zoomed, tile_size=tile_size, min_overlap=min_overlap, tta=tta)
        back = np.empty(shape + maps.shape[2:], np.float32)
        for channel in range(maps.shape[2]):  # one by one: the same values as all at once, 4x faster
            back[..., channel] = skimage.transform.resize(maps[..., channel], shape, order=1, preserve_range=True)
        return back
    if tile_size == "auto":
        tile_size = inference_tile_size(image.shape, AUTO_TILE_MAX, min_overlap)
    tiles, corners = make_tiles(image.astype(np.float32), tile_size, min_overlap)
    tiles = tiles[..., None]
    todo = views[1:] if identity is not None else views
    total = None
    for group in _view_groups(tiles.shape, todo):
        turned = np.concatenate([dihedral_tiles(tiles, k) for k in group])  # rectangular tiles turn into (N, W, H, 1)
        predicted = np.asarray(predict_tiles(turned))
        if predicted.ndim != 4 or predicted.shape[:3] != turned.shape[:3] or predicted.shape[3] < 1:
            raise ValueError(f"the model returned shape {predicted.shape} for tiles of shape {turned.shape}")
        for k, part in zip(group, np.split(predicted.astype(np.float32, copy=False), len(group))):
            restored = dihedral_tiles(part, k, inverse=True)
            total = restored if total is None else total + restored
    maps = stitch_tiles(total / len(todo) if len(todo) > 1 else total, corners, image.shape, tile_size)
    # the stitching is a weighted mean of the tiles, so the views' stitched maps average as their tiles do
    return maps if identity is None else (identity + maps * len(todo)) / len(views)


def tta_views(tta: bool | int) -> tuple[int, ...]:
    """The ``dihedral_tiles`` numbers of the views ``tta`` asks for (``TTA_VIEWS``): True is all 8, False none but
    the image itself; a number, that many."""
    count = (8 if tta else 1) if isinstance(tta, (bool, np.bool_)) else tta
    if count not in TTA_VIEWS:
        raise UserError(f"test-time augmentation takes {', '.join(map(str, TTA_VIEWS))} views, got {tta!r}")
    return TTA_VIEWS[count]


def _view_groups(shape: tuple[int, ...], views: tuple[int, ...]) -> list[tuple[int, ...]]:
    """``views`` in groups sent to the model together: views whose turned tiles share a shape (a quarter turn
    transposes rectangular tiles), as many as hold at most ``MAX_VIEW_PIXELS`` (at least one)."""
    per_view = max(int(np.prod(shape[:3])), 1)
    most = max(MAX_VIEW_PIXELS // per_view, 1)
    same_shape = ([views] if shape[1] == shape[2]
                  else [tuple(k for k in views if (k % 2 == 1) == odd) for odd in (False, True)])
    return [group[start:start + most] for group in same_shape if group for start in range(0, len(group), most)]


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


def first_pass(predict_tiles: PredictTiles, settings: Postprocessing, *, tile_size=TILE_SIZE,
               min_overlap: int = MIN_OVERLAP) -> adaptation.FirstPass:
    """The quick prediction that ``adaptation.resolve`` measures an image's nuclei with: at 1x, without
    test-time augmentation, with the tiles of ``settings`` (else ``tile_size``)."""
    def predict(image: np.ndarray) -> np.ndarray:
        return predict_maps(predict_tiles, image, tile_size=settings.tile_size or tile_size, min_overlap=min_overlap)

    return predict


def image_maps(predict_tiles: PredictTiles, image: np.ndarray, settings: Postprocessing, *,
               tile_size=TILE_SIZE, min_overlap: int = MIN_OVERLAP) -> np.ndarray:
    """The maps of ``image`` as ``settings`` asks: ``adaptation.prepare``d, at the zoom ``adaptation.resolve``
    chooses (scale 'auto') or ``settings.scale``, with its ``tta`` and ``tile_size`` (if set; else the
    ``tile_size`` given: the model's); with ``extra_zooms``, the mean of the maps at each of ``settings.zooms``.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32 in [0, 1], preprocessed

    Returns
    -------
    ndarray, shape (H, W, C), float32 in [0, 1]: nuclei [, contacts]
    """
    prepared = adaptation.prepare(image, settings)
    settings, first = adaptation.resolve(prepared.settings, prepared.image, first_pass(
        predict_tiles, prepared.settings, tile_size=tile_size, min_overlap=min_overlap), most=FIRST_PASS_MAX)
    return _zoomed_maps(predict_tiles, prepared.image, settings, tile_size=tile_size, min_overlap=min_overlap,
                        first=first)


def _zoomed_maps(predict_tiles: PredictTiles, image: np.ndarray, settings: Postprocessing, *, tile_size,
                 min_overlap: int, first: np.ndarray | None = None) -> np.ndarray:
    """The mean of the maps of ``image`` (prepared) at each of ``settings.zooms`` (resolved), each from its
    ``settings.zoom_views`` views; ``first``, the
    automatic zoom's first pass over the whole image (``adaptation.resolve``), is reused as the 1x view at 1x."""
    total = None
    for zoom, views in zip(settings.zooms, settings.zoom_views):
        maps = predict_maps(predict_tiles, image, tile_size=settings.tile_size or tile_size,
                            min_overlap=min_overlap, tta=views, scale=zoom,
                            identity=first if zoom == 1.0 else None)
        total = maps if total is None else total + maps
    return total / len(settings.zooms) if len(settings.zooms) > 1 else total


class Segmented(NamedTuple):
    """What ``segment_image`` returns."""

    labels: np.ndarray
    mask: np.ndarray
    probability: np.ndarray | None
    scale: float
    scores: np.ndarray | None
    unevenness: float
    flattened: bool
    smoothed: bool
    solidity: np.ndarray | None = None  # each nucleus's solidity where the nucleus score measured it, else NaN


def segment_image(predict_tiles: PredictTiles, image: np.ndarray, settings: Postprocessing, *,
                  tile_size=TILE_SIZE, min_overlap: int = MIN_OVERLAP, block_size: int = 2048,
                  margin: int = 128, probability: bool = True,
                  progress=None, total=None) -> Segmented:
    """Nuclei of an image of any size, block by block so that memory stays bounded.

    An image no larger than ``block_size`` in both directions is predicted in one piece. A larger one is cut into
    ``block_size`` blocks, each predicted and post-processed with ``margin`` pixels of context around it; a block
    keeps the nuclei whose centre lies in it, whole, so a nucleus cut by a block border comes out in one piece
    (nuclei up to ``margin`` pixels across; larger ones may be cut). The flat field, denoising and the automatic
    zoom are decided once for the whole image (``adaptation.prepare``, ``adaptation.resolve``), not block by block.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32 in [0, 1], preprocessed
    probability : bool
        Also return the nucleus probability (2 bytes a pixel: leave it out of a large image unless needed).
    progress : callable, optional
        Called with the number of tiles each model call predicted, each view of a tile counted (e.g. a tqdm bar's
        ``update``).
    total : callable, optional
        Called once, when the zoom is known, with the number of tiles ``progress`` will count in all (``tile_count``;
        the automatic zoom's first pass is not counted, unless it is one of the views predicted).

    Returns
    -------
    Segmented, a named tuple of:
    labels : ndarray, shape (H, W), int32, nuclei numbered 1..n
    mask : ndarray, shape (H, W), bool: the foreground (``settings.mask``)
    probability : ndarray, shape (H, W), float16, or None: the nucleus channel
    scale : float, the zoom the image was predicted at (``adaptation.resolve``: one for all blocks)
    scores : ndarray, shape (n,), float64, or None: each nucleus's score (``Postprocessing.nuclei``),
        nucleus i + 1's at i; None without a score model
    unevenness, flattened, smoothed : what ``adaptation.prepare`` measured and did
    solidity : ndarray, shape (n,), float64, or None: each nucleus's solidity as the score measured it (NaN for a
        nucleus that a neighbouring block's nucleus trimmed); None without a score model
    """
    prepared = adaptation.prepare(image, settings)
    image = prepared.image
    settings, first = adaptation.resolve(prepared.settings, image, first_pass(
        predict_tiles, prepared.settings, tile_size=tile_size, min_overlap=min_overlap), most=block_size)
    facts = (prepared.unevenness, prepared.flattened, prepared.smoothed)
    if total is not None:
        total(tile_count(image.shape, settings, tile_size, min_overlap, block_size, margin))
    if progress is not None and first is not None and 1.0 in settings.zooms:  # the first pass is one 1x view
        progress(tile_count(image.shape, settings.replace(scale=1.0, extra_zooms=(), tta=False), tile_size,
                            min_overlap, block_size, margin))
    if progress is not None:
        predict_tiles = _counting(predict_tiles, progress)
    height, width = image.shape
    if height <= block_size and width <= block_size:
        maps = _zoomed_maps(predict_tiles, image, settings, tile_size=tile_size, min_overlap=min_overlap,
                            first=first)
        found = settings.nuclei(maps)
        return Segmented(found.labels, settings.mask(maps), maps[..., 0].astype(np.float16) if probability else None,
                         settings.scale, found.scores, *facts, found.solidity)
    labels = np.zeros((height, width), np.int32)
    mask = np.zeros((height, width), bool)
    nucleus = np.zeros((height, width), np.float16) if probability else None
    count, scores, solidity = 0, [np.zeros(0)], [np.zeros(0)]
    for top in range(0, height, block_size):
        for left in range(0, width, block_size):
            bottom, right = min(top + block_size, height), min(left + block_size, width)
            r0, c0 = max(top - margin, 0), max(left - margin, 0)
            r1, c1 = min(bottom + margin, height), min(right + margin, width)
            maps = _zoomed_maps(predict_tiles, image[r0:r1, c0:c1], settings, tile_size=tile_size,
                                min_overlap=min_overlap)
            inner = maps[top - r0:bottom - r0, left - c0:right - c0]
            mask[top:bottom, left:right] = settings.mask(inner)
            if nucleus is not None:
                nucleus[top:bottom, left:right] = inner[..., 0]
            owned = functools.partial(_centred_in, origin=(r0, c0), box=(top, left, bottom, right))
            block = settings.nuclei(maps, kept_by=owned)  # convex hulls only for the nuclei this block keeps
            del maps, inner
            kept = owned(block.labels)  # a neighbouring block owns the others
            numbers = np.zeros(len(kept), np.int32)
            numbers[kept] = np.arange(count + 1, count + 1 + int(kept.sum()))
            count += int(kept.sum())
            placed = numbers[block.labels]
            here = labels[r0:r1, c0:c1]
            taken = (here != 0) & (placed != 0)  # where a neighbour's nucleus overlaps one, the neighbour keeps them
            trimmed = np.zeros(len(kept), bool)
            trimmed[block.labels[taken]] = True
            free = (here == 0) & (placed != 0)
            here[free] = placed[free]
            if block.scores is not None:
                scores.append(block.scores[kept[1:]])
                solidity.append(np.where(trimmed, np.nan, np.concatenate([[np.nan], block.solidity]))[kept])
    if settings.score_model is None:
        return Segmented(labels, mask, nucleus, settings.scale, None, *facts)
    return Segmented(labels, mask, nucleus, settings.scale, np.concatenate(scores), *facts, np.concatenate(solidity))


def _centred_in(labels: np.ndarray, origin: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Which nuclei of a block's ``labels`` (the block's top-left pixel at ``origin`` of the image) have their centre
    (the mean of their pixels' positions) in ``box`` = (top, left, bottom, right) of the image: ndarray, shape
    (n + 1,), bool, index 0 (the background) False."""
    count = int(labels.max(initial=0))
    rows, cols = np.nonzero(labels)
    numbers = labels[rows, cols]
    area = np.bincount(numbers, minlength=count + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        row = np.bincount(numbers, rows, minlength=count + 1) / area + origin[0]
        col = np.bincount(numbers, cols, minlength=count + 1) / area + origin[1]
    top, left, bottom, right = box
    inside = (top <= row) & (row < bottom) & (left <= col) & (col < right)
    inside[0] = False
    return inside


def tile_count(shape: tuple[int, int], settings: Postprocessing, tile_size=TILE_SIZE,
               min_overlap: int = MIN_OVERLAP, block_size: int = 2048, margin: int = 128) -> int:
    """How many tiles ``segment_image`` predicts for an image of ``shape``, each view of a tile at each zoom counted
    (for a progress bar; scale 'auto' counts as 1x, and its first pass is not counted: ``segment_image`` reports the
    count at the zoom it chose)."""
    resolved = settings.replace(scale=1.0) if settings.scale == "auto" else settings

    def tiles_of(size):
        count = 0
        for zoom, views in zip(resolved.zooms, resolved.zoom_views):
            zoomed = tuple(max(int(round(side * zoom)), 1) for side in size)
            side = settings.tile_size or tile_size
            side = inference_tile_size(zoomed, AUTO_TILE_MAX, min_overlap) if side == "auto" else side
            count += len(tiling.tile_grid(zoomed, side, min_overlap)) * views
        return count

    height, width = shape
    if height <= block_size and width <= block_size:
        return tiles_of(shape)
    return sum(tiles_of((min(top + block_size + margin, height) - max(top - margin, 0),
                         min(left + block_size + margin, width) - max(left - margin, 0)))
               for top in range(0, height, block_size) for left in range(0, width, block_size))


def _counting(predict_tiles: PredictTiles, progress) -> PredictTiles:
    """``predict_tiles`` that also reports how many tiles it predicted."""
    def counted(tiles: np.ndarray) -> np.ndarray:
        predicted = predict_tiles(tiles)
        progress(len(tiles))
        return predicted

    return counted

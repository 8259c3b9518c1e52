"""From a model to results on full images: tiled prediction, masks and their scores.

The model reaches this module as a callable, so nothing here imports Keras.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

import dsb

PredictTiles = Callable[[np.ndarray], np.ndarray]
"""Maps tiles, shape (N, T, T, 1) float32 in [0, 1], to probabilities of the same shape."""


def predict_probability(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile_size: int = dsb.TILE_SIZE,
    min_overlap: int = 32,
) -> np.ndarray:
    """Nucleus probability of a whole image of any size, from overlapping tiles.

    Parameters
    ----------
    predict_tiles : callable
        (N, T, T, 1) float32 -> (N, T, T, 1) float probabilities, e.g. a batched ``model.predict``.
    image : ndarray, shape (H, W), float32 in [0, 1]
        A preprocessed image (``dsb.preprocess``).

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]
        Tile predictions blended with ``dsb.tile_weights`` and cropped to the image.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a preprocessed image of shape (H, W), got shape {image.shape}")
    tiles, corners = dsb.make_tiles(image.astype(np.float32), tile_size, min_overlap)
    predicted = np.asarray(predict_tiles(tiles[..., None]))
    if predicted.shape[:3] != tiles.shape:
        raise ValueError(f"the model returned shape {predicted.shape} for tiles of shape {tiles.shape + (1,)}")
    return dsb.stitch_tiles(predicted[..., 0], corners, image.shape, tile_size)


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

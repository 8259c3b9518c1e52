"""From a model to results on full images: tiled prediction, nuclei instances, scores, RLE.

The model reaches this module as a callable, so nothing here imports Keras.

    probability = predict_probability(model_fn, image, tta=True)     # (H, W) float32
    labels = probability_to_labels(probability)                      # (H, W) int32 instances
    maps = predict_maps(model_fn, image)                             # (H, W, C): nuclei [, contacts]
    labels = probability_to_labels(maps[..., 0], contact=maps[..., 1])
    score = average_precision(true_labels, labels)["map"]           # the DSB2018 metric
    rows = submission_rows(image_id, labels)                         # Kaggle RLE rows
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Callable

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
import skimage.morphology
import skimage.segmentation

import dsb

log = logging.getLogger("segment")
# The competition's IoU thresholds: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)

# Post-processing defaults, chosen on the CV split with `--tune` (README, "Choosing the post-processing"):
# for the cpu-preset model, connected components scored a CV mAP of 0.437 against at most 0.402 for the
# distance watershed (marker heights 1..5), and dropping specks of <= 30 pixels beat 15 and 0.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 30
DEFAULT_MARKER_HEIGHT: float | None = None
# For models with a contact channel: a pixel seeds no nucleus where the contact probability is above 0.2
# (chosen on CV with `--tune` among 0.1..0.7: the contact channel of a short run is under-confident).
DEFAULT_CONTACT_THRESHOLD = 0.2

PredictTiles = Callable[[np.ndarray], np.ndarray]
"""Maps tiles, shape (N, T, T, 1) float32 in [0, 1], to probabilities (N, T, T, C): nuclei [, contacts]."""


def predict_maps(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile_size: int = dsb.TILE_SIZE,
    min_overlap: int = 32,
    tta: bool = False,
) -> np.ndarray:
    """Every output channel of the model over a whole image of any size, from overlapping tiles.

    Parameters
    ----------
    predict_tiles : callable
        (N, T, T, 1) float32 -> (N, T, T, C) float probabilities, e.g. a batched ``model.predict``;
        channel 0 is the nucleus probability, channel 1 (contact-aware models) where nuclei touch.
    image : ndarray, shape (H, W), float32 in [0, 1]
        A preprocessed image (``dsb.preprocess``). NaN or infinite pixels are replaced as
        ``dsb.replace_nonfinite`` says, with a warning; none finite is a ``ValueError``.
    tta : bool
        Test-time augmentation: average the predictions of the 8 flips/rotations (8x the time).

    Returns
    -------
    ndarray, shape (H, W, C), float32 in [0, 1]
        Tile predictions blended with ``dsb.tile_weights`` and cropped to the image.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a preprocessed image of shape (H, W), got shape {image.shape}")
    image, count = dsb.replace_nonfinite(image)
    if count:
        log.warning("%d pixel values are NaN or infinite; replaced by the median of the others", count)
    tiles, corners = dsb.make_tiles(image.astype(np.float32), tile_size, min_overlap)
    tiles = tiles[..., None]
    transforms = range(8) if tta else (0,)
    total = None
    for k in transforms:
        predicted = np.asarray(predict_tiles(np.ascontiguousarray(dihedral_tiles(tiles, k))))
        if predicted.ndim != 4 or predicted.shape[:3] != tiles.shape[:3] or predicted.shape[3] < 1:
            raise ValueError(f"the model returned shape {predicted.shape} for tiles of shape {tiles.shape}")
        restored = dihedral_tiles(predicted.astype(np.float32), k, inverse=True)
        total = restored if total is None else total + restored
    return dsb.stitch_tiles(total / len(transforms), corners, image.shape, tile_size)


def predict_probability(
    predict_tiles: PredictTiles,
    image: np.ndarray,
    *,
    tile_size: int = dsb.TILE_SIZE,
    min_overlap: int = 32,
    tta: bool = False,
) -> np.ndarray:
    """Nucleus probability of a whole image of any size: channel 0 of ``predict_maps``.

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]
    """
    return predict_maps(predict_tiles, image, tile_size=tile_size, min_overlap=min_overlap, tta=tta)[..., 0]


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


# --------------------------------------------------------------------------------------------
# Probability to instances
# --------------------------------------------------------------------------------------------

def probability_to_labels(
    probability: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_size: int = DEFAULT_MIN_SIZE,
    marker_height: float | None = DEFAULT_MARKER_HEIGHT,
    contact: np.ndarray | None = None,
    contact_threshold: float = DEFAULT_CONTACT_THRESHOLD,
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
        Largest object (in pixels) to drop as a speck.
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
    if contact is not None or marker_height is not None:
        # A foreground part without a marker of its own (too flat, or all contact) stays a nucleus.
        orphans = skimage.measure.label(foreground & (labels == 0), connectivity=1)
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    relabelled, _, _ = skimage.segmentation.relabel_sequential(drop_specks(labels, min_size))
    return relabelled.astype(np.int32)


def drop_specks(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` with the objects of ``min_size`` pixels or fewer set to background (0: none dropped)."""
    if min_size <= 0:
        return labels
    small = np.bincount(labels.ravel()) <= min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


# --------------------------------------------------------------------------------------------
# The competition metric
# --------------------------------------------------------------------------------------------

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
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if truth.shape != predicted.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, predicted {predicted.shape}")
    truth = skimage.segmentation.relabel_sequential(truth.astype(np.int64))[0]
    predicted = skimage.segmentation.relabel_sequential(predicted.astype(np.int64))[0]
    n_true, n_pred = int(truth.max(initial=0)), int(predicted.max(initial=0))
    joint = np.bincount((truth * (n_pred + 1) + predicted).ravel(), minlength=(n_true + 1) * (n_pred + 1))
    joint = joint.reshape(n_true + 1, n_pred + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    area_true, area_pred = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    union = area_true[:, None] + area_pred[None, :] - intersection
    return intersection / np.maximum(union, 1)


def average_precision(truth: np.ndarray, predicted: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict:
    """The 2018 Data Science Bowl score of one image.

    At each IoU threshold t, a true and a predicted nucleus match when their IoU is above t (for
    t >= 0.5 a nucleus can match at most one other); precision(t) = TP / (TP + FP + FN). The
    image's score is the mean over the thresholds.

    An image with no true and no predicted nuclei scores 1; with only one of them empty, 0.

    Returns
    -------
    dict with ``map`` (mean over thresholds), ``ap`` (list, one per threshold), ``ap50``,
    ``f1_50`` (F1 at IoU 0.5), and ``true``, ``predicted`` (object counts).

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2]])
    >>> average_precision(a, a)["map"], average_precision(a, np.zeros_like(a))["map"]
    (1.0, 0.0)
    """
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.min() < 0.5:
        raise ValueError("IoU thresholds below 0.5 allow one nucleus to match several; use >= 0.5")
    iou = iou_matrix(truth, predicted)
    n_true, n_pred = iou.shape
    if n_true == 0 and n_pred == 0:
        precisions = np.ones(len(thresholds))
        f1 = 1.0
    else:
        tp = np.array([(iou > t).sum() for t in thresholds], np.float64)
        precisions = tp / (n_true + n_pred - tp)
        tp50 = (iou > 0.5).sum()
        f1 = 2 * tp50 / (n_true + n_pred)
    return {"map": float(precisions.mean()), "ap": precisions.tolist(), "ap50": float(precisions[0]),
            "f1_50": float(f1), "true": int(n_true), "predicted": int(n_pred)}


def match_objects(truth: np.ndarray, predicted: np.ndarray, iou_threshold: float = 0.5):
    """Which nuclei are matched at ``iou_threshold``, for pictures.

    Returns
    -------
    matched_pred : ndarray, shape (n_predicted,), bool, for labels 1..n of ``predicted``
    matched_true : ndarray, shape (n_true,), bool, for labels 1..n of ``truth``
    Both label images must be numbered 1..n (``relabel_sequential``).
    """
    iou = iou_matrix(truth, predicted) > iou_threshold
    return iou.any(axis=0), iou.any(axis=1)


# --------------------------------------------------------------------------------------------
# Kaggle run-length encoding
# --------------------------------------------------------------------------------------------

def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode a binary mask as Kaggle does.

    Pixels are numbered from 1, top to bottom then left to right (column-major); the result
    is ``"start length start length ..."`` with ascending starts.

    Examples
    --------
    >>> rle_encode(np.array([[0, 1], [1, 1]]))  # column-major: 0 1 1 1
    '2 3'
    """
    pixels = np.asarray(mask).astype(bool).T.ravel()
    padded = np.concatenate([[False], pixels, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = changes[::2], changes[1::2]
    return " ".join(f"{start} {end - start}" for start, end in zip(starts, ends))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of ``rle_encode``: ndarray of ``shape``, bool.

    Raises ValueError for an odd number of values, unsorted or overlapping runs, or runs
    outside the image.
    """
    height, width = shape
    values = [int(value) for value in str(rle).split()]
    if len(values) % 2:
        raise ValueError(f"RLE has an odd number of values: {rle[:60]!r}")
    pixels = np.zeros(height * width, bool)
    previous_end = 0
    for start, length in zip(values[::2], values[1::2]):
        if start < 1 or length < 1 or start - 1 < previous_end or start - 1 + length > height * width:
            raise ValueError(f"bad run ({start}, {length}) for an image of {height}x{width} pixels")
        pixels[start - 1:start - 1 + length] = True
        previous_end = start - 1 + length
    return pixels.reshape(width, height).T


def submission_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """``(ImageId, EncodedPixels)`` rows, one per nucleus; one row with empty pixels if none."""
    labels = np.asarray(labels)
    ids = [value for value in np.unique(labels) if value != 0]
    if not ids:
        return [(image_id, "")]
    return [(image_id, rle_encode(labels == value)) for value in ids]


def write_submission(path: str | os.PathLike, rows) -> None:
    """Write ``ImageId,EncodedPixels`` rows as a Kaggle submission CSV."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)


def read_labels_csv(path: str | os.PathLike, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Read a Kaggle labels CSV (``stage1_train_labels.csv`` or ``stage1_solution.csv``) into label images.

    Parameters
    ----------
    path : CSV with columns ImageId, EncodedPixels and, optionally, Height and Width.
    shapes : dict image_id -> (H, W), needed when the CSV has no Height/Width columns.

    Returns
    -------
    dict image_id -> labels, ndarray (H, W) int32, nuclei numbered 1..n in the order of the rows.
    """
    masks: dict[str, list[str]] = {}
    sizes: dict[str, tuple[int, int]] = dict(shapes or {})
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"ImageId", "EncodedPixels"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            image_id = row["ImageId"]
            masks.setdefault(image_id, [])
            if row.get("EncodedPixels", "").strip():
                masks[image_id].append(row["EncodedPixels"])
            if row.get("Height") and row.get("Width"):
                sizes[image_id] = (int(row["Height"]), int(row["Width"]))
    result = {}
    for image_id, rles in masks.items():
        if image_id not in sizes:
            raise ValueError(f"{path}: no Height/Width for {image_id}; pass its shape in `shapes`")
        labels = np.zeros(sizes[image_id], np.int32)
        for index, rle in enumerate(rles, start=1):
            mask = rle_decode(rle, sizes[image_id])
            if np.any(labels[mask]):
                raise ValueError(f"{path}: nuclei of {image_id} overlap (row {index})")
            labels[mask] = index
        result[image_id] = labels
    return result

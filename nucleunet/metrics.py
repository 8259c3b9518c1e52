"""The competition's metric as one chain of small steps: IoU -> matches -> precision per threshold, and pixel Dice.

NumPy and scikit-image only. ``score_image`` computes the IoU matrix of an image once and everything the reports
need from it::

    score = score_image(true_labels, labels)      # ImageScore: map, ap per threshold, f1_50, dice, counts
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import skimage.segmentation

# The competition's IoU thresholds: 0.50, 0.55, ..., 0.95.
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


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
    """``iou_matrix`` from ``overlap_counts``: shape (n_true, n_predicted), float64.

    Computed where a true and a predicted nucleus share pixels (elsewhere 0): a poor model's thousands of specks
    make the matrix large and nearly empty."""
    intersection = joint[1:, 1:]
    area_true, area_pred = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    rows, cols = np.nonzero(intersection)
    shared = intersection[rows, cols].astype(np.float64)
    iou = np.zeros(intersection.shape)
    iou[rows, cols] = shared / np.maximum(area_true[rows] + area_pred[cols] - shared, 1)
    return iou


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
    matched = np.sort(iou[iou > thresholds.min()])  # the pairs that can match at any of the thresholds
    tp = (len(matched) - np.searchsorted(matched, thresholds, side="right")).astype(np.float64)
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

"""How sure the model is of each nucleus it found: a few measurements of each predicted nucleus, and a small
logistic model, fitted on training images, that turns them into the probability that the nucleus matches a true one.

Post-processing (``postprocessing.Postprocessing``) drops the nuclei scoring under its ``min_score``: most of the
predictions that match no true nucleus lie on the background, are fragments of a nucleus, or join two nuclei into
one, and their own maps show it (a low nucleus probability, a high contact probability, a ragged shape).

    measurements = measure_nuclei(maps, labels)          # (n, len(FEATURES)) for nuclei 1..n
    model = fit_score_model(measurements, best_iou > 0.5)  # on predictions for training images
    scores = model.score(maps, labels)                    # (n,) in [0, 1]

The model is kept as plain numbers (``ScoreModel.as_dict``) in ``postprocessing.json``, so it loads wherever the
project does, without pickles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import skimage.measure
import skimage.segmentation

# What the score is computed from, all from the model's maps and the nucleus's own shape, none from the image's
# intensities or pixel size, so that it holds for images of other kinds and magnifications.
FEATURES = (
    "log_relative_area",   # log of the nucleus's area over the median area of the image's nuclei
    "nucleus_probability",  # mean nucleus probability inside it
    "contact_probability",  # mean contact probability inside it (0 for a model without a contact channel)
    "edge_probability",    # mean nucleus probability on its outermost pixels
    "solidity",            # its area over its convex hull's
)


def measure_nuclei(maps: np.ndarray, labels: np.ndarray, *, hulls: np.ndarray | None = None) -> np.ndarray:
    """The ``FEATURES`` of every nucleus.

    Parameters
    ----------
    maps : ndarray, shape (H, W, C), float in [0, 1]: nuclei [, contacts] (``prediction.predict_maps``)
    labels : ndarray, shape (H, W), int, 0 = background, nuclei numbered 1..n
    hulls : ndarray, shape (n,), bool, optional
        The nuclei whose solidity is measured (each a convex hull, the costly part); the others' is left at 1.

    Returns
    -------
    ndarray, shape (n, len(FEATURES)), float64; row i is nucleus i + 1

    Examples
    --------
    >>> labels = np.zeros((8, 8), np.int32); labels[1:4, 1:4] = 1; labels[5:7, 5:7] = 2  # 9 and 4 pixels
    >>> maps = np.zeros((8, 8, 2), np.float32); maps[..., 0] = 0.9 * (labels == 1) + 0.6 * (labels == 2)
    >>> maps[2, 2, 0] = 1.0  # nucleus 1's only pixel off its edge
    >>> measure_nuclei(maps, labels).round(2).tolist()  # log(9 / 6.5), mean of 8 x 0.9 and 1.0, ...
    [[0.33, 0.91, 0.0, 0.9, 1.0], [-0.49, 0.6, 0.0, 0.6, 1.0]]
    """
    labels = np.asarray(labels)
    if maps.ndim != 3 or maps.shape[:2] != labels.shape:
        raise ValueError(f"expected maps of shape (H, W, C) for labels of shape {labels.shape}, got {maps.shape}")
    count = int(labels.max())
    if count == 0:
        return np.zeros((0, len(FEATURES)))
    inside = labels > 0  # means over the nuclei's pixels alone: the same sums as over every pixel, faster
    ids = labels[inside]
    nucleus = maps[..., 0][inside].astype(np.float32)
    contact = maps[..., 1][inside].astype(np.float32) if maps.shape[-1] > 1 else np.zeros_like(nucleus)
    areas = np.bincount(ids, minlength=count + 1)[1:].astype(np.float64)
    present = areas > 0  # a label number without pixels (not from probability_to_labels) measures as empty
    on_edge = skimage.segmentation.find_boundaries(labels, mode="inner")[inside]
    edge_ids = ids[on_edge]
    solidity = np.nan_to_num(solidity_of(labels, hulls), nan=1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = [
            np.log(np.where(present, areas, 1) / np.median(areas[present])),
            np.bincount(ids, nucleus, minlength=count + 1)[1:] / areas,
            np.bincount(ids, contact, minlength=count + 1)[1:] / areas,
            np.bincount(edge_ids, nucleus[on_edge], minlength=count + 1)[1:]
            / np.bincount(edge_ids, minlength=count + 1)[1:],
            solidity,
        ]
    return np.nan_to_num(np.stack(columns, axis=1))


def solidity_of(labels: np.ndarray, chosen: np.ndarray | None = None) -> np.ndarray:
    """Each nucleus's solidity (its area over its convex hull's, as scikit-image's regionprops measures it), nucleus
    i + 1's at i; NaN for those not ``chosen`` (bool, shape (n,); each convex hull is the costly part) and for label
    numbers without pixels.

    Examples
    --------
    >>> labels = np.zeros((6, 9), np.int32); labels[1:4, 1:4] = 1; labels[1:4, 5:8] = 3; labels[3, 6] = 0
    >>> solidity_of(labels).round(3).tolist(), solidity_of(labels, np.array([False, False, True])).round(3).tolist()
    ([1.0, nan, 0.889], [nan, nan, 0.889])
    """
    values = np.full(int(labels.max(initial=0)), np.nan)
    for region in skimage.measure.regionprops(labels):
        if chosen is None or chosen[region.label - 1]:
            values[region.label - 1] = region.solidity
    return values


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


@dataclass(frozen=True)
class ScoreModel:
    """A logistic model on standardised ``FEATURES``: score = sigmoid(intercept + sum(coef * (x - mean) / scale)).

    Attributes
    ----------
    mean, scale, coef : tuple of float, one per feature
    intercept : float
    features : tuple of str, the names the numbers belong to (``FEATURES`` when fitted)
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    features: tuple[str, ...] = FEATURES

    def __post_init__(self):
        lengths = {len(self.features), len(self.mean), len(self.scale), len(self.coef)}
        if len(lengths) != 1:
            raise ValueError(f"a score model needs one mean, scale and coefficient per feature, got {self}")
        if tuple(self.features) != FEATURES:
            raise ValueError(f"this score model is for the features {list(self.features)}, "
                             f"but this version measures {list(FEATURES)}: fit it again (tune --fit-score)")
        if not all(value > 0 for value in self.scale):
            raise ValueError(f"a score model's scales must be positive, got {self.scale}")

    @classmethod
    def from_dict(cls, values: dict) -> ScoreModel:
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})

    def as_dict(self) -> dict:
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    def predict(self, measurements: np.ndarray) -> np.ndarray:
        """Scores of ``measure_nuclei`` rows: ndarray, shape (n,), float64 in [0, 1]."""
        standardised = (np.asarray(measurements, np.float64) - self.mean) / self.scale
        return _sigmoid(self.intercept + standardised @ np.asarray(self.coef))

    def score(self, maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The score of every nucleus of ``labels`` (see ``measure_nuclei``): shape (n,), row i nucleus i + 1."""
        return self.predict(measure_nuclei(maps, labels))


def fit_score_model(measurements: np.ndarray, matched: np.ndarray, *, regularization: float = 1.0) -> ScoreModel:
    """Fit a ``ScoreModel`` (scikit-learn's logistic regression on standardised features).

    Parameters
    ----------
    measurements : ndarray, shape (n, len(FEATURES)), from ``measure_nuclei`` of predictions on training images
    matched : ndarray, shape (n,), bool: whether each predicted nucleus matches a true one (IoU above 0.5)
    regularization : float
        scikit-learn's ``C`` (smaller: stronger).
    """
    from sklearn.linear_model import LogisticRegression

    measurements = np.asarray(measurements, np.float64)
    matched = np.asarray(matched, bool)
    if measurements.ndim != 2 or measurements.shape[1] != len(FEATURES) or len(matched) != len(measurements):
        raise ValueError(f"expected measurements of shape (n, {len(FEATURES)}) and n flags, "
                         f"got {measurements.shape} and {matched.shape}")
    if matched.all() or not matched.any():  # a score is learnt from right and wrong nuclei
        raise ValueError("no nuclei to learn a score from" if not len(matched) else
                         f"{'all' if matched.any() else 'none'} of the {len(matched)} nuclei match a true one, "
                         "and a score is learnt from right and wrong ones")
    mean = measurements.mean(axis=0)
    scale = measurements.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    fitted = LogisticRegression(C=regularization, max_iter=1000).fit((measurements - mean) / scale, matched)
    return ScoreModel(tuple(mean.tolist()), tuple(scale.tolist()), tuple(fitted.coef_[0].tolist()),
                      float(fitted.intercept_[0]))


def drop_unsure(labels: np.ndarray, scores: np.ndarray, min_score: float) -> np.ndarray:
    """``labels`` without the nuclei whose score is under ``min_score``, renumbered 1..m in their order.

    Examples
    --------
    >>> drop_unsure(np.array([[1, 0, 2, 3]]), np.array([0.9, 0.1, 0.6]), 0.5).tolist()
    [[1, 0, 0, 2]]
    """
    keep = np.concatenate([[False], np.asarray(scores) >= min_score])
    if len(keep) != int(labels.max()) + 1:
        raise ValueError(f"expected one score per nucleus ({int(labels.max())}), got {len(scores)}")
    numbers = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return numbers[labels]

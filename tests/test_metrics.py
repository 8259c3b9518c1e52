"""metrics.py: the competition's metric, checked by hand and against a double loop; pixel Dice."""

from __future__ import annotations

import numpy as np
import pytest

from nucleunet import metrics

from conftest import disk_labels


def test_pixel_dice_hand_computed():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 pixels
    predicted = np.zeros((4, 4), bool)
    predicted[1:3] = True  # 8 pixels, 4 shared
    assert metrics.pixel_dice(truth, predicted) == pytest.approx(0.5)


def test_pixel_dice_empty_cases():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert metrics.pixel_dice(empty, empty) == 1.0
    assert metrics.pixel_dice(full, empty) == 0.0
    assert metrics.pixel_dice(empty, full) == 0.0


def test_pixel_dice_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"truth \(2, 2\), predicted \(3, 3\)"):
        metrics.pixel_dice(np.zeros((2, 2)), np.zeros((3, 3)))


# ---- the competition metric ----------------------------------------------------------------

def _reference_map(truth, predicted, thresholds=metrics.IOU_THRESHOLDS):
    """Written differently on purpose: a double loop over objects with boolean masks."""
    true_ids = [v for v in np.unique(truth) if v]
    pred_ids = [v for v in np.unique(predicted) if v]
    if not true_ids and not pred_ids:
        return 1.0
    scores = []
    for t in thresholds:
        used, tp = set(), 0
        for a in true_ids:
            for b in pred_ids:
                if b in used:
                    continue
                inter = np.sum((truth == a) & (predicted == b))
                union = np.sum((truth == a) | (predicted == b))
                if inter / union > t:
                    used.add(b)
                    tp += 1
                    break
        scores.append(tp / (tp + (len(pred_ids) - tp) + (len(true_ids) - tp)))
    return float(np.mean(scores))


def test_perfect_prediction_scores_one():
    truth = disk_labels((50, 50), [(15, 15), (35, 35)], 8)
    result = metrics.score_image(truth, truth)
    assert result.map == 1.0 and result.f1_50 == 1.0 and result.true == result.predicted == 2
    assert result.matched_true.all() and result.matched_predicted.all() and result.dice == 1.0


def test_empty_truth_and_prediction():
    empty = np.zeros((10, 10), np.int32)
    some = disk_labels((10, 10), [(5, 5)], 2)
    assert metrics.average_precision(empty, empty) == 1.0
    assert metrics.average_precision(empty, some) == 0.0
    assert metrics.average_precision(some, empty) == 0.0
    assert metrics.score_image(some, empty).f1_50 == 0.0 and metrics.score_image(empty, empty).f1_50 == 1.0


def test_shifted_square_scores_by_hand():
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 1
    predicted = np.zeros_like(truth)
    predicted[0:10, 1:11] = 1  # IoU = 90 / 110 = 0.818: matched at 0.50 .. 0.80, not at 0.85 .. 0.95
    result = metrics.score_image(truth, predicted)
    assert result.ap == (1.0,) * 7 + (0.0,) * 3
    assert result.map == pytest.approx(0.7) == metrics.average_precision(truth, predicted)


def test_merged_prediction_scores_by_hand():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    merged = (truth > 0).astype(np.int32)  # IoU 0.5 with each: never above any threshold
    result = metrics.score_image(truth, merged)
    assert result.map == 0.0 and result.true == 2 and result.predicted == 1
    assert result.matched_true.tolist() == [False, False] and result.matched_predicted.tolist() == [False]


def test_split_prediction_scores_by_hand():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :16] = 1
    predicted = np.zeros_like(truth)
    predicted[:, :12], predicted[:, 12:16] = 1, 2  # IoU 0.75 and 0.25
    # TP 1, FP 1, FN 0 at t < 0.75 -> 0.5; nothing at t >= 0.75 -> 0.
    result = metrics.score_image(truth, predicted)
    assert result.ap == (0.5,) * 5 + (0.0,) * 5
    assert result.f1_50 == pytest.approx(2 / 3)
    assert result.matched_predicted.tolist() == [True, False]


def test_metric_agrees_with_a_double_loop_on_random_label_images():
    rng = np.random.default_rng(0)
    for trial in range(15):
        truth = disk_labels((48, 48), rng.integers(4, 44, (int(rng.integers(0, 6)), 2)), int(rng.integers(3, 8)))
        jitter = rng.integers(-3, 4, 2)
        predicted = np.roll(truth, tuple(jitter), axis=(0, 1))
        predicted[rng.random(predicted.shape) < 0.05] = 0
        if trial % 3 == 0:
            predicted[predicted == 1] = 0
        assert metrics.average_precision(truth, predicted) == pytest.approx(_reference_map(truth, predicted))


def test_metric_agrees_with_a_double_loop_where_a_poor_model_adds_many_specks():
    rng = np.random.default_rng(1)
    for trial in range(4):
        truth = disk_labels((40, 40), rng.integers(4, 36, (5, 2)), 5)
        predicted = np.roll(truth, (1, trial), axis=(0, 1))
        specks = (rng.random(truth.shape) < 0.08) & (predicted == 0)
        predicted[specks] = 100 + np.arange(int(specks.sum()))  # each a nucleus of its own, sharing nothing
        assert metrics.average_precision(truth, predicted) == pytest.approx(_reference_map(truth, predicted))


def test_an_iou_of_exactly_a_threshold_does_not_match_at_it():
    truth = np.array([[1, 1, 1, 1, 0, 0]])
    half = np.array([[2, 2, 0, 0, 0, 0]])  # IoU 2 / 4 = 0.5
    assert metrics.precisions(metrics.iou_matrix(truth, half), [0.5]).tolist() == [0.0]
    three = np.array([[0, 3, 3, 3, 3, 0]])  # IoU 3 / 5 = 0.6
    assert metrics.precisions(metrics.iou_matrix(truth, three), [0.5, 0.6, 0.55]).tolist() == [1.0, 0.0, 1.0]


def test_iou_matrix_ignores_label_numbering():
    truth = np.array([[5, 5, 0, 9]])
    predicted = np.array([[0, 7, 7, 9]])
    np.testing.assert_allclose(metrics.iou_matrix(truth, predicted), [[1 / 3, 0.0], [0.0, 1.0]])


def test_score_image_dice_uses_the_given_mask():
    truth = disk_labels((30, 30), [(15, 15)], 6)
    labels = truth.copy()
    mask = np.zeros(truth.shape, bool)  # e.g. the thresholded probability, specks included
    assert metrics.score_image(truth, labels).dice == 1.0
    assert metrics.score_image(truth, labels, mask).dice == 0.0

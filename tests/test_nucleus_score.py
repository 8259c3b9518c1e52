"""The score of each predicted nucleus and the post-processing that drops the unsure ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.segmentation

from nucleunet import adaptation, nucleus_score, postprocessing, prediction
from nucleunet.errors import UserError

from conftest import disk_labels


def two_nuclei_maps(sure: float = 0.95, unsure: float = 0.55) -> tuple[np.ndarray, np.ndarray]:
    """Two discs, the first predicted with nucleus probability ``sure``, the second ``unsure``; no contacts."""
    labels = disk_labels((40, 70), [(20, 18), (20, 50)], 9)
    maps = np.zeros(labels.shape + (2,), np.float32)
    maps[..., 0] = np.select([labels == 1, labels == 2], [sure, unsure], 0.02)
    return labels, maps


def probability_only_model(weight: float = 10.0, centre: float = 0.75) -> nucleus_score.ScoreModel:
    """A score model that looks at the mean nucleus probability only: 0.5 at ``centre``."""
    count = len(nucleus_score.FEATURES)
    coef = [0.0] * count
    coef[nucleus_score.FEATURES.index("nucleus_probability")] = weight
    mean = [0.0] * count
    mean[nucleus_score.FEATURES.index("nucleus_probability")] = centre
    return nucleus_score.ScoreModel(tuple(mean), (1.0,) * count, tuple(coef), 0.0)


# ---- measurements --------------------------------------------------------------------------

def test_measurements_of_two_discs():
    labels, maps = two_nuclei_maps()
    maps[..., 1] = 0.25 * (labels == 2)
    measured = nucleus_score.measure_nuclei(maps, labels)
    assert measured.shape == (2, len(nucleus_score.FEATURES))
    column = {name: measured[:, index] for index, name in enumerate(nucleus_score.FEATURES)}
    np.testing.assert_allclose(column["log_relative_area"], [0.0, 0.0])  # equal discs: each the median's size
    np.testing.assert_allclose(column["nucleus_probability"], [0.95, 0.55], rtol=1e-6)
    np.testing.assert_allclose(column["edge_probability"], [0.95, 0.55], rtol=1e-6)
    np.testing.assert_allclose(column["contact_probability"], [0.0, 0.25], rtol=1e-6)
    assert np.all(column["solidity"] > 0.9)


def test_the_mean_probabilities_are_scipys_means_over_each_nucleus_and_its_edge():
    rng = np.random.default_rng(4)
    labels = disk_labels((90, 120), [(20, 20), (20, 60), (60, 40), (60, 100), (85, 10)], 11)
    labels[labels == 3] = 0  # a number without pixels
    maps = rng.random((90, 120, 2)).astype(np.float16)
    measured = nucleus_score.measure_nuclei(maps, labels)
    index = np.arange(1, labels.max() + 1)
    edges = np.where(skimage.segmentation.find_boundaries(labels, mode="inner"), labels, 0)
    with np.errstate(invalid="ignore"):
        expected = [ndi.mean(maps[..., 0].astype(np.float32), labels, index),
                    ndi.mean(maps[..., 1].astype(np.float32), labels, index),
                    ndi.mean(maps[..., 0].astype(np.float32), edges, index)]
    np.testing.assert_array_equal(measured[:, 1:4], np.nan_to_num(np.stack(expected, axis=1)))
    assert (measured[2, 1:] == [0, 0, 0, 1]).all()  # the number without pixels


def test_only_the_asked_for_convex_hulls_are_measured():
    labels = disk_labels((60, 60), [(15, 15), (40, 40)], 9)
    labels[10:20, 10:20][labels[10:20, 10:20] == 1] = 0  # a notch: nucleus 1 is not convex
    maps = np.stack([labels > 0, np.zeros(labels.shape)], axis=-1).astype(np.float32)
    every = nucleus_score.measure_nuclei(maps, labels)
    second = nucleus_score.measure_nuclei(maps, labels, hulls=np.array([False, True]))
    column = nucleus_score.FEATURES.index("solidity")
    assert every[0, column] < 0.9 and second[0, column] == 1.0 and second[1, column] == every[1, column]
    np.testing.assert_array_equal(np.delete(second, column, axis=1), np.delete(every, column, axis=1))


def test_a_ragged_nucleus_has_a_low_solidity_and_a_small_one_a_negative_relative_area():
    labels = np.zeros((30, 60), np.int32)
    labels[5:25, 5:25] = 1  # a square: solidity 1
    labels[5:25, 30:50] = 2
    labels[5:22, 33:47] = 0  # a U, open at the top: a third of its hull
    labels[26:29, 5:8] = 3  # a speck
    maps = np.ones(labels.shape + (1,), np.float32)  # no contact channel: its feature reads 0
    measured = nucleus_score.measure_nuclei(maps, labels)
    solidity = measured[:, nucleus_score.FEATURES.index("solidity")]
    assert solidity[0] == pytest.approx(1.0) and solidity[1] < 0.5
    assert measured[2, nucleus_score.FEATURES.index("log_relative_area")] < -2
    assert np.all(measured[:, nucleus_score.FEATURES.index("contact_probability")] == 0)


def test_no_nuclei_measure_as_an_empty_table():
    measured = nucleus_score.measure_nuclei(np.zeros((10, 10, 2), np.float32), np.zeros((10, 10), np.int32))
    assert measured.shape == (0, len(nucleus_score.FEATURES))


def test_measurements_refuse_maps_of_another_shape():
    with pytest.raises(ValueError, match=r"\(12, 10, 2\)"):
        nucleus_score.measure_nuclei(np.zeros((12, 10, 2)), np.zeros((10, 10), np.int32))


# ---- the score model -------------------------------------------------------------------------

def test_a_fitted_score_rises_with_what_separates_matched_from_unmatched_nuclei():
    rng = np.random.default_rng(0)
    measurements = rng.normal(size=(400, len(nucleus_score.FEATURES)))
    probability = nucleus_score.FEATURES.index("nucleus_probability")
    matched = measurements[:, probability] + 0.3 * rng.normal(size=400) > 0
    model = nucleus_score.fit_score_model(measurements, matched)
    assert model.coef[probability] > 1 and max(abs(c) for i, c in enumerate(model.coef) if i != probability) < 0.5
    scores = model.predict(measurements)
    assert scores.shape == (400,) and np.all((scores >= 0) & (scores <= 1))
    assert np.mean((scores > 0.5) == matched) > 0.85  # the noise alone leaves about 0.9 (1 - arctan(0.3) / pi)


def test_fitting_needs_matched_and_unmatched_nuclei():
    with pytest.raises(ValueError, match="all of the 3 nuclei match"):
        nucleus_score.fit_score_model(np.zeros((3, len(nucleus_score.FEATURES))), np.ones(3, bool))
    with pytest.raises(ValueError, match="shape"):
        nucleus_score.fit_score_model(np.zeros((3, 2)), np.array([True, False, True]))


def test_a_score_model_round_trips_through_json():
    model = probability_only_model()
    again = nucleus_score.ScoreModel.from_dict(json.loads(json.dumps(model.as_dict())))
    assert again == model
    labels, maps = two_nuclei_maps()
    np.testing.assert_allclose(again.score(maps, labels), model.score(maps, labels))


def test_a_score_model_for_other_features_is_refused():
    values = probability_only_model().as_dict() | {"features": ["area", "x", "y", "z", "w"]}
    with pytest.raises(ValueError, match="fit it again"):
        nucleus_score.ScoreModel.from_dict(values)


def test_drop_unsure_renumbers_the_kept_nuclei():
    labels = np.array([[1, 1, 0, 2], [3, 0, 4, 4]])
    kept = nucleus_score.drop_unsure(labels, np.array([0.9, 0.2, 0.5, 0.7]), 0.5)
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [2, 0, 3, 3]])
    with pytest.raises(ValueError, match="one score per nucleus"):
        nucleus_score.drop_unsure(labels, np.array([0.9]), 0.5)


# ---- in the post-processing ------------------------------------------------------------------

def test_postprocessing_drops_the_nuclei_under_its_min_score():
    labels, maps = two_nuclei_maps()
    model = probability_only_model().as_dict()
    assert postprocessing.Postprocessing(min_size=0, score_model=model).labels(maps).max() == 2  # no cut: both
    kept = postprocessing.Postprocessing(min_size=0, score_model=model, min_score=0.5).labels(maps)
    assert kept.max() == 1
    np.testing.assert_array_equal(kept > 0, labels == 1)


def test_postprocessing_with_a_score_model_round_trips_through_its_file(tmp_path):
    settings = postprocessing.Postprocessing(threshold=0.4, min_score=0.3, score_model=probability_only_model().as_dict())
    settings.save(tmp_path / "postprocessing.json")
    assert postprocessing.Postprocessing.load(tmp_path / "postprocessing.json") == settings


def test_postprocessing_refuses_a_min_score_without_a_score_model():
    with pytest.raises(UserError, match="tune --fit-score"):
        postprocessing.Postprocessing(min_score=0.3)
    with pytest.raises(UserError, match="min_score must be a number in"):
        postprocessing.Postprocessing(min_score=1.0, score_model=probability_only_model().as_dict())


def test_postprocessing_refuses_a_broken_score_model():
    broken = probability_only_model().as_dict()
    del broken["coef"]
    with pytest.raises(UserError, match="not a valid score model"):
        postprocessing.Postprocessing(score_model=broken)


def test_the_automatic_zoom_is_measured_on_every_nucleus_whatever_the_score():
    # Discs of about 80 pixels, a quarter of the 365 the zoom aims at: zoom 2, even when the score drops every nucleus.
    image = (disk_labels((128, 128), [(30, 30), (30, 90), (90, 30), (90, 90)], 5) > 0).astype(np.float32)

    def predict_tiles(tiles):  # the image itself as the nucleus probability, no contacts
        return np.concatenate([tiles, np.zeros_like(tiles)], axis=-1)

    never_sure = probability_only_model().as_dict() | {"intercept": -100.0}
    plain = postprocessing.Postprocessing(scale="auto", nucleus_area=365.0, min_size=0)
    scored = plain.replace(score_model=never_sure, min_score=0.5)
    assert scored.labels(predict_tiles(image[None, ..., None])[0]).max() == 0
    options = {"tile_size": 128, "min_overlap": 16}
    resolved_plain, _ = adaptation.resolve(plain, image, prediction.first_pass(predict_tiles, plain, **options))
    resolved_scored, _ = adaptation.resolve(scored, image, prediction.first_pass(predict_tiles, scored, **options))
    assert resolved_plain.scale == resolved_scored.scale == 2.0

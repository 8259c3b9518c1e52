"""segment.py: tiled prediction, post-processing settings, the competition metric, RLE, tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.draw
from conftest import disk_labels

import imaging
import segment
import tiling
from errors import UserError


def test_identity_model_gives_the_image_back_for_many_sizes():
    rng = np.random.default_rng(0)
    for shape in [(64, 80), (256, 256), (257, 300), (520, 696), (31, 500)]:
        image = rng.random(shape).astype(np.float32)
        rebuilt = segment.predict_probability(lambda tiles: tiles, image, tile_size=128, min_overlap=16)
        np.testing.assert_allclose(rebuilt, image, atol=1e-6, err_msg=str(shape))


def test_tiles_reach_the_model_in_batches_of_the_right_shape():
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return np.full_like(tiles, 0.25)

    probability = segment.predict_probability(model, np.zeros((300, 600), np.float32), tile_size=256)
    assert seen == [(6, 256, 256, 1)]
    assert probability.shape == (300, 600) and np.all(probability == 0.25)


def test_a_model_returning_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="the model returned shape"):
        segment.predict_probability(lambda tiles: tiles[:, :10], np.zeros((64, 64), np.float32), tile_size=64)


def test_pixel_dice_hand_computed():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 pixels
    predicted = np.zeros((4, 4), bool)
    predicted[1:3] = True  # 8 pixels, 4 shared
    assert segment.pixel_dice(truth, predicted) == pytest.approx(0.5)


def test_pixel_dice_empty_cases():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert segment.pixel_dice(empty, empty) == 1.0
    assert segment.pixel_dice(full, empty) == 0.0
    assert segment.pixel_dice(empty, full) == 0.0


def test_pixel_dice_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"truth \(2, 2\), predicted \(3, 3\)"):
        segment.pixel_dice(np.zeros((2, 2)), np.zeros((3, 3)))


# ---- test-time augmentation ----------------------------------------------------------------

@pytest.mark.parametrize("k", range(8))
def test_dihedral_tiles_inverse_undoes_each_transform(k):
    tiles = np.random.default_rng(k).random((2, 8, 8, 1))
    back = segment.dihedral_tiles(segment.dihedral_tiles(tiles, k), k, inverse=True)
    np.testing.assert_array_equal(back, tiles)


def test_tta_with_an_identity_model_gives_the_image_back():
    image = np.random.default_rng(0).random((150, 170)).astype(np.float32)
    rebuilt = segment.predict_probability(lambda t: t, image, tile_size=64, min_overlap=8, tta=True)
    np.testing.assert_allclose(rebuilt, image, atol=1e-6)


def test_tta_averages_a_position_dependent_model_over_the_eight_views():
    def left_column_model(tiles):  # 1 in each tile's first column, wherever that lands
        out = np.zeros_like(tiles)
        out[:, :, 0] = 1
        return out

    plain = segment.predict_probability(left_column_model, np.zeros((64, 64), np.float32), tile_size=64)
    averaged = segment.predict_probability(left_column_model, np.zeros((64, 64), np.float32), tile_size=64,
                                           tta=True)
    assert plain[:, 0].tolist() == [1.0] * 64 and plain[:, 1:].max() == 0
    # Each of the 4 border lines gets the column in 2 of the 8 views.
    assert averaged[32, 0] == pytest.approx(0.25) and averaged[0, 32] == pytest.approx(0.25)
    assert averaged[32, 32] == 0.0


# ---- instances -----------------------------------------------------------------------------

def test_watershed_splits_two_touchingdisk_labels():
    truth = disk_labels((60, 80), [(30, 28), (30, 50)], 12)  # centres 22 apart, radius 12: they overlap
    probability = (truth > 0).astype(np.float32)
    labels = segment.probability_to_labels(probability, marker_height=2.0)
    assert labels.max() == 2
    assert segment.score_image(truth, labels).ap50 == 1.0


def test_connected_components_keep_touching_disks_together():
    truth = disk_labels((60, 80), [(30, 28), (30, 50)], 12)
    labels = segment.probability_to_labels((truth > 0).astype(np.float32), marker_height=None)
    assert labels.max() == 1


def test_specks_are_dropped_and_labels_are_sequential():
    probability = np.zeros((40, 40), np.float32)
    probability[2:4, 2:4] = 0.9  # 4 pixels
    probability[10:30, 10:30] = 0.9
    labels = segment.probability_to_labels(probability, min_size=10)
    assert labels.dtype == np.int32 and sorted(np.unique(labels)) == [0, 1]
    assert labels[2, 2] == 0 and labels[20, 20] == 1


def test_threshold_is_strict():
    labels = segment.probability_to_labels(np.full((30, 30), 0.5, np.float32), threshold=0.5, min_size=0)
    assert labels.max() == 0


# ---- the competition metric ----------------------------------------------------------------

def _reference_map(truth, predicted, thresholds=segment.IOU_THRESHOLDS):
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
    result = segment.score_image(truth, truth)
    assert result.map == 1.0 and result.f1_50 == 1.0 and result.true == result.predicted == 2
    assert result.matched_true.all() and result.matched_predicted.all() and result.dice == 1.0


def test_empty_truth_and_prediction():
    empty = np.zeros((10, 10), np.int32)
    some = disk_labels((10, 10), [(5, 5)], 2)
    assert segment.average_precision(empty, empty) == 1.0
    assert segment.average_precision(empty, some) == 0.0
    assert segment.average_precision(some, empty) == 0.0
    assert segment.score_image(some, empty).f1_50 == 0.0 and segment.score_image(empty, empty).f1_50 == 1.0


def test_shifted_square_scores_by_hand():
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 1
    predicted = np.zeros_like(truth)
    predicted[0:10, 1:11] = 1  # IoU = 90 / 110 = 0.818: matched at 0.50 .. 0.80, not at 0.85 .. 0.95
    result = segment.score_image(truth, predicted)
    assert result.ap == (1.0,) * 7 + (0.0,) * 3
    assert result.map == pytest.approx(0.7) == segment.average_precision(truth, predicted)


def test_merged_prediction_scores_by_hand():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    merged = (truth > 0).astype(np.int32)  # IoU 0.5 with each: never above any threshold
    result = segment.score_image(truth, merged)
    assert result.map == 0.0 and result.true == 2 and result.predicted == 1
    assert result.matched_true.tolist() == [False, False] and result.matched_predicted.tolist() == [False]


def test_split_prediction_scores_by_hand():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :16] = 1
    predicted = np.zeros_like(truth)
    predicted[:, :12], predicted[:, 12:16] = 1, 2  # IoU 0.75 and 0.25
    # TP 1, FP 1, FN 0 at t < 0.75 -> 0.5; nothing at t >= 0.75 -> 0.
    result = segment.score_image(truth, predicted)
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
        assert segment.average_precision(truth, predicted) == pytest.approx(_reference_map(truth, predicted))


def test_iou_matrix_ignores_label_numbering():
    truth = np.array([[5, 5, 0, 9]])
    predicted = np.array([[0, 7, 7, 9]])
    np.testing.assert_allclose(segment.iou_matrix(truth, predicted), [[1 / 3, 0.0], [0.0, 1.0]])


# ---- the contact channel -------------------------------------------------------------------

def test_contacts_split_touching_nuclei_that_components_merge():
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 5:30], truth[10:30, 30:55] = 1, 2
    probability = (truth > 0).astype(np.float32)
    contact = tiling.contact_map(truth).astype(np.float32)
    assert segment.probability_to_labels(probability).max() == 1
    labels = segment.probability_to_labels(probability, contact=contact)
    assert labels.max() == 2
    assert segment.average_precision(truth, labels) > 0.9
    # Every foreground pixel is given to a nucleus: the contact band is grown back over.
    np.testing.assert_array_equal(labels > 0, truth > 0)


def test_contact_without_a_seed_keeps_its_nucleus():
    probability = np.zeros((20, 20), np.float32)
    probability[5:15, 5:15] = 1.0
    contact = probability.copy()  # all contact: no seed anywhere
    labels = segment.probability_to_labels(probability, contact=contact, min_size=0)
    assert labels.max() == 1 and (labels > 0).sum() == 100


def test_contact_map_must_fit_and_excludes_a_marker_height():
    probability = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="contact map of shape"):
        segment.probability_to_labels(probability, contact=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="not both"):
        segment.probability_to_labels(probability, contact=np.zeros((10, 10)), marker_height=2.0)


def test_predict_maps_keeps_every_channel():
    image = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    maps = segment.predict_maps(lambda tiles: np.concatenate([tiles, 1 - tiles], -1), image, tile_size=64,
                                min_overlap=8, tta=True)
    assert maps.shape == (100, 150, 2)
    np.testing.assert_allclose(maps[..., 0], image, atol=1e-6)
    np.testing.assert_allclose(maps[..., 1], 1 - image, atol=1e-6)


def test_score_image_dice_uses_the_given_mask():
    truth = disk_labels((30, 30), [(15, 15)], 6)
    labels = truth.copy()
    mask = np.zeros(truth.shape, bool)  # e.g. the thresholded probability, specks included
    assert segment.score_image(truth, labels).dice == 1.0
    assert segment.score_image(truth, labels, mask).dice == 0.0


# ---- post-processing settings and tuning ---------------------------------------------------

def test_postprocessing_round_trips_through_its_file(tmp_path):
    settings = segment.Postprocessing(threshold=0.6, min_size=15, marker_height=2.0, contact_threshold=0.3, tta=True)
    settings.save(tmp_path / "postprocessing.json")
    assert segment.Postprocessing.load(tmp_path / "postprocessing.json") == settings
    assert json.loads((tmp_path / "postprocessing.json").read_text())["threshold"] == 0.6


# ---- denoise ---------------------------------------------------------------------------------

def _noisy_nuclei(shape=(192, 256), noise=0.08, blur=0.0, seed=0):
    """Bright disks on a dark background, optionally blurred, with white noise of sigma ``noise``: (image, labels)."""
    labels = disk_labels(shape, [(row, col) for row in range(30, shape[0] - 20, 60)
                                 for col in range(30, shape[1] - 20, 60)], 12)
    image = 0.1 + 0.7 * (labels > 0).astype(np.float32)
    if blur:
        image = ndi.gaussian_filter(image, blur)
    image = image + np.random.default_rng(seed).normal(0.0, noise, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def test_denoise_smooths_only_a_noisy_sharp_image_before_the_model_sees_it():
    settings = segment.Postprocessing(denoise=True, flat_field=False)
    noisy, _ = _noisy_nuclei()
    clean, _ = _noisy_nuclei(noise=0.003)
    blurred, _ = _noisy_nuclei(blur=2.0)  # noisy but soft: not smoothed further
    assert settings.denoises(noisy) and not settings.denoises(clean) and not settings.denoises(blurred)
    assert not segment.Postprocessing(denoise=False).denoises(noisy)
    image, after = settings.prepare(noisy)
    np.testing.assert_array_equal(image, imaging.denoise(noisy))
    assert imaging.noise_sigma(image) < imaging.noise_sigma(noisy) / 2
    assert after == settings.replace(denoise=False)
    assert settings.prepare(clean)[0] is clean and settings.prepare(blurred)[0] is blurred
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    np.testing.assert_allclose(settings.maps(identity, noisy, tile_size=128, min_overlap=16)[..., 0],
                               imaging.denoise(noisy), atol=1e-5)


def test_denoise_is_off_by_default_and_kept_through_the_settings_file_and_the_tuning_grid(tmp_path):
    assert not segment.Postprocessing().denoise  # also for a file written before the setting existed
    segment.Postprocessing(denoise=True).save(tmp_path / "postprocessing.json")
    assert segment.Postprocessing.load(tmp_path / "postprocessing.json").denoise
    assert all(grid.denoise for grid in segment.tuning_grid(has_contacts=True, tta=False, denoise=True))


@pytest.mark.parametrize("field, value", [("threshold", 1.0), ("contact_threshold", 0.0), ("min_size", -1),
                                          ("marker_height", 0.0), ("flat_field", "yes"), ("denoise", 1)])
def test_postprocessing_rejects_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        segment.Postprocessing(**{field: value})


def test_postprocessing_splits_by_contacts_unless_a_marker_height_is_set():
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 5:30], truth[10:30, 30:55] = 1, 2
    maps = np.stack([(truth > 0).astype(np.float32), tiling.contact_map(truth).astype(np.float32)], axis=-1)
    assert segment.Postprocessing(min_size=0).labels(maps).max() == 2
    assert segment.Postprocessing(min_size=0, marker_height=50.0).labels(maps).max() == 1  # no marker that high
    assert segment.Postprocessing(min_size=0).labels(maps[..., :1]).max() == 1


def test_tuning_grid_sizes():
    n = len(segment.TUNE_THRESHOLDS) * len(segment.TUNE_MIN_SIZES)
    heights = len(segment.TUNE_MARKER_HEIGHTS)
    assert len(segment.tuning_grid(has_contacts=True, tta=False)) == n * (len(segment.TUNE_CONTACT_THRESHOLDS) + heights)
    assert len(segment.tuning_grid(has_contacts=False, tta=True)) == n * (1 + heights)
    assert all(settings.tta for settings in segment.tuning_grid(has_contacts=False, tta=True))
    assert {settings.min_size_relative for settings in segment.tuning_grid(has_contacts=True, tta=False)} == {None}
    grid = segment.tuning_grid(has_contacts=False, tta=False, relative_min_sizes=(0.1, 0.2))
    assert len(grid) == len(segment.TUNE_THRESHOLDS) * (len(segment.TUNE_MIN_SIZES) + 2) * (1 + heights)
    assert {settings.min_size_relative for settings in grid} == {None, 0.1, 0.2}


def test_tuning_finds_the_threshold_that_separates_the_nuclei():
    truth = disk_labels((60, 80), [(30, 20), (30, 44)], 10)  # 4 pixels of gap between them
    rows, cols = np.indices(truth.shape)
    # Probability 0.65 in the gap between the disks, 0.9 inside: only thresholds >= 0.65 keep them apart.
    probability = np.where(truth > 0, 0.9, np.where((rows > 20) & (rows < 40) & (cols > 28) & (cols < 36), 0.65, 0.0))
    maps = probability.astype(np.float32)[..., None]
    grid = [segment.Postprocessing(threshold=t) for t in (0.3, 0.5, 0.7)]
    table = segment.tune_postprocessing([maps], [truth], grid)
    assert table[0]["threshold"] == 0.7 and table[0]["mean_map"] == 1.0
    assert [row["mean_map"] for row in table] == sorted((row["mean_map"] for row in table), reverse=True)


def test_make_predictor_batches_a_model():
    calls = []

    class Model:
        def predict_on_batch(self, tiles):
            calls.append(len(tiles))
            return tiles * 2

    tiles = np.ones((19, 4, 4, 1), np.float32)
    assert np.all(segment.make_predictor(Model(), batch_size=8)(tiles) == 2) and calls == [8, 8, 3]
    # Large tiles: fewer a call, so that one call's memory stays bounded; a tile larger than the bound goes alone.
    calls.clear()
    assert np.all(segment.make_predictor(Model(), batch_size=8, max_pixels=40)(tiles[:5]) == 2) and calls == [2, 2, 1]
    calls.clear()
    segment.make_predictor(Model(), batch_size=8, max_pixels=10)(tiles[:2])
    assert calls == [1, 1]


def test_prediction_at_a_scale_returns_maps_of_the_image_size_and_shows_the_model_a_zoomed_image():
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return tiles

    image = np.zeros((100, 60), np.float32)
    image[40:60, 20:40] = 1.0
    maps = segment.predict_maps(model, image, tile_size=64, min_overlap=8, scale=2.0)
    assert maps.shape == (100, 60, 1)
    assert sum(shape[0] for shape in seen) == len(tiling.tile_grid((200, 120), 64, 8))
    assert maps[50, 30, 0] == pytest.approx(1.0) and maps[5, 5, 0] == pytest.approx(0.0)


def test_postprocessing_scale_is_used_for_the_maps():
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    settings = segment.Postprocessing(scale=0.5)
    maps = settings.maps(lambda tiles: tiles, image, tile_size=32, min_overlap=8)
    assert maps.shape == (50, 70, 1) and not np.allclose(maps[..., 0], image)  # shrunk, then enlarged: smoother
    with pytest.raises(ValueError, match="scale must be a positive number"):
        segment.Postprocessing(scale=0.0)


def test_extra_zooms_average_the_maps_predicted_at_each_zoom():
    image = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    settings = segment.Postprocessing(scale=0.71, extra_zooms=[2 ** 0.5, 8.0])  # 0.71 x 8 is beyond AUTO_SCALES

    def model(tiles):  # not linear in the pixels: the mean of the maps is not the map of a mean image
        return tiles ** 2

    assert settings.extra_zooms == (2 ** 0.5, 8.0) and settings.zooms == pytest.approx((0.71, 0.71 * 2 ** 0.5))
    expected = np.mean([segment.predict_maps(model, image, tile_size=32, min_overlap=8, scale=zoom)
                        for zoom in settings.zooms], axis=0)
    maps = settings.maps(model, image, tile_size=32, min_overlap=8)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    alone = settings.replace(extra_zooms=()).maps(model, image, tile_size=32, min_overlap=8)
    assert not np.allclose(maps, alone, atol=1e-3)
    with pytest.raises(ValueError, match="resolved"):
        _ = settings.replace(scale="auto", nucleus_area=100.0).zooms


def test_extra_zooms_round_trip_through_the_file_and_reject_bad_values(tmp_path):
    settings = segment.Postprocessing(scale="auto", nucleus_area=300.0, extra_zooms=(1.5,))
    settings.save(tmp_path / "postprocessing.json")
    assert json.loads((tmp_path / "postprocessing.json").read_text())["extra_zooms"] == [1.5]
    assert segment.Postprocessing.load(tmp_path / "postprocessing.json") == settings
    for bad in ([1.0], [0.0], [-2.0], ["x"], 1.5):
        with pytest.raises(UserError, match="extra_zooms"):
            segment.Postprocessing(extra_zooms=bad)


def test_automatic_tiles_with_tta_give_the_image_back():
    image = np.random.default_rng(5).random((150, 230)).astype(np.float32)
    maps = segment.predict_maps(lambda tiles: tiles, image, tile_size="auto", tta=True)
    np.testing.assert_allclose(maps[..., 0], image, atol=1e-6)


def test_a_relative_minimum_size_keeps_small_nuclei_and_drops_specks_at_any_magnification():
    """Nuclei of 21 pixels and specks of 1: 30 fixed pixels would drop them all, but a speck is never over a
    quarter of the typical area (5 pixels here), so the nuclei stay and the specks go; so does a fifth of the
    typical area, and the same rule holds with everything 4x larger."""
    small = np.zeros((60, 60), np.float32)
    for row, col in [(10, 10), (10, 30), (30, 10), (30, 30), (45, 45)]:
        rr, cc = skimage.draw.disk((row, col), 2.6, shape=small.shape)
        small[rr, cc] = 0.9
    small[55, 5] = small[5, 55] = 0.9  # specks
    fixed = segment.probability_to_labels(small, min_size=30)
    assert fixed.max() == 5 and fixed[55, 5] == 0 and fixed[5, 55] == 0
    assert segment.probability_to_labels(small, min_size=0).max() == 7
    assert segment.typical_area(segment.probability_to_labels(small, min_size=0)) == 21
    kept = segment.probability_to_labels(small, min_size=30, min_size_relative=0.2)
    assert kept.max() == 5 and kept[55, 5] == 0 and kept[5, 55] == 0
    large = np.kron(small, np.ones((4, 4), np.float32))  # the same field at 4x: specks of 16 pixels
    assert segment.probability_to_labels(large, min_size=10).max() == 7
    assert segment.probability_to_labels(large, min_size=10, min_size_relative=0.2).max() == 5
    with pytest.raises(UserError, match="min_size_relative"):
        segment.Postprocessing(min_size_relative=1.5)
    assert segment.typical_area(np.zeros((4, 4), int)) == 0.0


def _disks(shape=(120, 160), radius=6):
    image = np.full(shape, 0.1, np.float32)
    for centre in [(30, 30), (30, 90), (80, 50), (90, 130)]:
        rr, cc = skimage.draw.disk(centre, radius, shape=shape)
        image[rr, cc] = 0.9
    return image


def test_auto_scale_zooms_each_image_toward_the_training_nucleus_area():
    """With the identity as the model, the nuclei found at 1x are the disks: nuclei a quarter of the training
    area are zoomed 2x, four times larger 0.5x, and the zoomed prediction finds the same 4 nuclei."""
    image = _disks()
    area = segment.typical_area(segment.probability_to_labels(image, min_size=0))
    seen = []

    def model(tiles):
        seen.append(len(tiles))
        return tiles

    settings = segment.Postprocessing(scale="auto", nucleus_area=4 * area, min_size=5)
    options = {"tile_size": 64, "min_overlap": 8}

    def zoom(settings, image):
        return settings.resolve(model, image, **options)[0].scale

    assert zoom(settings, image) == 2.0
    assert zoom(settings.replace(nucleus_area=area / 4), image) == 0.5
    assert zoom(settings.replace(nucleus_area=area * 1.2), image) == 1.0
    assert zoom(settings, np.zeros((50, 50), np.float32)) == 1.0  # nothing found: 1x
    fixed = segment.Postprocessing(scale=0.75)
    assert fixed.resolve(model, image, **options) == (fixed, None)
    seen.clear()
    maps = settings.maps(model, image, **options)
    assert maps.shape == (120, 160, 1) and settings.labels(maps).max() == 4
    # a first pass at 1x, then the image at 2x
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8)) + len(tiling.tile_grid((240, 320), 64, 8))
    seen.clear()
    at_one = settings.replace(nucleus_area=area).maps(model, image, **options)  # 1x without TTA: the first pass
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8))
    np.testing.assert_allclose(at_one[..., 0], image, atol=1e-6)
    seen.clear()  # so is segment_image's, which says what zoom it used
    segmented = segment.segment_image(model, image, settings.replace(nucleus_area=area), **options)
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8)) and segmented.scale == 1.0
    assert segmented.labels.max() == 4


def test_nuclei_smaller_than_the_speck_size_are_measured_and_zoomed_in():
    """Nuclei of 21 pixels under a speck size of 30, training nuclei 8 times larger: the first pass keeps them
    (a speck is never over a quarter of the typical area), so the image is zoomed 2.83x (the most
    ``AUTO_SCALES`` allows), and the 5 nuclei are found."""
    small = np.zeros((60, 60), np.float32)
    for row, col in [(10, 10), (10, 30), (30, 10), (30, 30), (45, 45)]:
        rr, cc = skimage.draw.disk((row, col), 2.6, shape=small.shape)
        small[rr, cc] = 0.9
    auto = segment.Postprocessing(scale="auto", nucleus_area=8 * 21.0, min_size=30)
    labels, _, _, scale, _ = segment.segment_image(lambda tiles: tiles, small, auto, tile_size=64, min_overlap=8)
    assert scale == pytest.approx(2**1.5) == max(segment.AUTO_SCALES) and labels.max() == 5


def test_an_image_of_single_bright_pixels_has_no_nuclei_and_is_not_zoomed():
    """Small nuclei are kept, but a pixel or three is a speck at any zoom: under 30 pixels as the model sees them
    at the largest automatic zoom (30 / 8)."""
    specks = np.zeros((80, 80), np.float32)
    specks[10, 10] = specks[40, 60] = specks[70, 20] = 0.9
    specks[20:22, 50] = 0.9  # 2 pixels
    auto = segment.Postprocessing(scale="auto", nucleus_area=365.0, min_size=30)
    labels, _, _, scale, _ = segment.segment_image(lambda tiles: tiles, specks, auto, tile_size=64, min_overlap=8)
    assert scale == 1.0 and labels.max() == 0
    assert segment.probability_to_labels(specks, min_size=0).max() == 4


def test_auto_scale_of_a_large_image_is_one_zoom_for_all_its_blocks():
    image = np.tile(_disks(), (2, 2))  # 240 x 320, in blocks of 100: the zoom comes from the central 100 x 100
    area = segment.typical_area(segment.probability_to_labels(image, min_size=0))
    auto = segment.Postprocessing(scale="auto", nucleus_area=4 * area, min_size=5)
    options = {"tile_size": 64, "min_overlap": 8, "block_size": 100, "margin": 20}
    labels, _, _, scale, _ = segment.segment_image(lambda tiles: tiles, image, auto, **options)
    fixed, _, _, _, _ = segment.segment_image(lambda tiles: tiles, image, auto.replace(scale=2.0), **options)
    np.testing.assert_array_equal(labels, fixed)
    assert labels.max() == 16 and scale == 2.0


def _dim_nuclei_and_specks(level=0.15):
    """Nuclei of ``level`` and two small specks at 1, as the stretch leaves an image with bright debris in it."""
    image = np.zeros((128, 128), np.float32)
    for row, col in [(25, 25), (25, 90), (64, 60), (100, 30), (100, 100)]:
        rr, cc = skimage.draw.disk((row, col), 9, shape=image.shape)
        image[rr, cc] = level
    for row, col in [(60, 15), (15, 60)]:
        rr, cc = skimage.draw.disk((row, col), 3, shape=image.shape)
        image[rr, cc] = 1.0
    return image


def test_auto_gain_brightens_nuclei_that_bright_specks_left_dim():
    image = _dim_nuclei_and_specks()
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    auto = segment.Postprocessing(scale="auto", nucleus_area=254.0, min_size=5, threshold=0.1, auto_gain=True)
    resolved, _ = auto.resolve(identity, image, tile_size=64, min_overlap=8)
    # the background is 0: the gain would bring 0.15 to 0.61, but is at most MAX_GAIN
    assert resolved.gain == segment.MAX_GAIN and resolved.gain_base == 0.0 and not resolved.auto_gain
    maps = auto.maps(identity, image, tile_size=64, min_overlap=8)
    assert maps[64, 60, 0] == pytest.approx(0.15 * segment.MAX_GAIN, abs=1e-3) and maps[60, 15, 0] == 1.0
    off = auto.replace(auto_gain=False)
    assert off.resolve(identity, image, tile_size=64, min_overlap=8)[0].gain == 1.0
    np.testing.assert_allclose(off.maps(identity, image, tile_size=64, min_overlap=8)[..., 0], image, atol=1e-5)
    bright = _dim_nuclei_and_specks(level=0.5)  # nuclei of a usual level: left as they are
    assert auto.resolve(identity, bright, tile_size=64, min_overlap=8)[0].gain == 1.0
    with pytest.raises(UserError, match="gain"):
        segment.Postprocessing(gain=0.5)


def test_auto_gain_stretches_about_the_background_and_gives_up_where_brightening_makes_new_nuclei():
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    auto = segment.Postprocessing(scale="auto", nucleus_area=254.0, min_size=5, threshold=0.15, auto_gain=True)
    lifted = 0.1 + _dim_nuclei_and_specks(level=0.1)  # a background of 0.1, nuclei of 0.2 (the specks clip at 1)
    resolved, _ = auto.resolve(identity, np.minimum(lifted, 1.0), tile_size=64, min_overlap=8)
    assert resolved.gain_base == pytest.approx(0.1) and resolved.gain == pytest.approx(min((0.61 - 0.1) / 0.1, 4.0))
    assert segment.brighten(np.float32([0.1, 0.2, 0.9]), 4.0, 0.1).tolist() == pytest.approx([0.1, 0.5, 1.0])
    faint = _dim_nuclei_and_specks()  # and 30 faint blobs that brightening would lift over the threshold
    rng = np.random.default_rng(0)
    for row, col in rng.integers(8, 120, (30, 2)):
        rr, cc = skimage.draw.disk((row, col), 3, shape=faint.shape)
        faint[rr, cc] = np.maximum(faint[rr, cc], 0.06)
    loose = auto.replace(threshold=0.1)
    assert loose.resolve(identity, faint, tile_size=64, min_overlap=8)[0].gain == 1.0


def test_auto_scale_needs_the_training_nucleus_area():
    with pytest.raises(UserError, match="nucleus_area"):
        segment.Postprocessing(scale="auto")
    with pytest.raises(UserError, match="scale must be a positive number or 'auto'"):
        segment.Postprocessing(scale="large")
    with pytest.raises(UserError, match="nucleus_area must be positive"):
        segment.Postprocessing(nucleus_area=0.0)
    settings = segment.Postprocessing(scale="auto", nucleus_area=300.0)
    assert segment.Postprocessing.from_dict(json.loads(json.dumps(settings.__dict__))) == settings


@pytest.mark.parametrize("tta, extra", [(False, ()), (True, ()), (False, (2 ** 0.5,))])
@pytest.mark.parametrize("zoom_area", [1.0, 4.0])  # 4x the nuclei's area: zoomed 2x
def test_segment_image_reports_the_tiles_it_will_predict_at_the_zoom_it_chose(tta, extra, zoom_area):
    image = np.tile(_disks(), (2, 2))  # 240 x 320
    area = segment.typical_area(segment.probability_to_labels(image, min_size=0))
    for block_size in (100, 2048):  # in blocks, and in one piece
        auto = segment.Postprocessing(scale="auto", nucleus_area=zoom_area * area, min_size=5, tta=tta,
                                      extra_zooms=extra)
        totals, counted = [], []
        _, _, _, scale, _ = segment.segment_image(lambda tiles: tiles, image, auto, tile_size=64, min_overlap=8,
                                               block_size=block_size, margin=20, progress=counted.append,
                                               total=totals.append)
        assert scale == (2.0 if zoom_area == 4.0 else 1.0)
        assert len(totals) == 1 and totals[0] == sum(counted) > 0
        assert totals[0] == segment.tile_count(image.shape, auto.replace(scale=scale), 64, 8, block_size, 20)


def test_auto_scale_zooms_no_blurred_image_in_but_still_zooms_it_out():
    """Zooming a blurred image in enlarges its blur: 'auto' keeps it at 1x, where the same nuclei, sharp, are
    zoomed 2x; a zoom out is not held back by blur."""
    sharp = _disks()
    blurred = ndi.gaussian_filter(sharp, 3.0)
    assert imaging.edge_sharpness(blurred) < segment.MIN_ZOOM_IN_SHARPNESS < imaging.edge_sharpness(sharp)
    options = {"tile_size": 64, "min_overlap": 8}

    def zoom(image, times):  # toward nuclei ``times`` the area of the image's own
        area = segment.typical_area(segment.probability_to_labels(image, min_size=0))
        settings = segment.Postprocessing(scale="auto", nucleus_area=times * area, min_size=5)
        return settings.resolve(lambda tiles: tiles, image, **options)[0].scale

    assert zoom(sharp, 4) == 2.0 and zoom(blurred, 4) == 1.0
    assert zoom(blurred, 1 / 4) == 0.5
    area = segment.typical_area(segment.probability_to_labels(blurred, min_size=0))
    labels, _, _, scale, _ = segment.segment_image(lambda tiles: tiles, blurred,
                                                segment.Postprocessing(scale="auto", nucleus_area=4 * area,
                                                                       min_size=5), **options)
    assert scale == 1.0 and labels.max() == 4


def test_the_second_zoom_zooms_no_blurred_image_in_either():
    """The rule of 'auto' holds for ``extra_zooms`` too: a blurred image is predicted at no zoom above 1x, where a
    sharp one gets both zooms; zooms out stay."""
    sharp = _disks()
    blurred = ndi.gaussian_filter(sharp, 3.0)

    def zooms(image, times):
        area = segment.typical_area(segment.probability_to_labels(image, min_size=0))
        settings = segment.Postprocessing(scale="auto", nucleus_area=times * area, min_size=5,
                                          extra_zooms=(2 ** 0.5, 0.5))
        return settings.resolve(lambda tiles: tiles, image, tile_size=64, min_overlap=8)[0].zooms

    assert zooms(sharp, 1) == pytest.approx((1.0, 2 ** 0.5, 0.5))
    assert zooms(blurred, 1) == pytest.approx((1.0, 0.5))
    assert zooms(blurred, 4) == pytest.approx((1.0, 0.5))  # 2x chosen, 1x kept
    assert zooms(blurred, 1 / 2) == pytest.approx((2 ** -0.5, 1.0, 2 ** -1.5))  # 0.71 x 1.41 is 1x: kept
    assert zooms(sharp, 1 / 2) == pytest.approx((2 ** -0.5, 1.0, 2 ** -1.5))


# ---- flat field ------------------------------------------------------------------------------

def _ramped_nuclei(shape, slope=0.4):
    """Bright disks on a background that rises from 0.05 at the left edge by ``slope`` to the right edge, [0, 1]."""
    rows, cols = shape
    centres = [(row, col) for row in range(24, rows - 12, 48) for col in range(24, cols - 12, 48)]
    labels = disk_labels(shape, centres, 9)
    image = 0.05 + slope * np.linspace(0.0, 1.0, cols)[None, :] + 0.5 * (labels > 0)
    return (image / image.max()).astype(np.float32), labels


def test_flat_field_flattens_only_an_uneven_background_before_the_model_sees_it():
    ramped, labels = _ramped_nuclei((192, 256), slope=0.6)  # the right edge's background above the nuclei threshold
    even, _ = _ramped_nuclei((192, 256), slope=0.0)
    settings = segment.Postprocessing(flat_field=True)
    image, after = settings.prepare(even)
    assert image is even and not after.flat_field  # evenly lit: left exactly as it is, and not measured again
    image, after = settings.prepare(ramped)
    np.testing.assert_array_equal(image, imaging.flatten_background(ramped))
    assert after == settings.replace(flat_field=False)
    off = segment.Postprocessing(flat_field=False)
    assert off.prepare(ramped)[0] is ramped and off.prepare(ramped)[1] is off
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    np.testing.assert_allclose(settings.maps(identity, ramped, tile_size=128, min_overlap=16)[..., 0],
                               imaging.flatten_background(ramped), atol=1e-5)
    # with the ramp flattened, thresholding finds the nuclei and nothing of the bright side's background
    found = settings.labels(settings.maps(identity, ramped, tile_size=128, min_overlap=16))
    assert found.max() == labels.max()
    assert off.labels(off.maps(identity, ramped, tile_size=128, min_overlap=16)).max() < labels.max()


def test_segment_image_flattens_a_large_image_as_a_whole_not_block_by_block():
    ramped, _ = _ramped_nuclei((300, 420))
    settings = segment.Postprocessing(flat_field=True)
    result = segment.segment_image(lambda tiles: tiles, ramped, settings, tile_size=128, min_overlap=16,
                                   block_size=160, margin=32)
    np.testing.assert_allclose(result.probability.astype(np.float32), imaging.flatten_background(ramped), atol=2e-3)


def test_flat_field_is_kept_through_the_settings_file_and_the_tuning_grid(tmp_path):
    assert segment.Postprocessing().flat_field  # on by default, also for a file written before the setting existed
    settings = segment.Postprocessing(flat_field=False)
    settings.save(tmp_path / "postprocessing.json")
    assert not segment.Postprocessing.load(tmp_path / "postprocessing.json").flat_field
    assert not any(grid.flat_field for grid in segment.tuning_grid(has_contacts=True, tta=False, flat_field=False))

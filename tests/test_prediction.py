"""prediction.py: tiled prediction with test-time augmentation, the zooms an image is predicted at."""

from __future__ import annotations

import numpy as np
import pytest

from nucleunet import postprocessing, prediction, tiling


def test_identity_model_gives_the_image_back_for_many_sizes():
    rng = np.random.default_rng(0)
    for shape in [(64, 80), (256, 256), (257, 300), (520, 696), (31, 500)]:
        image = rng.random(shape).astype(np.float32)
        rebuilt = prediction.predict_maps(lambda tiles: tiles, image, tile_size=128, min_overlap=16)[..., 0]
        np.testing.assert_allclose(rebuilt, image, atol=1e-6, err_msg=str(shape))


def test_tiles_reach_the_model_in_batches_of_the_right_shape():
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return np.full_like(tiles, 0.25)

    probability = prediction.predict_maps(model, np.zeros((300, 600), np.float32), tile_size=256)[..., 0]
    assert seen == [(6, 256, 256, 1)]
    assert probability.shape == (300, 600) and np.all(probability == 0.25)


def test_a_model_returning_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="the model returned shape"):
        prediction.predict_maps(lambda tiles: tiles[:, :10], np.zeros((64, 64), np.float32), tile_size=64)


def test_make_predictor_batches_a_model():
    calls = []

    class Model:
        def predict_on_batch(self, tiles):
            calls.append(len(tiles))
            return tiles * 2

    tiles = np.ones((19, 4, 4, 1), np.float32)
    assert np.all(prediction.make_predictor(Model(), batch_size=8)(tiles) == 2) and calls == [8, 8, 3]
    # Large tiles: fewer a call, so that one call's memory stays bounded; a tile larger than the bound goes alone.
    calls.clear()
    assert np.all(prediction.make_predictor(Model(), batch_size=8, max_pixels=40)(tiles[:5]) == 2)
    assert calls == [2, 2, 1]
    calls.clear()
    prediction.make_predictor(Model(), batch_size=8, max_pixels=10)(tiles[:2])
    assert calls == [1, 1]


def test_predict_maps_keeps_every_channel():
    image = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    maps = prediction.predict_maps(lambda tiles: np.concatenate([tiles, 1 - tiles], -1), image, tile_size=64,
                                min_overlap=8, tta=True)
    assert maps.shape == (100, 150, 2)
    np.testing.assert_allclose(maps[..., 0], image, atol=1e-6)
    np.testing.assert_allclose(maps[..., 1], 1 - image, atol=1e-6)


def test_automatic_tiles_with_tta_give_the_image_back():
    image = np.random.default_rng(5).random((150, 230)).astype(np.float32)
    maps = prediction.predict_maps(lambda tiles: tiles, image, tile_size="auto", tta=True)
    np.testing.assert_allclose(maps[..., 0], image, atol=1e-6)


# ---- test-time augmentation ----------------------------------------------------------------

@pytest.mark.parametrize("k", range(8))
def test_dihedral_tiles_inverse_undoes_each_transform(k):
    tiles = np.random.default_rng(k).random((2, 8, 8, 1))
    back = prediction.dihedral_tiles(prediction.dihedral_tiles(tiles, k), k, inverse=True)
    np.testing.assert_array_equal(back, tiles)


def test_tta_with_an_identity_model_gives_the_image_back():
    image = np.random.default_rng(0).random((150, 170)).astype(np.float32)
    rebuilt = prediction.predict_maps(lambda t: t, image, tile_size=64, min_overlap=8, tta=True)[..., 0]
    np.testing.assert_allclose(rebuilt, image, atol=1e-6)


def test_tta_averages_a_position_dependent_model_over_the_eight_views():
    def left_column_model(tiles):  # 1 in each tile's first column, wherever that lands
        out = np.zeros_like(tiles)
        out[:, :, 0] = 1
        return out

    plain = prediction.predict_maps(left_column_model, np.zeros((64, 64), np.float32), tile_size=64)[..., 0]
    averaged = prediction.predict_maps(left_column_model, np.zeros((64, 64), np.float32), tile_size=64,
                                       tta=True)[..., 0]
    assert plain[:, 0].tolist() == [1.0] * 64 and plain[:, 1:].max() == 0
    # Each of the 4 border lines gets the column in 2 of the 8 views.
    assert averaged[32, 0] == pytest.approx(0.25) and averaged[0, 32] == pytest.approx(0.25)
    assert averaged[32, 32] == 0.0


def test_prediction_at_a_scale_returns_maps_of_the_image_size_and_shows_the_model_a_zoomed_image():
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return tiles

    image = np.zeros((100, 60), np.float32)
    image[40:60, 20:40] = 1.0
    maps = prediction.predict_maps(model, image, tile_size=64, min_overlap=8, scale=2.0)
    assert maps.shape == (100, 60, 1)
    assert sum(shape[0] for shape in seen) == len(tiling.tile_grid((200, 120), 64, 8))
    assert maps[50, 30, 0] == pytest.approx(1.0) and maps[5, 5, 0] == pytest.approx(0.0)


def test_postprocessing_scale_is_used_for_the_maps():
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    settings = postprocessing.Postprocessing(scale=0.5)
    maps = prediction.image_maps(lambda tiles: tiles, image, settings, tile_size=32, min_overlap=8)
    assert maps.shape == (50, 70, 1) and not np.allclose(maps[..., 0], image)  # shrunk, then enlarged: smoother
    with pytest.raises(ValueError, match="scale must be a number in"):
        postprocessing.Postprocessing(scale=0.0)


def test_extra_zooms_average_the_maps_predicted_at_each_zoom():
    image = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    settings = postprocessing.Postprocessing(scale=0.71, extra_zooms=[2 ** 0.5, 4.0])  # 0.71 x 4 is beyond AUTO_SCALES

    def model(tiles):  # not linear in the pixels: the mean of the maps is not the map of a mean image
        return tiles ** 2

    assert settings.extra_zooms == (2 ** 0.5, 4.0) and settings.zooms == pytest.approx((0.71, 0.71 * 2 ** 0.5))
    expected = np.mean([prediction.predict_maps(model, image, tile_size=32, min_overlap=8, scale=zoom)
                        for zoom in settings.zooms], axis=0)
    maps = prediction.image_maps(model, image, settings, tile_size=32, min_overlap=8)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    alone = prediction.image_maps(model, image, settings.replace(extra_zooms=()), tile_size=32, min_overlap=8)
    assert not np.allclose(maps, alone, atol=1e-3)
    with pytest.raises(ValueError, match="resolved"):
        _ = settings.replace(scale="auto", nucleus_area=100.0).zooms

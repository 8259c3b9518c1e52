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

    tiles = np.random.default_rng(0).random((19, 4, 4, 1)).astype(np.float32)  # not blank: each tile predicted
    assert np.array_equal(prediction.make_predictor(Model(), batch_size=8)(tiles), tiles * 2) and calls == [8, 8, 3]
    # Large tiles: fewer a call, so that one call's memory stays bounded; a tile larger than the bound goes alone.
    calls.clear()
    assert np.array_equal(prediction.make_predictor(Model(), batch_size=8, max_pixels=40)(tiles[:5]), tiles[:5] * 2)
    assert calls == [2, 2, 1]
    calls.clear()
    prediction.make_predictor(Model(), batch_size=8, max_pixels=10)(tiles[:2])
    assert calls == [1, 1]
    # one call's output is returned as the model gave it, not copied
    given = np.zeros((3, 4, 4, 1), np.float32)

    class Same:
        def predict_on_batch(self, tiles):
            return given

    assert prediction.make_predictor(Same(), batch_size=8)(tiles[:3]) is given


def test_auto_tiles_and_model_calls_stay_within_their_memory_bounds():
    # tile_size 'auto': the fewest tiles of at most AUTO_TILE_MAX a side, and at most MAX_BATCH_PIXELS a call (a
    # larger tile alone); 8 trained tiles of 256 x 256 still fill one call. One call on a large tile keeps more
    # activations than a 10,000 x 10,000 image may (docs/results/price/decision_rule.txt).
    calls = []

    class Model:
        def predict_on_batch(self, tiles):
            calls.append(tiles.shape)
            return tiles

    predictor = prediction.make_predictor(Model())
    image = np.random.default_rng(0).random((1000, 1600)).astype(np.float32)
    rebuilt = prediction.predict_maps(predictor, image, tile_size="auto", tta=4)[..., 0]
    np.testing.assert_allclose(rebuilt, image, atol=1e-6)
    assert {shape[1:3] for shape in calls} == {(1024, 832)}  # 1 x 2 tiles, not one of 1000 x 1600
    assert all(shape[0] * shape[1] * shape[2] <= prediction.MAX_BATCH_PIXELS or shape[0] == 1 for shape in calls)
    assert max(side for shape in calls for side in shape[1:3]) <= prediction.AUTO_TILE_MAX
    calls.clear()
    prediction.predict_maps(predictor, np.zeros((500, 500), np.float32), tile_size="auto")
    assert calls == [(1, 512, 512, 1)]  # an ordinary image: one tile, about its own size
    calls.clear()
    predictor(np.random.default_rng(1).random((20, 256, 256, 1)).astype(np.float32))
    assert [shape[0] for shape in calls] == [8, 8, 4]


def test_blank_tiles_are_predicted_once_per_value_and_get_that_output():
    calls = []

    class Model:  # an output that depends on the position in the tile and on the value
        def predict_on_batch(self, tiles):
            calls.append(len(tiles))
            ramp = np.linspace(0, 1, tiles.shape[2], dtype=np.float32)[None, None, :, None]
            return np.concatenate([tiles * ramp, tiles + ramp], axis=-1)

    rng = np.random.default_rng(2)
    tiles = rng.random((12, 64, 64, 1)).astype(np.float32)
    tiles[[1, 4, 7]] = 0.0  # an empty part of a slide
    tiles[[2, 9]] = 0.5
    predicted = prediction.make_predictor(Model(), batch_size=4)(tiles)
    assert calls == [2, 4, 3]  # the two blank values once each, then the 7 other tiles in batches of 4
    expected = np.concatenate([Model().predict_on_batch(tiles[index:index + 1]) for index in range(len(tiles))])
    np.testing.assert_array_equal(predicted, expected)
    calls.clear()
    blank = prediction.make_predictor(Model())(np.zeros((5, 32, 32, 1), np.float32))
    assert calls == [1]
    np.testing.assert_array_equal(blank, np.repeat(Model().predict_on_batch(np.zeros((1, 32, 32, 1))), 5, axis=0))


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


def _position_model(tiles):
    """A model whose output depends on where a pixel lies in its tile and on the tile's content: each view of
    test-time augmentation then gives other maps, so averaging the wrong views shows."""
    rows = np.linspace(0.0, 1.0, tiles.shape[1], dtype=np.float32)[None, :, None, None]
    cols = np.linspace(0.0, 0.5, tiles.shape[2], dtype=np.float32)[None, None, :, None]
    return np.concatenate([0.5 * tiles + 0.3 * rows + 0.2 * cols, tiles * cols], axis=-1)


def _views_one_by_one(image, views, **options):
    """The reference: each view's tiles through the model alone, restored and averaged, then stitched."""
    tiles, corners = tiling.make_tiles(image, options["tile_size"], options["min_overlap"])
    restored = [prediction.dihedral_tiles(_position_model(np.ascontiguousarray(
        prediction.dihedral_tiles(tiles[..., None], k))), k, inverse=True) for k in views]
    return tiling.stitch_tiles(np.mean(restored, axis=0), corners, image.shape, options["tile_size"])


@pytest.mark.parametrize("count", [2, 4, 8])
def test_tta_with_fewer_views_averages_exactly_those_views(count):
    image = np.random.default_rng(count).random((150, 210)).astype(np.float32)
    options = {"tile_size": 64, "min_overlap": 8}
    maps = prediction.predict_maps(_position_model, image, tta=count, **options)
    expected = _views_one_by_one(image, prediction.TTA_VIEWS[count], **options)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert prediction.TTA_VIEWS[count][0] == 0 and len(set(prediction.TTA_VIEWS[count])) == count
    # each number of views gives other maps (the model is not symmetric), and True is 8
    assert not np.allclose(maps, prediction.predict_maps(_position_model, image, tta=False, **options), atol=1e-3)
    if count == 8:
        np.testing.assert_array_equal(maps, prediction.predict_maps(_position_model, image, tta=True, **options))
    with pytest.raises(prediction.UserError, match="views"):
        prediction.predict_maps(_position_model, image, tta=3, **options)


def test_the_views_of_a_small_image_reach_the_model_together_and_a_large_images_in_turn(monkeypatch):
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return _position_model(tiles)

    small = np.random.default_rng(0).random((100, 120)).astype(np.float32)
    prediction.predict_maps(model, small, tile_size=64, min_overlap=8, tta=8)
    assert seen == [(8 * 4, 64, 64, 1)]  # 4 tiles, 8 views: one call, so the model's batches are full
    seen.clear()
    monkeypatch.setattr(prediction, "MAX_VIEW_PIXELS", 3 * 4 * 64 * 64)  # room for 3 views' tiles at a time
    prediction.predict_maps(model, small, tile_size=64, min_overlap=8, tta=8)
    assert seen == [(12, 64, 64, 1), (12, 64, 64, 1), (8, 64, 64, 1)]
    # rectangular tiles: a quarter turn transposes them, so those views go apart; the maps are still the average
    monkeypatch.undo()
    seen.clear()
    image = np.random.default_rng(1).random((90, 200)).astype(np.float32)
    maps = prediction.predict_maps(model, image, tile_size=(64, 128), min_overlap=8, tta=4)
    tiles = len(tiling.tile_grid(image.shape, (64, 128), 8))
    assert seen == [(4 * tiles, 64, 128, 1)]  # the 4 mirrorings keep the tile's shape
    seen.clear()
    turned = prediction.predict_maps(model, image, tile_size=(64, 128), min_overlap=8, tta=8)
    assert seen == [(4 * tiles, 64, 128, 1), (4 * tiles, 128, 64, 1)]
    np.testing.assert_allclose(turned, _views_one_by_one(image, range(8), tile_size=(64, 128), min_overlap=8),
                               atol=1e-5)
    assert maps.shape == (90, 200, 2)


def test_known_maps_of_the_image_as_it_is_are_reused_not_predicted_again():
    image = np.random.default_rng(5).random((150, 210)).astype(np.float32)
    options = {"tile_size": 64, "min_overlap": 8}
    calls = []

    def model(tiles):
        calls.append(len(tiles))
        return _position_model(tiles)

    first = prediction.predict_maps(model, image, **options)
    calls.clear()
    for count in (2, 4, 8):
        reused = prediction.predict_maps(model, image, tta=count, identity=first, **options)
        np.testing.assert_allclose(reused, prediction.predict_maps(_position_model, image, tta=count, **options),
                                   atol=1e-5)
    assert sum(calls) == (1 + 3 + 7) * len(tiling.tile_grid(image.shape, 64, 8))  # all views but the image itself
    assert prediction.predict_maps(model, image, tta=False, identity=first, **options) is first
    with pytest.raises(ValueError, match="scale 1"):
        prediction.predict_maps(model, image, tta=8, identity=first, scale=2.0, **options)


def _clipped_model(tiles: np.ndarray) -> np.ndarray:
    """``_position_model`` clipped to [0, 1], as probabilities are (the automatic zoom thresholds them)."""
    return np.clip(_position_model(tiles), 0, 1)


def _counted(model, calls: list):
    """``model``, appending the number of tiles of each call to ``calls``."""
    def counted(tiles):
        calls.append(len(tiles))
        return model(tiles)

    return counted


def _three_nuclei() -> np.ndarray:
    """A 160 x 200 image of three round nuclei of 314 pixels (radius 10) at 0.9 on a black background."""
    image = np.zeros((160, 200), np.float32)
    rows, cols = np.mgrid[:160, :200]
    for row, col in ((40, 50), (100, 140), (120, 40)):
        image[(rows - row) ** 2 + (cols - col) ** 2 < 100] = 0.9
    return image


def test_the_automatic_zooms_first_pass_is_the_1x_view_of_the_prediction():
    # nuclei of the training size: the automatic zoom stays at 1x and its first pass is reused as the 1x view
    image = _three_nuclei()
    settings = postprocessing.Postprocessing(scale="auto", nucleus_area=314.0, tta=True, tta_views=4,
                                             flat_field=False)
    options = {"tile_size": 64, "min_overlap": 8}
    calls = []
    model = _counted(_clipped_model, calls)

    maps = prediction.image_maps(model, image, settings, **options)
    tiles = len(tiling.tile_grid(image.shape, 64, 8))
    assert sum(calls) == 4 * tiles  # the first pass (1 view) and 3 more views, not 1 + 4
    expected = prediction.predict_maps(_clipped_model, image, tta=4, **options)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    progress = []
    prediction.segment_image(model, image, settings, progress=progress.append, **options)
    assert sum(progress) == 4 * tiles  # the progress bar counts every view of every tile, the first pass as one


def test_a_second_zoom_at_1x_reuses_the_automatic_zooms_first_pass():
    # nuclei twice the training size: the automatic zoom is 0.71 and the second zoom 0.71 x 1.41, which is 1 (not
    # 1.0000000000000002: then the image was resized by a factor of one and predicted again)
    image = _three_nuclei()
    settings = postprocessing.Postprocessing(scale="auto", nucleus_area=157.0, tta=True, tta_views=4,
                                             extra_zooms=(2**0.5,), tta_extra_zooms=False, flat_field=False)
    options = {"tile_size": 64, "min_overlap": 8}
    calls = []
    model = _counted(_clipped_model, calls)

    maps = prediction.image_maps(model, image, settings, **options)
    zoom = 2**-0.5
    shrunk = tuple(int(round(side * zoom)) for side in image.shape)
    assert sum(calls) == len(tiling.tile_grid(image.shape, 64, 8)) + 4 * len(tiling.tile_grid(shrunk, 64, 8))
    expected = (prediction.predict_maps(_clipped_model, image, tta=4, scale=zoom, **options)
                + prediction.predict_maps(_clipped_model, image, **options)) / 2
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_the_extra_zooms_take_the_views_or_the_image_alone():
    image = _three_nuclei()
    options = {"tile_size": 64, "min_overlap": 8}
    both = postprocessing.Postprocessing(tta=True, tta_views=4, extra_zooms=(2.0,), flat_field=False)
    first_only = both.replace(tta_extra_zooms=False)
    assert both.zoom_views == (4, 4) and first_only.zoom_views == (4, 1)
    assert both.replace(tta=False).zoom_views == (1, 1) and first_only.replace(extra_zooms=()).zoom_views == (4,)

    calls = []
    model = _counted(_clipped_model, calls)
    at_1x = len(tiling.tile_grid(image.shape, 64, 8))
    at_2x = len(tiling.tile_grid((320, 400), 64, 8))
    for settings, views_at_2x in ((both, 4), (first_only, 1)):
        calls.clear()
        maps = prediction.image_maps(model, image, settings, **options)
        assert sum(calls) == 4 * at_1x + views_at_2x * at_2x
        expected = (prediction.predict_maps(_clipped_model, image, tta=4, **options)
                    + prediction.predict_maps(_clipped_model, image, tta=views_at_2x, scale=2.0, **options)) / 2
        np.testing.assert_allclose(maps, expected, atol=1e-5)
        assert prediction.tile_count(image.shape, settings, **options) == 4 * at_1x + views_at_2x * at_2x
    with pytest.raises(postprocessing.UserError, match="tta_extra_zooms"):
        postprocessing.Postprocessing(tta_extra_zooms="no")


def test_tta_views_is_a_setting_with_bounds():
    assert postprocessing.Postprocessing().tta_views == 8
    # the setting's numbers are the views prediction knows (1: none but the image itself)
    assert set(postprocessing.TTA_VIEW_COUNTS) | {1} == set(prediction.TTA_VIEWS)
    assert postprocessing.Postprocessing(tta=True, tta_views=2).views == 2
    assert postprocessing.Postprocessing(tta=False, tta_views=2).views == 1
    for bad in (3, 1, 16, True, "4"):
        with pytest.raises(postprocessing.UserError, match="tta_views"):
            postprocessing.Postprocessing(tta_views=bad)


def test_zoomed_maps_come_back_to_the_image_size_as_skimage_resizes_them():
    import skimage.transform

    image = np.random.default_rng(3).random((100, 120)).astype(np.float32)

    def model(tiles):
        return np.concatenate([tiles, 1 - tiles ** 2], axis=-1)

    options = {"tile_size": 64, "min_overlap": 8}
    maps = prediction.predict_maps(model, image, scale=1.5, **options)
    zoomed = skimage.transform.resize(image, (150, 180), order=1, preserve_range=True).astype(np.float32)
    at_zoom = prediction.predict_maps(model, zoomed, **options)
    expected = skimage.transform.resize(at_zoom, (100, 120, 2), order=1, preserve_range=True)
    assert maps.shape == (100, 120, 2) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=1e-6)

"""tiling.py: tiles that cover an image and blend back into it, training targets."""

from __future__ import annotations

import numpy as np
import pytest

import dsb
from nucleunet import tiling

# ---- tiles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [256, 257, 300, 520, 696, 1388])
def test_tile_starts_cover_with_overlap_and_end_flush(length):
    starts = tiling.tile_starts(length, 256, 32)
    assert starts[0] == 0 and starts[-1] == length - 256
    assert np.all(np.diff(starts) <= 256 - 32)


def test_tile_starts_reject_overlap_as_large_as_a_tile():
    with pytest.raises(ValueError, match="min_overlap"):
        tiling.tile_starts(500, 256, 256)


def test_tiles_round_trip_over_random_shapes():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(3, 200, 2))
        tile_size = int(rng.choice([16, 32, 64]))
        overlap = int(rng.integers(0, tile_size // 2))
        image = rng.random(shape).astype(np.float32)
        tiles, corners = tiling.make_tiles(image, tile_size, overlap)
        assert tiles.shape[1:] == (tile_size, tile_size)
        rebuilt = tiling.stitch_tiles(tiles, corners, shape, tile_size)
        np.testing.assert_allclose(rebuilt, image, rtol=0, atol=1e-6, err_msg=f"shape {shape}, tile {tile_size}")


def test_tiles_round_trip_at_full_size_with_channels():
    image = np.random.default_rng(1).random((520, 696, 2)).astype(np.float32)
    tiles, corners = tiling.make_tiles(image)
    assert tiles.shape == (len(corners), 256, 256, 2) and len(corners) == 9
    np.testing.assert_allclose(tiling.stitch_tiles(tiles, corners, image.shape[:2]), image, atol=1e-6)


def test_small_image_is_reflect_padded_into_one_tile():
    image = np.arange(64 * 80, dtype=np.float32).reshape(64, 80)
    tiles, corners = tiling.make_tiles(image)
    assert corners == [(0, 0)] and tiles.shape == (1, 256, 256)
    np.testing.assert_array_equal(tiles[0, :64, :80], image)
    np.testing.assert_array_equal(tiles[0, 64, :80], image[62])  # reflect, not edge


def test_stitch_blends_disagreeing_tiles_by_weight():
    tiles = np.stack([np.zeros((32, 32)), np.ones((32, 32))]).astype(np.float32)
    corners = [(0, 0), (0, 16)]
    blended = tiling.stitch_tiles(tiles, corners, (32, 48), 32)
    assert blended[0, 0] == 0.0 and blended[0, 47] == 1.0
    assert np.all(np.diff(blended[10, 16:32]) >= 0)  # a ramp across the overlap


def test_tile_weights_are_never_zero():
    weights = tiling.tile_weights(256)
    assert weights.min() > 0 and weights.max() == 1.0


def test_tiles_for_records_are_compact(synthetic_folder):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    images, masks, owner = tiling.tiles_for_records(records, 64, 16)
    assert images.dtype == np.float16 and masks.dtype == np.uint8
    assert len(images) == len(masks) == len(owner)
    assert set(np.unique(masks)) <= {0, 1}
    expected = sum(len(tiling.tile_grid(r.image.shape, 64, 16)) for r in records)
    assert len(images) == expected


# ---- contact targets ---------------------------------------------------------------------

def test_contact_map_marks_only_where_nuclei_touch():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 10:18] = 2    # touches nucleus 1 along column 10
    labels[5:15, 25:29] = 3    # 7 pixels away from nucleus 2: no contact
    contact = tiling.contact_map(labels, radius=2)
    assert contact[5:15, 8:12].all() and not contact[:, :8].any()
    assert not contact[:, 12:].any()
    assert not contact[:3].any() and not contact[17:].any()  # background within reach of both counts
    gap = labels.copy()
    gap[:, 10] = 0              # a one-pixel gap still counts, the gap pixels too
    assert tiling.contact_map(gap, radius=2)[5:15, 10].all()
    with pytest.raises(ValueError, match="radius"):
        tiling.contact_map(labels, radius=0)


def test_contact_tiles_store_nuclei_and_contacts_as_bits():
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30], labels[10:30, 30:50] = 1, 2
    record = dsb.ImageRecord("a", np.zeros((64, 64), np.float32), labels)
    _, plain, _ = tiling.tiles_for_records([record], 64, 8)
    _, both, _ = tiling.tiles_for_records([record], 64, 8, contacts=True)
    assert set(np.unique(plain)) == {0, 1}
    np.testing.assert_array_equal(both & 1, plain)
    np.testing.assert_array_equal((both[0] >> 1) & 1, tiling.contact_map(labels))
    _, wide, _ = tiling.tiles_for_records([record], 64, 8, contacts=True, contact_radius=4)
    np.testing.assert_array_equal((wide[0] >> 1) & 1, tiling.contact_map(labels, 4))
    assert ((wide[0] >> 1) & 1).sum() > ((both[0] >> 1) & 1).sum()


def test_rectangular_tiles_round_trip():
    rng = np.random.default_rng(3)
    for shape, tile in [((100, 300), (64, 96)), ((37, 50), (64, 32)), ((300, 41), (96, 64))]:
        image = rng.random(shape).astype(np.float32)
        tiles, corners = tiling.make_tiles(image, tile, 16)
        assert tiles.shape[1:] == tile
        np.testing.assert_allclose(tiling.stitch_tiles(tiles, corners, shape, tile), image, atol=1e-6)


@pytest.mark.parametrize("shape", [(256, 320), (1040, 1388), (2000, 2000), (10, 10), (5000, 300)])
def test_inference_tiles_cover_the_image_with_few_tiles(shape):
    rows, cols = tiling.inference_tile_size(shape, 1024, 32)
    assert rows % 32 == 0 and cols % 32 == 0 and rows <= 1024 and cols <= 1024
    corners = tiling.tile_grid(shape, (rows, cols), 32)
    covered = len(corners) * rows * cols
    assert covered < 1.6 * max(shape[0], 64) * max(shape[1], 64)  # little padding and overlap


def test_one_tile_over_the_whole_image_comes_back_as_it_was_predicted():
    rng = np.random.default_rng(0)
    predicted = rng.random((1, 320, 288, 2)).astype(np.float32)
    stitched = tiling.stitch_tiles(predicted, [(0, 0)], (300, 280), (320, 288))
    assert stitched.dtype == np.float32 and np.array_equal(stitched, predicted[0, :300, :280])
    # the same as blending two copies of it
    two = tiling.stitch_tiles(np.concatenate([predicted, predicted]), [(0, 0), (0, 0)], (300, 280), (320, 288))
    assert np.allclose(two, stitched, atol=1e-6)

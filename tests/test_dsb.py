"""dsb.py on synthetic data written by the tests: loading, preprocessing, cache, clusters, split, tiles."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

import dsb
from conftest import make_synthetic_image, write_dsb_folder, zip_folder


# ---- loading -------------------------------------------------------------------------------

def test_folder_and_zip_load_the_same_records(tmp_path, synthetic_folder):
    from_folder = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    archive = zip_folder(synthetic_folder, tmp_path / "data.zip")
    from_zip = dsb.load_dataset(archive, cache_dir=None, workers=2, progress=False)
    assert [r.image_id for r in from_folder] == [r.image_id for r in from_zip] == sorted(r.image_id for r in from_zip)
    for a, b in zip(from_folder, from_zip):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_records_have_documented_types(synthetic_folder, synthetic_items):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    assert len(records) == len(synthetic_items)
    for record in records:
        image, masks = synthetic_items[record.image_id]
        assert record.image.dtype == np.float32 and record.image.shape == image.shape[:2]
        assert 0.0 <= record.image.min() and record.image.max() <= 1.0
        assert record.labels.dtype == np.int32
        assert record.labels.max() == len(masks)
        assert sorted(np.unique(record.labels)) == list(range(len(masks) + 1))
        np.testing.assert_array_equal(record.mask, np.any(np.stack(masks) > 0, axis=0))


def test_zip_with_any_top_folder_loads(tmp_path, synthetic_items):
    folder = write_dsb_folder(tmp_path / "x", synthetic_items)
    renamed = folder.rename(tmp_path / "x" / "my_nuclei")
    records = dsb.load_dataset(zip_folder(renamed, tmp_path / "a.zip"), cache_dir=None, workers=1, progress=False)
    assert len(records) == len(synthetic_items)


def test_labels_follow_sorted_mask_file_names(tmp_path):
    rng = np.random.default_rng(3)
    image, masks = make_synthetic_image(rng, (64, 64), nuclei=3)
    folder = write_dsb_folder(tmp_path, {"a": (image, masks)})
    (record,) = dsb.load_dataset(folder, cache_dir=None, workers=1, progress=False)
    for index, mask in enumerate(masks, start=1):
        assert np.all(record.labels[mask > 0] == index)


def test_scan_layout_ignores_stray_files():
    names = ["t/a/images/a.png", "t/a/masks/1.png", "t/a/images/.DS_Store", "t/a/masks/Thumbs.db", "t/README.txt",
             "__MACOSX/t/a/images/._a.png"]
    (entry,), skipped = dsb.scan_layout(names)
    assert entry.image_id == "a" and entry.image == "t/a/images/a.png" and entry.masks == ("t/a/masks/1.png",)
    assert skipped == {}


def test_scan_layout_rejects_two_images():
    with pytest.raises(ValueError, match="a: expected one file in images/, found 2"):
        dsb.scan_layout(["a/images/a.png", "a/images/b.png", "a/masks/1.png"])


def test_scan_layout_skips_image_without_masks():
    entries, skipped = dsb.scan_layout(["a/images/a.png", "b/images/b.png", "b/masks/1.png"])
    assert [e.image_id for e in entries] == ["b"] and skipped == {"a": "no mask files in masks/"}


def test_scan_layout_skips_masks_without_image():
    entries, skipped = dsb.scan_layout(["a/masks/1.png", "b/images/b.png", "b/masks/1.png"])
    assert [e.image_id for e in entries] == ["b"] and skipped == {"a": "no image file in images/"}


def test_scan_layout_accepts_image_without_masks_when_not_required():
    (entry,), _ = dsb.scan_layout(["a/images/a.png"], require_masks=False)
    assert entry.masks == ()


def test_find_dataset_prefers_explicit_then_environment(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "one", tmp_path / "two"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setenv("DSB_DATA", str(from_env))
    assert dsb.find_dataset(explicit) == explicit
    assert dsb.find_dataset() == from_env


def test_find_dataset_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset path does not exist"):
        dsb.find_dataset(tmp_path / "nowhere")


# ---- preprocessing -------------------------------------------------------------------------

def test_grayscale_of_gray_rgba_is_the_channel_scaled():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    np.testing.assert_array_equal(dsb.to_grayscale(rgba), gray.astype(np.float32) / 255)


def test_grayscale_of_colour_uses_luminance():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(dsb.to_grayscale(red), 0.2125, atol=1e-4)


def test_grayscale_scales_16_bit_by_its_range():
    image = np.full((3, 3), 65535, np.uint16)
    image[0, 0] = 0
    gray = dsb.to_grayscale(image)
    assert gray.dtype == np.float32 and gray[0, 0] == 0.0 and gray[1, 1] == 1.0


def test_grayscale_rejects_five_channels():
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 5\)"):
        dsb.to_grayscale(np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("kind", ["fluorescence", "brightfield", "histology", "gray"])
def test_preprocess_makes_nuclei_bright(kind):
    image, masks = make_synthetic_image(np.random.default_rng(2), (96, 96), nuclei=3, kind=kind)
    gray = dsb.preprocess(image)
    inside = np.any(np.stack(masks) > 0, axis=0)
    assert gray[inside].mean() > gray[~inside].mean() + 0.4
    assert gray.min() == 0.0 and gray.max() == 1.0


def test_preprocess_16_bit_matches_8_bit():
    image, _ = make_synthetic_image(np.random.default_rng(4), (64, 64), kind="gray")
    wide = image.astype(np.uint16) * 257  # the same picture on the 16-bit scale
    np.testing.assert_allclose(dsb.preprocess(wide), dsb.preprocess(image), atol=1e-6)


def test_brightfield_is_detected_as_dark_on_light():
    bright, _ = make_synthetic_image(np.random.default_rng(5), kind="brightfield")
    dark, _ = make_synthetic_image(np.random.default_rng(5), kind="fluorescence")
    assert dsb.is_dark_on_light(dsb.to_grayscale(bright))
    assert not dsb.is_dark_on_light(dsb.to_grayscale(dark))


def test_stats_tell_histology_from_gray():
    rng = np.random.default_rng(6)
    histology = dsb.image_stats(make_synthetic_image(rng, kind="histology")[0])
    fluorescence = dsb.image_stats(make_synthetic_image(rng, kind="fluorescence")[0])
    assert histology["saturation"] > 0.1 and fluorescence["saturation"] == 0.0
    assert histology["median"] > 0.5 > fluorescence["median"]
    assert set(histology) == set(dsb.STAT_COLUMNS)


def test_labels_from_masks_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"mask 1 has shape \(3, 3\), image has shape \(4, 4\)"):
        dsb.labels_from_masks([np.ones((3, 3))], (4, 4))


# ---- cache ---------------------------------------------------------------------------------

def test_second_load_comes_from_the_cache(tmp_path, synthetic_folder, monkeypatch):
    first = dsb.load_dataset(synthetic_folder, cache_dir=tmp_path / "cache", workers=1, progress=False)

    def no_decoding(*args):  # noqa: ARG001
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dsb, "_load_entry", no_decoding)
    second = dsb.load_dataset(synthetic_folder, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert [r.image_id for r in first] == [r.image_id for r in second]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert b.labels.dtype == np.int32 and a.stats == b.stats


def test_cache_is_invalidated_when_a_file_changes(tmp_path, synthetic_folder):
    cache = tmp_path / "cache"
    dsb.load_dataset(synthetic_folder, cache_dir=cache, workers=1, progress=False)
    mask = next(synthetic_folder.rglob("masks/m000.png"))
    mask.write_bytes(next(synthetic_folder.rglob("masks/m001.png")).read_bytes())
    os.utime(mask, ns=(time.time_ns(), time.time_ns() + 10**9))
    (before,) = cache.glob("*.npz")
    other_dataset = cache / dsb.cache_file(cache, cache / "another-dataset.zip").name
    legacy = cache / ("dsb-" + "0" * 20 + ".npz")  # the previous naming, read by no version any more
    other_dataset.write_bytes(b"kept")
    legacy.write_bytes(b"removed")
    dsb.load_dataset(synthetic_folder, cache_dir=cache, workers=1, progress=False)
    # A new cache for the changed files; the stale one of this dataset and the legacy file are gone.
    assert sorted(cache.glob("*.npz")) == sorted([dsb.cache_file(cache, synthetic_folder), other_dataset])
    assert dsb.cache_file(cache, synthetic_folder) != before


# ---- clusters and split --------------------------------------------------------------------

def _fake_stats(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (8, len(dsb.STAT_COLUMNS)))
    rows = centres[np.arange(count) % 8] + rng.normal(0, 0.1, (count, len(dsb.STAT_COLUMNS)))
    table = pd.DataFrame(rows, columns=list(dsb.STAT_COLUMNS))
    table.index = pd.Index([f"id{i:04d}" for i in range(count)], name="image_id")
    return table


def test_clusters_are_seeded_and_largest_first():
    stats = _fake_stats(200)
    first, second = dsb.cluster_images(stats, seed=3), dsb.cluster_images(stats, seed=3)
    np.testing.assert_array_equal(first, second)
    counts = np.bincount(first, minlength=8)
    assert len(set(first)) == 8 and list(counts) == sorted(counts, reverse=True)


def test_clustering_needs_as_many_images_as_clusters():
    with pytest.raises(ValueError, match="cannot make 8 clusters from 5 images"):
        dsb.cluster_images(_fake_stats(5))


def test_split_keeps_cluster_proportions():
    ids = [f"id{i:04d}" for i in range(600)]
    clusters = np.repeat(np.arange(6), [200, 150, 100, 80, 50, 20])
    split = dsb.stratified_split(ids, clusters, seed=0)
    table = pd.crosstab(split["cluster"], split["subset"], normalize="index")
    np.testing.assert_allclose(table["train"], 0.8, atol=0.03)
    np.testing.assert_allclose(table["cv"], 0.1, atol=0.03)
    np.testing.assert_allclose(table["test"], 0.1, atol=0.03)


def test_split_subsets_do_not_overlap_and_cover_everything():
    ids = [f"id{i}" for i in range(97)]
    split = dsb.stratified_split(ids, np.arange(97) % 7, seed=1)
    assert sorted(split["image_id"]) == sorted(ids)
    assert split["image_id"].is_unique
    assert set(split["subset"]) == {"train", "cv", "test"}


def test_split_gives_small_clusters_a_cv_and_a_test_image():
    split = dsb.stratified_split([f"i{k}" for k in range(13)], [0] * 10 + [1] * 3, seed=0)
    small = split[split["cluster"] == 1]["subset"].value_counts()
    assert small.to_dict() == {"train": 1, "cv": 1, "test": 1}


def test_split_is_stable_across_runs_and_input_order():
    ids = np.array([f"id{i}" for i in range(120)])
    clusters = np.arange(120) % 5
    order = np.random.default_rng(9).permutation(120)
    first = dsb.stratified_split(ids, clusters, seed=4)
    shuffled = dsb.stratified_split(ids[order], clusters[order], seed=4)
    pd.testing.assert_frame_equal(first, shuffled)
    assert not first.equals(dsb.stratified_split(ids, clusters, seed=5))


def test_split_is_saved_and_reused(tmp_path):
    stats, path = _fake_stats(80), tmp_path / "split.csv"
    made = dsb.load_or_make_split(stats, path, seed=0)
    assert path.exists()
    reused = dsb.load_or_make_split(stats, path, seed=123)  # another seed must not re-split
    pd.testing.assert_frame_equal(made, reused)


def test_changed_dataset_is_reported_not_resplit(tmp_path):
    path = tmp_path / "split.csv"
    dsb.load_or_make_split(_fake_stats(80), path)
    with pytest.raises(dsb.DatasetChangedError, match="1 images added .* 0 removed"):
        dsb.load_or_make_split(_fake_stats(81), path)


# ---- tiles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [256, 257, 300, 520, 696, 1388])
def test_tile_starts_cover_with_overlap_and_end_flush(length):
    starts = dsb.tile_starts(length, 256, 32)
    assert starts[0] == 0 and starts[-1] == length - 256
    assert np.all(np.diff(starts) <= 256 - 32)


def test_tile_starts_reject_overlap_as_large_as_a_tile():
    with pytest.raises(ValueError, match="min_overlap"):
        dsb.tile_starts(500, 256, 256)


def test_tiles_round_trip_over_random_shapes():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(3, 200, 2))
        tile_size = int(rng.choice([16, 32, 64]))
        overlap = int(rng.integers(0, tile_size // 2))
        image = rng.random(shape).astype(np.float32)
        tiles, corners = dsb.make_tiles(image, tile_size, overlap)
        assert tiles.shape[1:] == (tile_size, tile_size)
        rebuilt = dsb.stitch_tiles(tiles, corners, shape, tile_size)
        np.testing.assert_allclose(rebuilt, image, rtol=0, atol=1e-6, err_msg=f"shape {shape}, tile {tile_size}")


def test_tiles_round_trip_at_full_size_with_channels():
    image = np.random.default_rng(1).random((520, 696, 2)).astype(np.float32)
    tiles, corners = dsb.make_tiles(image)
    assert tiles.shape == (len(corners), 256, 256, 2) and len(corners) == 9
    np.testing.assert_allclose(dsb.stitch_tiles(tiles, corners, image.shape[:2]), image, atol=1e-6)


def test_small_image_is_reflect_padded_into_one_tile():
    image = np.arange(64 * 80, dtype=np.float32).reshape(64, 80)
    tiles, corners = dsb.make_tiles(image)
    assert corners == [(0, 0)] and tiles.shape == (1, 256, 256)
    np.testing.assert_array_equal(tiles[0, :64, :80], image)
    np.testing.assert_array_equal(tiles[0, 64, :80], image[62])  # reflect, not edge


def test_stitch_blends_disagreeing_tiles_by_weight():
    tiles = np.stack([np.zeros((32, 32)), np.ones((32, 32))]).astype(np.float32)
    corners = [(0, 0), (0, 16)]
    blended = dsb.stitch_tiles(tiles, corners, (32, 48), 32)
    assert blended[0, 0] == 0.0 and blended[0, 47] == 1.0
    assert np.all(np.diff(blended[10, 16:32]) >= 0)  # a ramp across the overlap


def test_tile_weights_are_never_zero():
    weights = dsb.tile_weights(256)
    assert weights.min() > 0 and weights.max() == 1.0


def test_tiles_for_records_are_compact(synthetic_folder):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    images, masks, owner = dsb.tiles_for_records(records, 64, 16)
    assert images.dtype == np.float16 and masks.dtype == np.uint8
    assert len(images) == len(masks) == len(owner)
    assert set(np.unique(masks)) <= {0, 1}
    expected = sum(len(dsb.tile_grid(r.image.shape, 64, 16)) for r in records)
    assert len(images) == expected


def test_cluster_model_assigns_members_to_their_own_cluster():
    stats = _fake_stats(160)
    split = dsb.stratified_split(stats.index.to_numpy(), dsb.cluster_images(stats, seed=0))
    model = dsb.fit_cluster_model(stats, split)
    np.testing.assert_array_equal(dsb.assign_clusters(stats.loc[split["image_id"]], model), split["cluster"])


def test_find_images_in_plain_and_dsb_folders(tmp_path, synthetic_folder):
    (tmp_path / "plain").mkdir()
    for name in ["b.tif", "a.png", "c.JPG", ".hidden.png", "notes.txt"]:
        (tmp_path / "plain" / name).write_bytes(b"")
    assert [image_id for image_id, _ in dsb.find_images(tmp_path / "plain")] == ["a", "b", "c"]
    found = dsb.find_images(synthetic_folder)
    assert len(found) == 12 and found[0][1].name == "img00.png"


def test_find_images_rejects_two_files_with_one_name(tmp_path):
    for name in ["a.png", "a.tif"]:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="several files share the name 'a'"):
        dsb.find_images(tmp_path)


def test_find_images_in_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        dsb.find_images(tmp_path)


# ---- contact targets ---------------------------------------------------------------------

def test_contact_map_marks_only_where_nuclei_touch():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 2:10] = 1
    labels[5:15, 10:18] = 2    # touches nucleus 1 along column 10
    labels[5:15, 25:29] = 3    # 7 pixels away from nucleus 2: no contact
    contact = dsb.contact_map(labels, radius=2)
    assert contact[5:15, 8:12].all() and not contact[:, :8].any()
    assert not contact[:, 12:].any()
    assert not contact[:3].any() and not contact[17:].any()  # background within reach of both counts
    gap = labels.copy()
    gap[:, 10] = 0              # a one-pixel gap still counts, the gap pixels too
    assert dsb.contact_map(gap, radius=2)[5:15, 10].all()
    with pytest.raises(ValueError, match="radius"):
        dsb.contact_map(labels, radius=0)


def test_contact_tiles_store_nuclei_and_contacts_as_bits():
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30], labels[10:30, 30:50] = 1, 2
    record = dsb.ImageRecord("a", np.zeros((64, 64), np.float32), labels)
    _, plain, _ = dsb.tiles_for_records([record], 64, 8)
    _, both, _ = dsb.tiles_for_records([record], 64, 8, contacts=True)
    assert set(np.unique(plain)) == {0, 1}
    np.testing.assert_array_equal(both & 1, plain)
    np.testing.assert_array_equal((both[0] >> 1) & 1, dsb.contact_map(labels))

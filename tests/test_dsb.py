"""dsb.py on synthetic data written by the tests: finding, reading the DSB layout, the cache."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import skimage.io

import dsb
from nucleunet import layouts

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
    (entry,), skipped = layouts.scan_layout(names)
    assert entry.image_id == "a" and entry.image == "t/a/images/a.png" and entry.masks == ("t/a/masks/1.png",)
    assert skipped == {}


def test_scan_layout_rejects_two_images():
    with pytest.raises(ValueError, match="a: expected one file in images/, found 2"):
        layouts.scan_layout(["a/images/a.png", "a/images/b.png", "a/masks/1.png"])


def test_scan_layout_skips_image_without_masks():
    entries, skipped = layouts.scan_layout(["a/images/a.png", "b/images/b.png", "b/masks/1.png"])
    assert [e.image_id for e in entries] == ["b"] and skipped == {"a": "no mask files in masks/"}


def test_scan_layout_skips_masks_without_image():
    entries, skipped = layouts.scan_layout(["a/masks/1.png", "b/images/b.png", "b/masks/1.png"])
    assert [e.image_id for e in entries] == ["b"] and skipped == {"a": "no image file in images/"}


def test_scan_layout_accepts_image_without_masks_when_not_required():
    (entry,), _ = layouts.scan_layout(["a/images/a.png"], require_masks=False)
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


def test_raw_images_are_read_as_stored_with_their_labels(synthetic_folder, synthetic_items):
    records = {r.image_id: r for r in dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)}
    raw = dsb.read_raw_images(synthetic_folder, ["img04", "img01"])
    assert [image_id for image_id, _, _ in raw] == ["img01", "img04"]
    for image_id, image, labels in raw:
        np.testing.assert_array_equal(image, synthetic_items[image_id][0])
        np.testing.assert_array_equal(labels, records[image_id].labels)
    with pytest.raises(ValueError, match="1 of the images asked for are not there"):
        dsb.read_raw_images(synthetic_folder, ["img01", "nope"])


# ---- the StarDist and Cellpose layouts ----------------------------------------------------------

def _label_image(seed=0, shape=(64, 80)):
    image, masks = make_synthetic_image(np.random.default_rng(seed), shape, nuclei=3, kind="gray")
    labels = np.zeros(shape, np.uint16)
    for index, mask in enumerate(masks, start=1):
        labels[mask > 0] = index * 7  # any numbering: the loader renumbers 1..n
    return image, labels


@pytest.mark.parametrize("layout", ["stardist", "cellpose"])
def test_image_and_label_image_layouts_load(tmp_path, layout):
    import tifffile

    expected = {}
    for seed, name in enumerate(["a", "b c"]):
        image, labels = _label_image(seed)
        expected[name] = labels
        if layout == "stardist":
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / "masks").mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
            tifffile.imwrite(tmp_path / "masks" / f"{name}.tif", labels)
        else:
            tifffile.imwrite(tmp_path / f"{name}.tif", image)
            skimage.io.imsave(tmp_path / f"{name}_masks.png", labels, check_contrast=False)
    records = dsb.load_dataset(tmp_path, cache_dir=None, workers=1, progress=False)
    assert [record.image_id for record in records] == ["a", "b c"]
    for record in records:
        assert record.labels.max() == 3 and np.array_equal(record.labels > 0, expected[record.image_id] > 0)


def test_a_label_image_of_another_size_is_skipped(tmp_path):
    import tifffile

    image, labels = _label_image()
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", labels[:32])
    tifffile.imwrite(tmp_path / "b.tif", image)
    tifffile.imwrite(tmp_path / "b_masks.tif", labels)
    records = dsb.load_dataset(tmp_path, cache_dir=None, workers=1, progress=False)
    report = records.report
    assert [record.image_id for record in records] == ["b"] and "has shape (32, 80)" in report.skipped["a"]

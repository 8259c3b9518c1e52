"""Messy datasets: each case builds its bad input and checks the documented outcome (README, "Bad input").

Stop with a ValueError / FileNotFoundError naming the problem: a path that does not exist, an empty folder,
a folder or zip without DSB images, two images in one images/ folder, a corrupt zip, nothing usable.
Skip the image with a warning and a count: no image file, no masks, an unreadable (corrupt, truncated,
zero-byte) image or mask, a mask of another size than its image. Ignore: hidden and system files.
Keep with a warning: empty masks (ignored), overlapping masks (pixels go to the later mask).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import skimage.io

import dsb

from conftest import make_synthetic_image, write_dsb_folder, zip_folder


def _load(path):
    records = dsb.load_dataset(path, cache_dir=None, workers=1, progress=False)
    return records, records.report


@pytest.fixture
def three_images(tmp_path):
    rng = np.random.default_rng(0)
    items = {name: make_synthetic_image(rng, (64, 80), nuclei=3) for name in ("a", "b", "c")}
    return write_dsb_folder(tmp_path / "data", items)


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load(tmp_path / "missing")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no annotated images found"):
        _load(tmp_path / "empty")


def test_corrupt_zip(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable zip file"):
        _load(archive)


def test_zip_with_another_top_folder(tmp_path, three_images):
    renamed = three_images.rename(three_images.parent / "nuclei_2018")
    records, report = _load(zip_folder(renamed, tmp_path / "n.zip"))
    assert [r.image_id for r in records] == ["a", "b", "c"] and not report.warnings()


def test_two_images_in_one_folder_stop(three_images):
    shutil.copy(three_images / "a" / "images" / "a.png", three_images / "a" / "images" / "a2.png")
    with pytest.raises(ValueError, match="a: expected one file in images/, found 2"):
        _load(three_images)


def test_missing_masks_folder_is_skipped_and_counted(three_images, caplog):
    shutil.rmtree(three_images / "b" / "masks")
    with caplog.at_level(logging.WARNING, logger="dsb"):
        records = dsb.load_dataset(three_images, cache_dir=None, workers=1, progress=False)
    assert [r.image_id for r in records] == ["a", "c"]
    assert "skipped 1 unusable image(s): b: no mask files in masks/" in caplog.text


def test_missing_images_folder_is_skipped(three_images):
    shutil.rmtree(three_images / "c" / "images")
    records, report = _load(three_images)
    assert [r.image_id for r in records] == ["a", "b"] and report.skipped == {"c": "no image file in images/"}


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "garbage"])
def test_unreadable_image_is_skipped_naming_the_file(three_images, damage):
    path = three_images / "a" / "images" / "a.png"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zero bytes": b"", "garbage": b"\x89PNG" + bytes(100)}[damage])
    records, report = _load(three_images)
    assert [r.image_id for r in records] == ["b", "c"]
    assert "cannot read" in report.skipped["a"] and "a/images/a.png" in report.skipped["a"]


def test_unreadable_mask_skips_its_image(three_images):
    (three_images / "b" / "masks" / "m001.png").write_bytes(b"")
    records, report = _load(three_images)
    assert [r.image_id for r in records] == ["a", "c"] and "m001.png" in report.skipped["b"]


def test_system_files_are_ignored(three_images):
    (three_images / "a" / "images" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (three_images / "a" / "masks" / "Thumbs.db").write_bytes(b"junk")
    (three_images / "README.txt").write_text("notes")
    records, report = _load(three_images)
    assert len(records) == 3 and not report.warnings()


def test_mask_of_another_size_is_skipped(three_images):
    skimage.io.imsave(three_images / "c" / "masks" / "m000.png", np.zeros((10, 10), np.uint8), check_contrast=False)
    records, report = _load(three_images)
    assert [r.image_id for r in records] == ["a", "b"]
    assert report.skipped["c"] == "mask 1 has shape (10, 10), image has shape (64, 80)"


def test_empty_mask_is_ignored_and_counted(three_images):
    skimage.io.imsave(three_images / "a" / "masks" / "m999.png", np.zeros((64, 80), np.uint8), check_contrast=False)
    records, report = _load(three_images)
    assert report.empty_masks == {"a": 1}
    assert records[0].labels.max() == 3  # the empty file takes no label


def test_overlapping_masks_are_counted_and_go_to_the_later_mask(tmp_path):
    first = np.zeros((64, 64), np.uint8)
    first[10:30, 10:30] = 255
    second = np.zeros_like(first)
    second[25:45, 25:45] = 255
    image = np.full((64, 64), 20, np.uint8)
    folder = write_dsb_folder(tmp_path, {"x": (image, [first, second])})
    (record,), report = _load(folder)
    assert report.overlaps == {"x": 25}
    assert record.labels[27, 27] == 2 and record.labels[12, 12] == 1
    assert any("overlapping masks (25 pixels" in line for line in report.warnings())


@pytest.mark.parametrize("kind, dtype, channels", [
    ("gray", np.uint8, 1), ("gray", np.uint16, 1), ("fluorescence", np.uint8, 3), ("fluorescence", np.uint8, 4),
])
def test_image_layouts_and_bit_depths_load(tmp_path, kind, dtype, channels):
    image, masks = make_synthetic_image(np.random.default_rng(1), (64, 80), kind=kind, dtype=dtype)
    if channels == 3:
        image = image[..., :3]
    folder = write_dsb_folder(tmp_path, {"x": (image, masks)})
    (record,), _ = _load(folder)
    inside = record.labels > 0
    assert record.image.shape == (64, 80) and record.image[inside].mean() > record.image[~inside].mean() + 0.4


def test_nothing_usable_is_an_error(three_images):
    for name in "abc":
        (three_images / name / "images" / f"{name}.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no usable images \(skipped 3"):
        _load(three_images)


def test_fuzzed_png_bytes_give_only_documented_outcomes(tmp_path):
    """Random corruptions of real PNG bytes: each image loads or is skipped with a reason, never a crash."""
    rng = np.random.default_rng(42)
    image, masks = make_synthetic_image(rng, (48, 48), nuclei=2)
    folder = write_dsb_folder(tmp_path, {f"i{k:02d}": (image, masks) for k in range(30)})
    original = (folder / "i00" / "images" / "i00.png").read_bytes()
    for k in range(30):
        data = bytearray(original)
        how = k % 3
        if how == 0:  # flip random bytes
            for position in rng.integers(0, len(data), int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))
        elif how == 1:  # cut off
            data = data[: int(rng.integers(0, len(data)))]
        else:  # insert junk
            position = int(rng.integers(0, len(data)))
            data[position:position] = rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
        (folder / f"i{k:02d}" / "images" / f"i{k:02d}.png").write_bytes(bytes(data))
    try:
        records, report = _load(folder)
    except ValueError as error:  # every image unusable: a documented error
        assert "no usable images" in str(error)
        return
    loaded = {r.image_id for r in records}
    assert loaded | set(report.skipped) == {f"i{k:02d}" for k in range(30)} and not loaded & set(report.skipped)
    for record in records:
        assert record.image.shape == (48, 48) and np.isfinite(record.image).all()

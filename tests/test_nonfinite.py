"""NaN and infinite pixels: replaced by the median of the finite ones with a warning that counts them,
or, when no pixel is finite, the image is skipped and named. The same rule for training and prediction,
for float TIFFs read from disk and for images held in memory."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import tifffile

import dsb
import train_and_predicted_masks as cli
import unet
from nucleunet import imaging, prediction, tiling, training
from nucleunet.config import TrainConfig

from conftest import make_synthetic_image, write_dsb_folder


def _float_image(seed=0, shape=(64, 80)):
    """A gray float32 image in [0, 1] with three nuclei, and its masks."""
    image, masks = make_synthetic_image(np.random.default_rng(seed), shape, nuclei=3, kind="gray")
    return image.astype(np.float32) / 255, masks


def _poison(image, *, everywhere=False):
    """A copy with a 10x10 corner of NaN and a 5x5 corner of +inf (or every pixel NaN); how many values that is."""
    image = image.copy()
    if everywhere:
        image[:] = np.nan
        return image, image.size
    image[:10, :10] = np.nan
    image[-5:, -5:] = np.inf
    return image, 125


def _tiff_dataset(tmp_path, everywhere=False):
    """Three images in the DSB layout, b's image a float32 TIFF with NaN and infinite pixels."""
    items = {name: _float_image(seed) for seed, name in enumerate("abc")}
    folder = write_dsb_folder(tmp_path / "data", {k: ((v[0] * 255).astype(np.uint8), v[1]) for k, v in items.items()})
    (folder / "b" / "images" / "b.png").unlink()
    poisoned, count = _poison(items["b"][0], everywhere=everywhere)
    tifffile.imwrite(folder / "b" / "images" / "b.tif", poisoned)
    return folder, items["b"][0], count


# ---- the rule itself ------------------------------------------------------------------------

def test_nonfinite_values_take_the_median_of_the_finite_ones():
    image, _ = _float_image()
    poisoned, count = _poison(image)
    fixed, replaced = imaging.replace_nonfinite(poisoned)
    finite = np.isfinite(poisoned)
    assert replaced == count
    assert np.isfinite(fixed).all() and np.array_equal(fixed[finite], poisoned[finite])
    assert np.all(fixed[~finite] == np.median(poisoned[finite]))


def test_no_finite_value_is_an_error_naming_the_image():
    with pytest.raises(ValueError, match="scan7: all 20 pixel values are NaN or infinite"):
        imaging.replace_nonfinite(np.full((4, 5), -np.inf, np.float32), name="scan7")


def test_finite_and_integer_images_are_returned_untouched():
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert imaging.replace_nonfinite(image)[0] is image
    floats = image.astype(np.float32)
    assert imaging.replace_nonfinite(floats) == (floats, 0)


# ---- training data: a float TIFF on disk ----------------------------------------------------

def test_float_tiff_with_some_nonfinite_pixels_loads_with_them_replaced_and_counted(tmp_path):
    folder, clean, count = _tiff_dataset(tmp_path)
    records = dsb.load_dataset(folder, cache_dir=None, workers=1, progress=False)
    report = records.report
    record = {r.image_id: r for r in records}["b"]
    assert report.nonfinite == {"b": count}
    assert any(f"NaN or infinite pixels ({count} values" in line and "b (125)" in line for line in report.warnings())
    assert np.isfinite(record.image).all() and np.isfinite(list(record.stats.values())).all()
    # Replaced by background: the nuclei away from the corners look as in the clean image.
    inside = record.labels > 0
    assert record.image[inside].mean() > record.image[~inside].mean() + 0.4


def test_float_tiff_with_no_finite_pixel_is_skipped_and_named(tmp_path):
    folder, _, _ = _tiff_dataset(tmp_path, everywhere=True)
    records = dsb.load_dataset(folder, cache_dir=None, workers=1, progress=False)
    report = records.report
    assert [r.image_id for r in records] == ["a", "c"]
    assert "b.tif: all 5120 pixel values are NaN or infinite" in report.skipped["b"]


# ---- training data: records in memory -------------------------------------------------------

def _records(tmp_path):
    folder = write_dsb_folder(tmp_path / "mem", {name: ((_float_image(seed)[0] * 255).astype(np.uint8),
                                                        _float_image(seed)[1]) for seed, name in enumerate("abcd")})
    return dsb.load_dataset(folder, cache_dir=None, workers=1, progress=False)


def test_record_with_some_nonfinite_pixels_trains_on_replaced_values(tmp_path, caplog):
    records = _records(tmp_path)
    records[1].image, count = _poison(records[1].image)
    with caplog.at_level(logging.WARNING, logger="tiling"):
        images, _, owner = tiling.tiles_for_records(records, 64, 16)
    assert np.isfinite(images.astype(np.float32)).all() and sorted(set(owner.tolist())) == [0, 1, 2, 3]
    assert f"{records[1].image_id}: {count} pixel values are NaN or infinite" in caplog.text


def test_record_with_no_finite_pixel_is_left_out_of_training_and_named(tmp_path, caplog):
    records = _records(tmp_path)
    records[2].image[:] = np.nan
    with caplog.at_level(logging.WARNING, logger="tiling"):
        images, _, owner = tiling.tiles_for_records(records, 64, 16)
    assert sorted(set(owner.tolist())) == [0, 1, 3] and np.isfinite(images.astype(np.float32)).all()
    assert f"left out of training: {records[2].image_id}: all" in caplog.text


def test_training_split_of_only_nonfinite_images_is_a_clear_error(tmp_path):
    records = _records(tmp_path)
    for record in records:
        record.image[:] = np.nan
    split = pd.DataFrame({"image_id": [r.image_id for r in records], "cluster": 0,
                          "subset": ["train", "train", "cv", "test"]})
    config = TrainConfig.from_dict(dict(preset="smoke", depth=2, base_filters=2, tile_size=64, min_overlap=16))
    with pytest.raises(ValueError, match="no training or no CV images"):
        training.prepare_training_data(records, split, config)


# ---- prediction -----------------------------------------------------------------------------

def _recording_predictor(seen: list):
    def predict_tiles(tiles):
        seen.append(tiles.copy())
        return np.full(tiles.shape, 0.9, np.float32)
    return predict_tiles


def test_prediction_in_memory_gives_the_model_replaced_values(caplog):
    image, _ = _float_image()
    poisoned, count = _poison(image)
    seen = []
    with caplog.at_level(logging.WARNING, logger="segment"):
        maps = prediction.predict_maps(_recording_predictor(seen), poisoned, tile_size=64, min_overlap=16)
    tiles = np.concatenate(seen)
    assert np.isfinite(tiles).all() and np.isfinite(maps).all()
    assert np.isclose(tiles[0, 0, 0, 0], np.median(poisoned[np.isfinite(poisoned)]))
    assert f"{count} pixel values are NaN or infinite" in caplog.text


def test_prediction_in_memory_of_no_finite_pixel_is_an_error():
    seen = []
    with pytest.raises(ValueError, match="NaN or infinite"):
        prediction.predict_maps(_recording_predictor(seen), np.full((64, 64), np.nan, np.float32), tile_size=64)
    assert not seen


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    unet.build_unet((None, None, 1), depth=2, base_filters=2, output_channels=2).save(path)
    return path


def test_predicting_float_tiffs_replaces_or_skips_and_says_so(tmp_path, tiny_model):
    folder = tmp_path / "images"
    folder.mkdir()
    image, _ = _float_image()
    some, count = _poison(image)
    tifffile.imwrite(folder / "some.tif", some)
    tifffile.imwrite(folder / "none.tif", _poison(image, everywhere=True)[0])
    tifffile.imwrite(folder / "clean.tif", image)
    assert cli.main(["predict", str(tiny_model), str(folder), "--out", str(tmp_path / "runs"), "--no-tta",
                     "--quiet"]) == cli.SOME_SKIPPED
    (run_dir,) = (tmp_path / "runs").iterdir()
    counts = pd.read_csv(run_dir / "counts.csv").set_index("image")
    assert counts.loc["some", "nonfinite_pixels"] == count and counts.loc["clean", "nonfinite_pixels"] == 0
    assert "none" not in counts.index
    skipped = json.loads((run_dir / "skipped.json").read_text())
    assert "none.tif: all 5120 pixel values are NaN or infinite" in skipped[str(folder / "none.tif")]

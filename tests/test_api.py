"""The public API (``nucleunet.load_model(...).segment(image)``, ``nucleunet.segment_files``): it finds exactly what
``predict`` finds, and answers bad input as the command line does."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import skimage.io
import skimage.measure
import tifffile

import nucleunet
import train_and_predicted_masks as cli
from nucleunet import layouts, models, prediction, stratify
from nucleunet.errors import MissingPathError, UserError

from conftest import disk_labels, ready_test_images, real_dataset_path

READY = models.ready_model_path()


def _cells(shape=(120, 150), seed=0) -> np.ndarray:
    """Four bright discs on a dark, noisy background: uint8 (H, W)."""
    discs = disk_labels(shape, [(30, 30), (30, 100), (85, 60), (90, 120)], 12) > 0
    noise = np.random.default_rng(seed).normal(0, 8, shape)
    return np.clip(discs * 200.0 + 20 + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ready():
    return nucleunet.load_model()


def test_real_images_of_different_kinds_get_the_same_labels_from_the_api_as_from_predict(tmp_path):
    """Fluorescence at the ready model's defaults (test-time augmentation, the automatic zoom and its second zoom, the
    flat field, the nucleus score), dense stained tissue and a 1024 x 1024 brightfield image with the rest of the
    defaults but no test-time augmentation (to keep the test short): the same labels, nucleus for nucleus."""
    split = stratify.read_split(READY.parent / "split.csv")
    test = split[split["subset"] == "test"].sort_values("image_id")
    chosen = {int(cluster): test.loc[test["cluster"] == cluster, "image_id"].iloc[0] for cluster in (0, 4, 7)}
    source = real_dataset_path()
    entries = {entry.image_id: entry for entry in layouts.scan_layout(layouts.list_files(source))[0]}
    reader = layouts.DatasetReader(source)
    for cluster, image_id in chosen.items():
        folder = tmp_path / ("defaults" if cluster == 0 else "plain")
        folder.mkdir(exist_ok=True)
        (folder / f"{image_id}.png").write_bytes(reader.read_bytes(entries[image_id].image)[0])
    model = nucleunet.load_model()
    for folder, options in (("defaults", []), ("plain", ["--no-tta"])):
        out = tmp_path / f"runs-{folder}"
        assert cli.main(["predict", str(tmp_path / folder), "--quiet", "--out", str(out), *options]) == 0
        (run_dir,) = out.iterdir()
        measured = pd.read_csv(run_dir / "measurements.csv")
        for path in sorted((tmp_path / folder).glob("*.png")):
            found = model.segment(skimage.io.imread(path), **({"tta": False} if options else {}))
            written = tifffile.imread(run_dir / "labels" / f"{path.stem}.tif")
            np.testing.assert_array_equal(found.labels, written, err_msg=path.stem)
            assert found.count > 0, path.stem
            rows = measured[measured["image"] == path.stem].drop(columns="image").reset_index(drop=True)
            pd.testing.assert_frame_equal(found.measurements, rows, check_dtype=False)
        counts = pd.read_csv(run_dir / "counts.csv").set_index("image")
        assert counts.loc[path.stem, "scale"] == round(found.scale, 3)


def test_segment_returns_labels_measurements_and_on_request_the_probability(ready):
    image = _cells()
    found = ready.segment(image, tta=False, scale=1.0)
    assert found.labels.shape == image.shape and found.labels.dtype == np.int32
    assert found.count == 4 and found.probability is None and found.scale == 1.0
    table = found.measurements
    assert isinstance(table, pd.DataFrame) and table["label"].tolist() == [1, 2, 3, 4]
    assert {"area", "centroid_row", "mean_intensity", "score"} <= set(table.columns)
    assert table["area"].between(300, 600).all()  # discs of radius 12: 452 pixels
    assert found.areas.tolist() == table["area"].tolist()
    with_probability = ready.segment(image, tta=False, scale=1.0, probability=True)
    assert with_probability.probability.dtype == np.float32 and with_probability.probability.shape == image.shape
    np.testing.assert_array_equal(with_probability.labels, found.labels)
    assert with_probability.probability[found.labels > 0].mean() > 0.5 > with_probability.probability[
        found.labels == 0].mean()


def test_measurements_reuse_the_solidity_the_nucleus_score_measured_whole_or_block_by_block(ready, tmp_path):
    ((image_id, image),) = ready_test_images(tmp_path, clusters=(2,))
    found = ready.segment(image, tta=False)
    expected = skimage.measure.regionprops_table(found.labels, properties=["label", "solidity"])
    assert found.count > 10 and np.array_equal(expected["label"], np.arange(1, found.count + 1))
    np.testing.assert_array_equal(found.solidity, expected["solidity"], err_msg=image_id)
    np.testing.assert_array_equal(found.measurements["solidity"], expected["solidity"])
    # in blocks of 96 pixels: the score's solidity for each nucleus kept whole, NaN where a neighbour trimmed it
    _, model_input, _ = ready.prepare(image)
    predict_tiles, tile_size, min_overlap = ready.predictor
    blocks = prediction.segment_image(predict_tiles, model_input, ready.postprocessing.replace(tta=False),
                                      tile_size=tile_size, min_overlap=min_overlap, block_size=96, margin=32)
    measured = skimage.measure.regionprops_table(blocks.labels, properties=["label", "solidity"])
    given = blocks.solidity[measured["label"] - 1]
    known = np.isfinite(given)
    assert image.shape[0] > 2 * 96 and len(blocks.solidity) == len(blocks.scores) and 0.5 < known.mean()
    np.testing.assert_allclose(given[known], measured["solidity"][known], rtol=1e-12)


def test_settings_can_be_changed_per_call_or_for_a_copy_that_shares_the_network(ready):
    plain = ready.with_settings(tta=False, scale=1.0)
    assert plain.postprocessing == ready.postprocessing.replace(tta=False, scale=1.0)
    assert ready.postprocessing.tta  # the ready model itself is unchanged
    assert plain.predictor is ready.predictor  # one network, loaded once
    np.testing.assert_array_equal(plain.segment(_cells()).labels, ready.segment(_cells(), tta=False, scale=1.0).labels)
    with pytest.raises(UserError, match="unknown setting.*colour"):
        ready.segment(_cells(), colour=True)
    with pytest.raises(UserError, match="threshold must be a number in"):
        ready.segment(_cells(), threshold=2.0)


@pytest.mark.parametrize("image, message", [
    (np.zeros((2, 3, 64, 64)), r"shape \(H, W\) or \(H, W, C\).*got shape \(2, 3, 64, 64\)"),
    (np.zeros((3, 64, 64)), r"got shape \(3, 64, 64\); segment a stack or a channel-first array plane by plane"),
    (np.zeros((0, 64)), r"the image is empty \(shape \(0, 64\)\)"),
    (np.full((64, 64), "a"), r"expected an array of numbers, got dtype <U1"),
    (np.full((64, 64), np.nan), r"all 4096 pixel values are NaN or infinite; nothing to segment"),
    (np.zeros((64, 64, 5)), r"at most 4 channels, got shape \(64, 64, 5\)"),
    (np.zeros((64, 64, 2, 2)), r"got shape \(64, 64, 2, 2\)"),
])
def test_bad_input_is_one_user_error_as_on_the_command_line(ready, image, message):
    with pytest.raises(UserError, match=message) as raised:
        ready.segment(image)
    assert "\n" not in str(raised.value)


def test_a_channel_is_chosen_and_non_finite_pixels_are_replaced_as_predict_does(ready, caplog):
    cells = _cells().astype(np.float32)
    stacked = np.stack([np.zeros_like(cells), cells, np.zeros_like(cells)], axis=-1)
    expected = ready.segment(cells, tta=False, scale=1.0).labels
    np.testing.assert_array_equal(ready.segment(stacked, channel=1, tta=False, scale=1.0).labels, expected)
    with pytest.raises(UserError, match="--channel 3 but the image has 3 channel"):
        ready.segment(stacked, channel=3)
    holed = cells.copy()
    holed[:3, :3] = np.nan
    with caplog.at_level(logging.WARNING, logger="nucleunet"):
        found = ready.segment(holed, tta=False, scale=1.0)
    assert found.nonfinite_pixels == 9 and "9 pixel values are NaN or infinite" in caplog.text
    filled = np.where(np.isnan(holed), np.nanmedian(holed), holed)
    np.testing.assert_array_equal(found.labels, ready.segment(filled, tta=False, scale=1.0).labels)


def test_load_model_takes_a_name_a_file_or_a_run_folder_and_says_where_it_looked(tmp_path):
    assert nucleunet.load_model().name == "unet_dsb2018"
    assert nucleunet.load_model("unet_dsb2018").path == READY
    assert nucleunet.load_model(READY).path == nucleunet.load_model(READY.parent).path == READY
    assert nucleunet.load_model(READY).postprocessing == nucleunet.load_model().postprocessing
    with pytest.raises(MissingPathError, match="no ready model named 'nope'.*unet_dsb2018"):
        models.ready_model_path("nope")
    with pytest.raises(MissingPathError, match="model not found: .*missing.keras"):
        nucleunet.load_model(tmp_path / "missing.keras")


def test_segment_files_writes_what_predict_writes_and_returns_its_tables(tmp_path, ready):
    skimage.io.imsave(tmp_path / "cells.png", _cells(), check_contrast=False)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    done = nucleunet.segment_files([tmp_path], ready, out=tmp_path / "runs", progress=False, tta=False)
    assert done.run_dir.parent == tmp_path / "runs" and done.counts["nuclei"].tolist() == [4]
    assert list(done.skipped) == [str(tmp_path / "broken.png")]
    assert json.loads((done.run_dir / "skipped.json").read_text()) == done.skipped
    assert json.loads((done.run_dir / "config.json").read_text())["postprocessing"]["tta"] is False
    assert (done.run_dir / "labels" / "cells.tif").is_file() and (done.run_dir / "counts.csv").is_file()


def test_importing_the_package_and_loading_a_model_start_no_backend():
    code = ("import sys, nucleunet; model = nucleunet.load_model(); "
            "print(model.name, [name for name in ('keras', 'tensorflow', 'jax') if name in sys.modules])")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "unet_dsb2018 []"

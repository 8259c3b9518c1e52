"""The 8-bit engine: the shipped copy is the ready model's, is used only when asked for, and gives labels close to the
float32 ones on real images; write_int8_copy makes one for any model, and a stale one is never used."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

import nucleunet
import unet
from nucleunet import hardware, models
from nucleunet.errors import UserError
from nucleunet.metrics import score_image

from conftest import ready_test_images

READY = models.ready_model_path()


def test_the_shipped_int8_copy_is_the_ready_models_and_auto_takes_it_where_the_cpu_has_8_bit_dot_products(
        monkeypatch):
    assert json.loads((READY.parent / "int8.json").read_text())["keras_sha256"] == models.file_sha256(READY)
    assert nucleunet.load_model(engine="int8").engine == "int8"
    assert nucleunet.load_model(engine="float32").engine == "onnx"
    expected = "int8" if hardware.cpu_flags() & models.INT8_CPU_FLAGS else "onnx"
    assert nucleunet.load_model().engine == expected
    for flags, engine in (({"avx2", "fma"}, "onnx"), ({"avx2", "avx_vnni"}, "int8"), ({"avx512f", "avx512_vnni"}, "int8"),
                          (set(), "onnx")):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert nucleunet.load_model().engine == engine, flags
        assert nucleunet.load_model(engine="float32").engine == "onnx"


def test_int8_labels_are_close_to_float32_labels_on_real_images(tmp_path):
    # The tolerance of docs/results/int8/decision_rule.txt, on three test images of different kinds
    float32, int8 = nucleunet.load_model(engine="onnx"), nucleunet.load_model(engine="int8")
    for index, (image_id, image) in enumerate(ready_test_images(tmp_path)):
        settings = {} if index == 0 else {"tta": False}  # the first at the full defaults
        reference, found = float32.segment(image, **settings), int8.segment(image, **settings)
        assert reference.count > 0
        assert score_image(reference.labels, found.labels, found.mask).map >= 0.9, image_id
        assert ((reference.labels > 0) == (found.labels > 0)).mean() >= 0.95, image_id


def test_write_int8_copy_quantizes_a_model_to_predict_close_to_it(tmp_path):
    network = unet.build_unet((None, None, 1), depth=2, base_filters=8, output_channels=2)
    rng = np.random.default_rng(5)
    for weight in network.weights:
        weight.assign(rng.normal(0, 0.3, weight.shape).astype(np.float32))
    network.save(tmp_path / "model.keras")
    images = [rng.random((int(rng.integers(40, 90)), 100)).astype(np.float32) for _ in range(5)]
    tiles = models.calibration_tiles(images, count=8, side=64)
    assert tiles.shape == (8, 64, 64, 1) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles, models.calibration_tiles(images, count=8, side=64))  # seeded
    path = models.write_int8_copy(tmp_path / "model.keras", tiles)
    assert path == tmp_path / "model.int8.onnx" and (tmp_path / "model.onnx").is_file()
    trained = models.TrainedModel.open(tmp_path / "model.keras")
    assert trained.int8_path() == path and trained.engine("float32") == "onnx" and trained.engine("int8") == "int8"
    probe = rng.random((2, 64, 96, 1)).astype(np.float32)
    expected = models.OnnxNetwork(tmp_path / "model.onnx").predict_on_batch(probe)
    quantized = models.OnnxNetwork(path).predict_on_batch(probe)
    assert quantized.shape == expected.shape and np.ptp(expected) > 0.01
    assert np.abs(quantized - expected).mean() < 0.05 * np.ptp(expected)
    with pytest.raises(ValueError, match="calibration tiles"):
        models.write_int8_copy(tmp_path / "model.keras", tiles[..., 0])


def test_a_stale_or_missing_int8_copy_is_never_used(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_vnni"})  # where 'auto' would take a good one
    folder = tmp_path / "model"
    shutil.copytree(READY.parent, folder)
    (folder / "int8.json").write_text(json.dumps({"source": "model.onnx", "keras_sha256": "0" * 64}))
    trained = models.TrainedModel.open(folder / "model.keras")
    with caplog.at_level(logging.WARNING, logger="nucleunet.models"):
        with pytest.raises(UserError, match="the int8 engine needs"):
            trained.engine("int8")
    assert "was not made from model.keras" in caplog.text
    assert trained.engine() == "onnx"
    (folder / "int8.json").unlink()
    with pytest.raises(UserError, match="the int8 engine needs"):
        models.TrainedModel.open(folder / "model.keras").engine("int8")
    with pytest.raises(UserError, match="needs images"):
        models.calibration_tiles([])


def test_evaluate_measures_on_float32_where_auto_would_take_the_8_bit_copy(tmp_path, monkeypatch, synthetic_folder):
    import train_and_predicted_masks as cli

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_vnni"})
    assert nucleunet.load_model().engine == "int8"
    assert cli.main(["evaluate", str(READY), "--subset", "all", "--data", str(synthetic_folder), "--no-tta",
                     "--figures-per-cluster", "0", "--out", str(tmp_path / "runs"), "--no-cache", "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["engine"] == "onnx"

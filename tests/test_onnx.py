"""The ONNX Runtime engine: the shipped ONNX copy is the ready model's, it gives the labels Keras gives on real images,
and export writes one; a stale copy is never used."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import skimage.io

import nucleunet
import train_and_predicted_masks as cli
import unet
from nucleunet import models
from nucleunet.errors import UserError

from conftest import ready_test_images

READY = models.ready_model_path()


def test_the_shipped_onnx_copy_is_the_ready_models_and_is_the_float32_engine():
    assert json.loads((READY.parent / "onnx.json").read_text())["keras_sha256"] == models.file_sha256(READY)
    assert nucleunet.load_model(engine="float32").engine == "onnx"
    assert nucleunet.load_model(engine="keras").engine == "keras"


def test_onnx_runtime_and_keras_give_the_same_labels_on_real_images(tmp_path):
    onnx, keras = nucleunet.load_model(engine="onnx"), nucleunet.load_model(engine="keras")
    for index, (image_id, image) in enumerate(ready_test_images(tmp_path)):
        settings = {} if index == 0 else {"tta": False}  # the first at the full defaults
        by_onnx = onnx.segment(image, probability=True, **settings)
        by_keras = keras.segment(image, probability=True, **settings)
        np.testing.assert_allclose(by_onnx.probability, by_keras.probability, atol=1e-3)
        np.testing.assert_array_equal(by_onnx.labels, by_keras.labels, err_msg=image_id)
        assert by_onnx.count > 0


def test_export_writes_an_onnx_copy_that_predicts_what_keras_predicts(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    network = unet.build_unet((None, None, 1), depth=2, base_filters=4, output_channels=2)
    rng = np.random.default_rng(3)
    for weight in network.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))
    network.save(run_dir / "model.keras")
    assert cli.main(["export", str(run_dir / "model.keras"), "--format", "keras", "--out", str(tmp_path / "e")]) == 0
    (export_dir,) = (tmp_path / "e").iterdir()
    exported = models.TrainedModel.open(export_dir / "model.keras")
    assert exported.onnx_path() == export_dir / "model.onnx" and exported.engine() == "onnx"
    tiles = rng.random((3, 64, 96, 1)).astype(np.float32)
    expected = unet.load_model(export_dir / "model.keras").predict(tiles, verbose=0)
    np.testing.assert_allclose(models.OnnxNetwork(export_dir / "model.onnx").predict_on_batch(tiles), expected,
                               atol=1e-4)
    assert np.ptp(expected) > 0.01


def test_a_stale_onnx_copy_is_ignored_and_the_onnx_engine_then_refused(tmp_path, caplog):
    folder = tmp_path / "model"
    shutil.copytree(READY.parent, folder)
    (folder / "onnx.json").write_text(json.dumps({"source": "model.keras", "keras_sha256": "0" * 64}))
    trained = models.TrainedModel.open(folder / "model.keras")
    with caplog.at_level(logging.WARNING, logger="nucleunet.models"):
        assert trained.engine("float32") == "keras"
    assert "was not made from model.keras" in caplog.text
    with pytest.raises(UserError, match="the ONNX engine needs"):
        trained.engine("onnx")
    with pytest.raises(UserError, match="engine must be one of"):
        trained.engine("tensorrt")


def fresh_python(script: str, cwd) -> subprocess.CompletedProcess:
    """``script`` run by a new interpreter of this environment in ``cwd``; it must succeed."""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def test_segmenting_from_python_on_onnx_runtime_loads_neither_tensorflow_nor_keras(tmp_path):
    # In a fresh interpreter (this one has loaded both): a user who segments on ONNX Runtime pays for no backend.
    script = ("import sys, numpy as np, nucleunet\n"
              "image = np.zeros((128, 128), np.uint8); image[40:62, 40:62] = 200\n"
              "result = nucleunet.load_model(engine='onnx').segment(image, tta=False)\n"
              "print(result.count, sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))\n")
    assert fresh_python(script, tmp_path).stdout.split("\n")[-2] == "1 []"


def test_predict_from_the_shell_runs_where_keras_and_tensorflow_are_not_installed(tmp_path):
    # As in a prediction-only install (pip install nucleunet, without the tensorflow extra): importing either
    # fails. predict segments on ONNX Runtime; a command that needs them says what to install, in one line.
    image = np.zeros((128, 160), np.uint8)
    for top, left in ((20, 20), (20, 100), (80, 60)):
        image[top:top + 22, left:left + 22] = 200
    skimage.io.imsave(tmp_path / "cells.png", image, check_contrast=False)
    script = ("import sys\n"
              "for name in ('keras', 'tensorflow', 'tf2onnx'): sys.modules[name] = None  # not installed\n"
              f"sys.path.insert(0, {str(cli.__file__.rsplit('/', 1)[0])!r})\n"
              "import train_and_predicted_masks as cli\n"
              "codes = [cli.main(argv) for argv in (['predict', 'cells.png', '--out', 'runs', '--quiet'],\n"
              "                                     ['predict', 'cells.png', '--engine', 'keras', '--quiet'],\n"
              "                                     ['export', 'unet_dsb2018', '--out', 'exports'])]\n"
              "print('CODES', codes, sorted(m for m in ('tensorflow', 'keras') if sys.modules.get(m)))\n")
    finished = fresh_python(script, tmp_path)
    assert "CODES [0, 2, 2] []" in finished.stdout, finished.stdout[-2000:]
    assert finished.stderr.count('pip install "nucleunet[tensorflow]"') == 2, finished.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert pd.read_csv(run_dir / "counts.csv")["nuclei"].tolist() == [3]

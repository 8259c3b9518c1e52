"""The same training, evaluation and prediction code on each installed Keras backend.

Keras fixes its backend at first import, so each backend runs in a process of its own
(``tests/run_cli.py``). A backend whose package is missing is skipped with the reason. The
JAX and PyTorch runs make TensorFlow unimportable, to show that nothing on their path needs it.
"""

from __future__ import annotations

import importlib.util
import json

import keras
import numpy as np
import pandas as pd
import pytest

import unet
from nucleunet.config import PRESETS

from conftest import run_cli_process

BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
RUN_FILES = ("config.json", "split.csv", "clusters.json", "model.keras", "state.json", "history.csv",
             "training.json", "metrics.json", "postprocessing.json")


def require_backend(backend: str) -> None:
    package = BACKEND_PACKAGES[backend]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"the {backend} backend is not tested here: the {package} package is not installed")


ALL_BACKENDS = pytest.mark.parametrize("backend_run", sorted(BACKEND_PACKAGES), indirect=True)


@pytest.fixture(scope="module")
def backend_run(request, tmp_path_factory, synthetic_training_set):
    """A smoke-preset training run (training, test-split evaluation, figures) and a prediction on one backend.

    Returns (backend, run folder, result of ``tests/run_cli.py``, its output).
    """
    backend = request.param
    require_backend(backend)
    folder, split = synthetic_training_set
    runs = tmp_path_factory.mktemp(f"runs-{backend}")
    args = ["train", "--preset", "smoke", "--data", str(folder), "--split", str(split), "--out", str(runs), "--no-cache",
            "--quiet"]
    result, output = run_cli_process({"runs": [args], "predict_runs_in": str(runs),
                                      "block_tensorflow": backend != "tensorflow"},
                                     env={"KERAS_BACKEND": backend})
    assert result.get("codes") == [0], output[-4000:]
    (run_dir,) = runs.iterdir()
    return backend, run_dir, result, output


@ALL_BACKENDS
def test_run_folder_is_complete_on_every_backend(backend_run):
    backend, run_dir, result, _ = backend_run
    assert result["backend"] == backend  # the training really ran on it
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 1 and np.isfinite(history[["loss", "dice", "val_loss", "val_dice"]].to_numpy()).all()
    assert sorted(path.name for path in (run_dir / "figures").iterdir()) == ["cluster_0.png", "cluster_1.png",
                                                                              "cluster_2.png"]


@ALL_BACKENDS
def test_test_images_are_evaluated_on_every_backend(backend_run):
    _, run_dir, _, _ = backend_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(row["image_id"] for row in metrics["per_image"]) == ["img06", "img07", "img08"]
    assert all(0.0 <= row["dice"] <= 1.0 and 0.0 <= row["map"] <= 1.0 for row in metrics["per_image"])


@ALL_BACKENDS
def test_saved_model_loads_and_predicts_probabilities_on_every_backend(backend_run):
    _, _, result, _ = backend_run
    prediction = result["predict"]
    channels = 2 if PRESETS["smoke"].get("contacts") else 1  # nuclei (+ contacts)
    assert prediction["shape"] == [2, 256, 256, channels] and prediction["finite"]
    assert 0.0 <= prediction["min"] <= prediction["max"] <= 1.0


@pytest.mark.parametrize("backend_run", ["jax", "torch"], indirect=True)
def test_jax_and_torch_runs_need_no_tensorflow(backend_run):
    _, run_dir, result, _ = backend_run
    assert result["tensorflow_imported"] is False
    assert not (run_dir / "logs").exists()  # TensorBoard logs need TensorFlow; everything else is written


@pytest.mark.parametrize("backend_run", ["tensorflow"], indirect=True)
def test_tensorflow_run_writes_tensorboard_logs(backend_run):
    _, run_dir, _, _ = backend_run
    assert any((run_dir / "logs").rglob("*tfevents*"))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_trained_with_tf_distribute_predicts_the_same_on_another_backend(backend, tmp_path):
    """Synchronized batch norm (--distribute on TensorFlow) must not tie a saved model to TensorFlow."""
    require_backend(backend)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the model is saved by this process, whose Keras backend is not TensorFlow")
    model = unet.build_unet((32, 32, 1), depth=2, base_filters=4, batch_norm=True, synchronized_batch_norm=True)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # statistics away from 0 and 1, so that inference-mode batch norm shows
        if "moving" in weight.path:
            weight.assign(rng.uniform(0.2, 1.5, weight.shape).astype(np.float32))
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    tiles = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)  # as tests/run_cli.py draws them
    expected = model.predict(tiles, verbose=0)
    result, output = run_cli_process({"runs": [], "predict_runs_in": str(tmp_path), "block_tensorflow": True,
                                      "predictions_file": str(tmp_path / "predictions.npy")},
                                     env={"KERAS_BACKEND": backend})
    assert result.get("backend") == backend, output[-4000:]
    np.testing.assert_allclose(np.load(tmp_path / "predictions.npy"), expected, atol=1e-5)

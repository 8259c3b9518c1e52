"""Interruptions, NaN, leakage, determinism and bad command lines: never a lost run, never a silent error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dsb
import train_and_predicted_masks as cli
import unet

PROJECT = Path(cli.__file__).resolve().parent


def _records_and_split(synthetic_folder, tmp_path):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    ids = [r.image_id for r in records]
    subsets = (["train"] * 8 + ["cv"] * 2 + ["test"] * 2)
    split = pd.DataFrame({"image_id": ids, "cluster": [0] * len(ids), "subset": subsets})
    return records, split


def _config(**overrides):
    values = dict(preset="smoke", epochs=2, steps_per_epoch=2, batch_size=2, depth=2, base_filters=2,
                  tile_size=64, min_overlap=16, learning_rate=1e-3, loss="bce_dice")
    return cli.TrainConfig.from_dict({**values, **overrides})


# ---- leakage and determinism ---------------------------------------------------------------

def test_no_test_image_or_tile_reaches_training_or_cv(synthetic_folder, tmp_path):
    records, split = _records_and_split(synthetic_folder, tmp_path)
    marker = np.float32(0.123)  # a value no real tile holds: test images are filled with it
    test_ids = set(split.loc[split["subset"] == "test", "image_id"])
    for record in records:
        if record.image_id in test_ids:
            record.image[:] = marker
    data = cli.prepare_training_data(records, split, _config())
    assert not set(data["train_ids"]) & test_ids and not set(data["cv_ids"]) & test_ids
    assert set(data["train_ids"]) == set(split.loc[split["subset"] == "train", "image_id"])
    assert set(data["cv_ids"]) == set(split.loc[split["subset"] == "cv", "image_id"])
    for name in ("train_images", "cv_images"):
        assert not np.any(np.isclose(data[name].astype(np.float32), marker, atol=1e-4)), name
    sequence = cli.make_training_sequence(data["train_images"], data["train_masks"], _config(steps_per_epoch=20))
    for index in range(len(sequence)):
        assert not np.any(np.isclose(sequence[index][0], marker, atol=1e-4))


def test_same_seed_gives_the_same_split_and_tiles(tmp_path, synthetic_folder):
    runs = []
    for attempt in range(2):
        records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
        stats = dsb.image_statistics(records)
        split = dsb.load_or_make_split(stats, tmp_path / f"split{attempt}.csv", seed=3, n_clusters=2)
        runs.append((split, cli.prepare_training_data(records, split, _config())))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])
    for key in ("train_images", "train_masks", "cv_images", "cv_masks"):
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])


def test_each_epoch_draws_its_own_batches(synthetic_folder, tmp_path):
    import keras

    records, split = _records_and_split(synthetic_folder, tmp_path)
    data = cli.prepare_training_data(records, split, _config())
    sequence = cli.make_training_sequence(data["train_images"], data["train_masks"], _config())
    events = []
    plain = type(sequence).__getitem__

    def getitem(self, index):
        events.append((self.epoch, index))
        return plain(self, index)

    class MarkStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("start")

    type(sequence).__getitem__ = getitem
    model = unet.build_unet((64, 64, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(sequence, epochs=3, initial_epoch=1, callbacks=[cli.epoch_setter(sequence), MarkStart()], verbose=0)
    # Keras peeks at batches for their shapes before training starts; those are not trained on.
    trained = events[events.index("start") + 1:]
    assert sorted(trained) == [(1, 0), (1, 1), (2, 0), (2, 1)]


# ---- NaN -----------------------------------------------------------------------------------

def _loss_nan_from_step(monkeypatch, step: int) -> None:
    """Make the training loss NaN from optimizer step ``step`` on (0: the first), on any CPU.

    A NaN fed in as pixels is not enough: TensorFlow's oneDNN kernels fuse convolution and ReLU, and
    on some CPUs (AVX-512 ones among them) that fused ReLU turns a NaN input into 0, so the loss
    stays finite. A product with NaN is NaN on every instruction set, and its gradient makes the
    weights NaN as a real divergence would.
    """
    import keras

    original = cli.build_model

    def build_model(config):
        model = original(config)
        base_loss, iterations = model.loss, model.optimizer.iterations

        def loss(y_true, y_pred):
            factor = keras.ops.where(keras.ops.greater_equal(iterations, step), float("nan"), 1.0)
            return base_loss(y_true, y_pred) * factor

        model.compile(optimizer=model.optimizer, loss=loss, metrics=[unet.DiceCoefficient()])
        return model

    monkeypatch.setattr(cli, "build_model", build_model)


def test_nan_loss_before_any_checkpoint_is_a_clear_error(synthetic_folder, tmp_path, monkeypatch):
    records, split = _records_and_split(synthetic_folder, tmp_path)
    _loss_nan_from_step(monkeypatch, 0)
    with pytest.raises(ValueError, match="the loss became NaN in epoch 1, before any model was saved"):
        cli.train(_config(), tmp_path, cli.prepare_training_data(records, split, _config()), progress=False)
    assert not (tmp_path / "model.keras").exists()


def test_nan_loss_later_keeps_the_last_good_checkpoint(synthetic_folder, tmp_path, monkeypatch):
    records, split = _records_and_split(synthetic_folder, tmp_path)
    _loss_nan_from_step(monkeypatch, 2)  # two steps per epoch: epoch 1 is finite, epoch 2 is not
    checkpoint = cli.train(_config(epochs=4), tmp_path, cli.prepare_training_data(records, split, _config()),
                           progress=False)
    assert checkpoint.exists()
    assert json.loads((tmp_path / "training.json").read_text())["stopped_by_nan_loss"] is True
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2  # epoch 2 ran, and stopped training
    weights = cli.load_model(checkpoint).get_weights()
    assert all(np.isfinite(w).all() for w in weights)


# ---- interruption --------------------------------------------------------------------------

def _cli_process(args, log_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(PROJECT / "train_and_predicted_masks.py"), *args],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=PROJECT)


def test_run_killed_mid_training_resumes_without_losing_split_or_history(tmp_path, real_subset_zip):
    common = ["--data", str(real_subset_zip), "--split", str(tmp_path / "split.csv"), "--out", str(tmp_path / "runs"),
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    process = _cli_process(["--preset", "smoke", "--epochs", "12", "--steps-per-epoch", "3", *common],
                           tmp_path / "first.log")
    deadline = time.monotonic() + 240
    state_files = []
    while time.monotonic() < deadline and process.poll() is None:
        state_files = list((tmp_path / "runs").glob("*/state.json"))
        if state_files and json.loads(state_files[0].read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed: " + (tmp_path / "first.log").read_text()
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = state_files[0].parent
    split_before = (run_dir / "split.csv").read_bytes()
    killed_at = json.loads((run_dir / "state.json").read_text())["epoch"]
    assert killed_at < 11 and not (run_dir / "metrics.json").exists()
    for name in ("model.keras", "last.keras"):  # whatever the kill interrupted, these load
        cli.load_model(run_dir / name)

    resumed = _cli_process(["--resume", str(run_dir), *common[:2], "--cache-dir", str(tmp_path / "cache"), "--quiet"],
                           tmp_path / "second.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    assert f"resuming after epoch {killed_at + 1}" in log
    assert (run_dir / "split.csv").read_bytes() == split_before
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(12))
    assert (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".*partial*"))


def test_resume_of_a_folder_that_is_not_a_run_is_an_error(tmp_path, capsys):
    assert cli.main(["--resume", str(tmp_path)]) == 2
    assert "is not a training run folder" in capsys.readouterr().err


# ---- bad command lines ---------------------------------------------------------------------

def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_model_file_that_is_not_keras(tmp_path, capsys, synthetic_folder):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"this is not a model")
    assert cli.main(["--evaluate", str(fake), "--subset", "all", "--data", str(synthetic_folder),
                     "--out", str(tmp_path / "runs"), "--no-cache", "--quiet"]) == 2
    assert "is not a readable Keras model" in _one_line_error(capsys)


def test_model_whose_input_does_not_fit(tmp_path, capsys, synthetic_folder):
    path = tmp_path / "rgb.keras"
    unet.build_unet((None, None, 3), depth=2, base_filters=2).save(path)
    assert cli.main(["--predict", str(path), "--input", str(synthetic_folder), "--out", str(tmp_path / "runs"),
                     "--quiet"]) == 2
    assert "expected a model from (batch, H, W, 1)" in _one_line_error(capsys)


def test_output_folder_that_cannot_be_written(tmp_path, capsys, synthetic_folder):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert cli.main(["--preset", "smoke", "--data", str(synthetic_folder), "--out", str(blocker / "runs"),
                     "--quiet"]) == 2
    assert str(blocker) in _one_line_error(capsys)


def test_negative_size_on_the_command_line(capsys):
    assert cli.main(["--preset", "smoke", "--steps-per-epoch", "-5"]) == 2
    assert _one_line_error(capsys) == "error: steps_per_epoch must be at least 1, got -5"


def test_changed_dataset_is_a_one_line_error(tmp_path, capsys, synthetic_folder):
    split = tmp_path / "split.csv"
    pd.DataFrame({"image_id": ["other"], "cluster": [0], "subset": ["test"]}).to_csv(split, index=False)
    assert cli.main(["--preset", "smoke", "--data", str(synthetic_folder), "--split", str(split),
                     "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 2
    assert "the dataset no longer matches the split" in _one_line_error(capsys)

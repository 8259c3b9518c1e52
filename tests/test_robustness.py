"""Interruptions: a run killed at any moment loses neither its split nor its history, and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import train_and_predicted_masks as cli
import unet

PROJECT = Path(cli.__file__).resolve().parent


def _cli_process(args, log_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(PROJECT / "train_and_predicted_masks.py"), *args],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, cwd=PROJECT)


def test_run_killed_mid_training_resumes_without_losing_split_or_history(tmp_path, real_subset_zip):
    data = ["--data", str(real_subset_zip), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    process = _cli_process(["train", "--preset", "smoke", "--epochs", "12", "--steps-per-epoch", "3", *data,
                            "--split", str(tmp_path / "split.csv"), "--out", str(tmp_path / "runs")],
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
    state = json.loads((run_dir / "state.json").read_text())
    for path in (run_dir / "model.keras", run_dir / "checkpoints" / state["last"]):  # whatever the kill interrupted,
        unet.load_model(path)                                                      # state.json names what loads

    # The resume is killed too, after it has trained an epoch: the record keeps both resumes.
    resumed = _cli_process(["resume", str(run_dir), *data], tmp_path / "second.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and resumed.poll() is None:
        if json.loads((run_dir / "state.json").read_text())["epoch"] >= killed_at + 1:
            break
        time.sleep(0.05)
    assert resumed.poll() is None, "the resume ended before it was killed: " + (tmp_path / "second.log").read_text()
    resumed.send_signal(signal.SIGKILL)
    resumed.wait()
    killed_again_at = json.loads((run_dir / "state.json").read_text())["epoch"]
    assert killed_at < killed_again_at < 11

    resumed = _cli_process(["resume", str(run_dir), *data], tmp_path / "third.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "third.log").read_text()
    assert json.loads((run_dir / "training.json").read_text())["resumed_after_epochs"] == [killed_at + 1,
                                                                                           killed_again_at + 1]
    assert (run_dir / "split.csv").read_bytes() == split_before
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(12))
    assert (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".*partial*"))


def test_resume_of_a_folder_that_is_not_a_run_is_an_error(tmp_path, capsys):
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "is not a training run folder" in capsys.readouterr().err

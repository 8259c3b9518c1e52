"""--distribute: MirroredStrategy, two MultiWorkerMirroredStrategy workers on localhost, JAX DataParallel.

Devices and workers are fixed when a process starts, so every training here runs in processes of
its own (``tests/run_cli.py``): two logical CPU devices stand in for two GPUs, two processes on
free localhost ports for two machines, and XLA's forced host device count for two JAX devices.
"""

from __future__ import annotations

import importlib.util
import json
import socket

import keras
import numpy as np
import pandas as pd
import pytest

import train_and_predicted_masks as cli
from nucleunet import distribute, runs, training
from nucleunet.config import TrainConfig

from conftest import finish_cli_process, run_cli_process, start_cli_process, write_split

RUN_FILES = ("config.json", "split.csv", "clusters.json", "model.keras", "state.json", "history.csv", "metrics.json",
             "training.json")


def smoke_args(folder, split, out, *extra) -> list[str]:
    return ["train", "--preset", "smoke", "--data", str(folder), "--split", str(split), "--out", str(out), "--no-cache",
            "--quiet", *extra]


def only_run_folder(out):
    (run_dir,) = out.iterdir()
    return run_dir


# ---- configuration and command line ----------------------------------------------------------

def test_distribute_must_be_a_known_mode():
    assert TrainConfig(preset="smoke").distribute == "none"
    with pytest.raises(ValueError, match="distribute must be one of"):
        TrainConfig(preset="smoke", distribute="horovod")


def test_multiworker_refuses_a_time_budget():
    with pytest.raises(ValueError, match="cannot be used with distribute='multiworker'"):
        TrainConfig(preset="cpu", minutes=14.0, distribute="multiworker")


def test_minutes_zero_on_the_command_line_means_no_time_budget():
    args = cli.build_arg_parser().parse_args(["train", "--preset", "cpu", "--minutes", "0",
                                              "--distribute", "multiworker"])
    config = cli.config_from_args(args)
    assert config.minutes is None and config.distribute == "multiworker"


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "TF_CONFIG must hold a cluster"),
    ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG must hold a cluster"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "is not a chief or worker"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "ps", "index": 0}}', "is not a chief or worker"),
])
def test_tf_config_must_place_this_process_in_the_cluster(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        distribute.read_tf_config()


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
    ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}, False),
    ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0}, True),
])
def test_chief_is_the_named_chief_or_else_worker_zero(cluster, task, chief):
    assert distribute.is_chief_task({"cluster": cluster, "task": task}) is chief


def test_cli_multiworker_without_tf_config_is_a_one_line_error(monkeypatch, tmp_path, capsys, synthetic_training_set):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    folder, split = synthetic_training_set
    assert cli.main(smoke_args(folder, split, tmp_path / "runs", "--distribute", "multiworker")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --distribute multiworker needs TF_CONFIG") and "\n" not in error
    assert not (tmp_path / "runs").exists()


def test_cli_multiworker_needs_an_existing_split(tmp_path, capsys, synthetic_training_set):
    folder, _ = synthetic_training_set
    missing = tmp_path / "split.csv"
    assert cli.main(smoke_args(folder, missing, tmp_path / "runs", "--distribute", "multiworker")) == 2
    assert "needs the same existing split file on every worker" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "runs").exists()


def test_cli_resume_of_a_multiworker_run_is_a_one_line_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    runs.write_json(run_dir / "config.json", TrainConfig(preset="smoke", distribute="multiworker").to_dict())
    (run_dir / "split.csv").write_text("image_id,cluster,subset\n")
    training.new_state(run_dir)
    assert cli.main(["resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: resume of a multi-worker run is not supported")


# ---- MirroredStrategy over two logical CPU devices ---------------------------------------------

@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory, synthetic_training_set):
    """In one process with two logical CPU devices: a smoke run on one device, the same mirrored over both,
    and a mirrored run whose batch the two devices cannot share. Returns (folder, result, output)."""
    folder, split = synthetic_training_set
    out = tmp_path_factory.mktemp("mirrored")
    runs = [smoke_args(folder, split, out / "single"),
            smoke_args(folder, split, out / "mirrored", "--distribute", "mirrored"),
            smoke_args(folder, split, out / "odd", "--distribute", "mirrored", "--batch-size", "3")]
    result, output = run_cli_process({"runs": runs, "logical_cpus": 2}, env={"KERAS_BACKEND": "tensorflow"})
    assert "codes" in result, output[-4000:]
    return out, result, output


def test_mirrored_strategy_splits_the_global_batch_over_two_devices(mirrored_runs):
    out, result, output = mirrored_runs
    assert result["codes"][1] == 0, output[-4000:]
    run_dir = only_run_folder(out / "mirrored")
    assert json.loads((run_dir / "training.json").read_text())["replicas"] == 2
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "config.json").read_text())["distribute"] == "mirrored"


def test_mirrored_loss_is_the_one_device_loss_not_the_sum_over_replicas(mirrored_runs):
    """The BCE+Dice loss is averaged over replicas; its Dice term is each replica's, hence not exactly equal."""
    out, result, output = mirrored_runs
    assert result["codes"][:2] == [0, 0], output[-4000:]
    single = pd.read_csv(only_run_folder(out / "single") / "history.csv")
    mirrored = pd.read_csv(only_run_folder(out / "mirrored") / "history.csv")
    np.testing.assert_allclose(mirrored[["loss", "val_loss"]], single[["loss", "val_loss"]], rtol=0.02)


def test_mirrored_batch_not_divisible_by_the_replicas_is_a_one_line_error(mirrored_runs):
    out, result, output = mirrored_runs
    assert result["codes"][2] == 2
    assert "error: --batch-size 3 is the global batch and must be divisible by the 2 replicas\n" in output
    assert not (out / "odd").exists()


# ---- two MultiWorkerMirroredStrategy workers on localhost -----------------------------------------

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


WORKER_ARGS = ("--loss", "bce", "--batch-size", "4", "--steps-per-epoch", "1", "--epochs", "3")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, synthetic_training_set):
    """Two workers on localhost train 3 steps of a global batch of 4 (2 tiles each), plus the same run in one process.

    Each worker has its own output folder, temporary folder and copy of its final model.
    Returns (folder, [(result, output) per worker]).
    """
    folder, split = synthetic_training_set
    root = tmp_path_factory.mktemp("workers")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        (root / f"tmp{index}").mkdir()
        request = {"runs": [smoke_args(folder, split, root / f"out{index}", "--distribute", "multiworker",
                                       *WORKER_ARGS)],
                   "keep_last_model": str(root / f"worker{index}.keras")}
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        processes.append(start_cli_process(request, env={"KERAS_BACKEND": "tensorflow", "TF_CONFIG": json.dumps(tf_config),
                                                         "TMPDIR": str(root / f"tmp{index}")}))
    workers = [finish_cli_process(process, timeout=240) for process in processes]
    for result, output in workers:
        assert result.get("codes") == [0], output[-4000:]
    assert cli.main(smoke_args(folder, split, root / "single", *WORKER_ARGS)) == 0
    return root, workers


def test_two_workers_form_one_strategy_of_two_replicas(two_workers):
    root, _ = two_workers
    assert json.loads((only_run_folder(root / "out0") / "training.json").read_text())["replicas"] == 2


def test_two_workers_end_with_identical_weights(two_workers):
    root, _ = two_workers
    chief, other = (keras.models.load_model(root / f"worker{index}.keras") for index in range(2))
    assert [weight.path for weight in chief.weights] == [weight.path for weight in other.weights]
    # Batch-norm moving statistics included. Not bit for bit: each worker runs its own forward pass and
    # update, and how a CPU's kernels round may differ between processes; a worker out of step differs by far more.
    for mine, theirs in zip(chief.weights, other.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7, err_msg=mine.path)


def test_only_the_chief_writes_a_run_folder(two_workers):
    root, workers = two_workers
    run_dir = only_run_folder(root / "out0")
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    assert not (root / "out1").exists()
    assert list((root / "tmp1").iterdir()) == []  # the worker's scratch folder was removed
    assert "the chief wrote the run folder" in workers[1][1]


def test_two_workers_train_like_one_process_on_the_same_global_batch(two_workers):
    """Each worker takes its half of every global batch: together they see what one process sees."""
    root, _ = two_workers
    chief = pd.read_csv(only_run_folder(root / "out0") / "history.csv")
    single = pd.read_csv(only_run_folder(root / "single") / "history.csv")
    assert len(chief) == len(single) == 3
    np.testing.assert_allclose(chief[["loss", "val_loss"]], single[["loss", "val_loss"]], rtol=1e-4)


# ---- JAX: keras.distribution.DataParallel ------------------------------------------------------

@pytest.fixture(scope="module")
def jax_data_parallel(tmp_path_factory, synthetic_training_set):
    """On JAX with two forced host devices and TensorFlow unimportable: a mirrored smoke run with 7 CV tiles,
    a multi-worker run and an odd batch (both refused). Returns (folder, result, output)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("the jax package is not installed")
    folder, _ = synthetic_training_set
    out = tmp_path_factory.mktemp("jax")
    subsets = {f"img{index:02d}": "cv" if index in (3, 4, 5, 6) else "test" if index in (7, 8) else "train"
               for index in range(12)}
    split = write_split(out / "split.csv", subsets)  # CV: 1 + 1 + 4 + 1 = 7 tiles of 256
    runs = [smoke_args(folder, split, out / "mirrored", "--distribute", "mirrored"),
            smoke_args(folder, split, out / "multiworker", "--distribute", "multiworker"),
            smoke_args(folder, split, out / "odd", "--distribute", "mirrored", "--batch-size", "3")]
    result, output = run_cli_process({"runs": runs, "block_tensorflow": True},
                                     env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert "codes" in result, output[-4000:]
    return out, result, output


def test_jax_data_parallel_trains_on_two_devices(jax_data_parallel):
    out, result, output = jax_data_parallel
    assert result["codes"][0] == 0, output[-4000:]
    run_dir = only_run_folder(out / "mirrored")
    assert json.loads((run_dir / "training.json").read_text())["replicas"] == 2
    for name in RUN_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    history = pd.read_csv(run_dir / "history.csv")
    assert np.isfinite(history[["loss", "val_loss", "val_dice"]].to_numpy()).all()


def test_jax_data_parallel_validates_on_the_tiles_two_devices_can_share(jax_data_parallel):
    out, result, output = jax_data_parallel
    assert result["codes"][0] == 0, output[-4000:]
    assert json.loads((only_run_folder(out / "mirrored") / "training.json").read_text())["validation_tiles"] == 6


def test_multiworker_on_jax_is_a_one_line_error(jax_data_parallel):
    out, result, output = jax_data_parallel
    assert result["codes"][1] == 2
    assert "error: --distribute multiworker is not available on the jax backend" in output
    assert not (out / "multiworker").exists()


def test_jax_batch_not_divisible_by_the_devices_is_a_one_line_error(jax_data_parallel):
    _, result, output = jax_data_parallel
    assert result["codes"][2] == 2
    assert "error: --batch-size 3 is the global batch and must be divisible by the 2 replicas\n" in output


# ---- PyTorch: no distribution here ----------------------------------------------------------------

def test_mirrored_on_torch_is_a_one_line_error(tmp_path, synthetic_training_set):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the torch package is not installed")
    folder, split = synthetic_training_set
    result, output = run_cli_process({"runs": [smoke_args(folder, split, tmp_path / "runs", "--distribute",
                                                          "mirrored")], "block_tensorflow": True},
                                     env={"KERAS_BACKEND": "torch"})
    assert result.get("codes") == [2], output[-4000:]
    assert "error: --distribute mirrored is not available on the torch backend" in output

"""``export --model M --format savedmodel``: a SavedModel that TensorFlow reloads with the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import train_and_predicted_masks as cli
import unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small U-Net as trained with --distribute (synchronized batch norm) saved in a run folder, and its export.

    Returns (model path, export folder, exit code, printed output).
    """
    run_dir = tmp_path_factory.mktemp("run")
    keras_model = unet.build_unet((32, 32, 1), depth=2, base_filters=4, batch_norm=True, synchronized_batch_norm=True)
    rng = np.random.default_rng(0)
    for weight in keras_model.weights:  # batch-norm statistics away from 0 and 1, so inference mode shows
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32) * weight.numpy()
                      + (rng.uniform(0.1, 0.3, weight.shape).astype(np.float32) if "moving" in weight.path else 0))
    model_path = run_dir / "model.keras"
    keras_model.save(model_path)
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["export", "--model", str(model_path), "--format", "savedmodel"])
    return model_path, run_dir / "export_savedmodel" / "1", code, printed.getvalue()


def test_export_writes_a_versioned_savedmodel_beside_the_model(exported):
    _, folder, code, printed = exported
    assert code == 0
    assert (folder / "saved_model.pb").is_file() and (folder / "variables").is_dir()
    assert f"to {folder}/" in printed
    assert [path.name for path in folder.parent.iterdir()] == ["1"]  # no temporary folder left behind


def test_reloaded_export_predicts_what_the_keras_model_predicts(exported):
    model_path, folder, _, _ = exported
    tiles = np.random.default_rng(1).random((3, 32, 32, 1)).astype(np.float32)
    expected = cli.load_model(model_path).predict(tiles, verbose=0)
    reloaded = tf.saved_model.load(str(folder))  # kept in a name: its variables die with it
    served = reloaded.serve(tf.constant(tiles)).numpy()
    assert served.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.ptp(expected) > 0.01  # not a constant output that any export would match


def test_export_never_overwrites_an_existing_export(exported, capsys):
    model_path, folder, _, _ = exported
    before = (folder / "saved_model.pb").stat().st_mtime_ns
    assert cli.main(["export", "--model", str(model_path), "--format", "savedmodel"]) == 2
    assert capsys.readouterr().err == f"error: {folder} already exists: an export is never overwritten; pass another --out\n"
    assert (folder / "saved_model.pb").stat().st_mtime_ns == before


def test_export_to_a_chosen_folder(exported, tmp_path):
    model_path, _, _, _ = exported
    assert cli.main(["export", "--model", str(model_path), "--out", str(tmp_path / "serving" / "unet" / "7")]) == 0
    assert (tmp_path / "serving" / "unet" / "7" / "saved_model.pb").is_file()


def test_export_unknown_format_is_a_one_line_error(exported, tmp_path, capsys):
    model_path, _, _, _ = exported
    assert cli.main(["export", "--model", str(model_path), "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "error: unknown export format 'onnx': choose from savedmodel\n"
    assert not (tmp_path / "x").exists()


def test_export_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["export", "--model", str(tmp_path / "none.keras"), "--format", "savedmodel"]) == 2
    assert capsys.readouterr().err == f"error: model file not found: {tmp_path / 'none.keras'}\n"
    assert list(tmp_path.iterdir()) == []


def test_export_without_model_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "--format", "savedmodel"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err

"""``export MODEL``: a SavedModel in a new run folder that TensorFlow reloads with the same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import train_and_predicted_masks as cli
import unet
from nucleunet import nucleus_score, postprocessing


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small U-Net as trained with --distribute (synchronized batch norm) saved in a run folder, and its export.

    Returns (model path, export run folder, exit code).
    """
    run_dir = tmp_path_factory.mktemp("run")
    keras_model = unet.build_unet((32, 32, 1), depth=2, base_filters=4, batch_norm=True, synchronized_batch_norm=True)
    rng = np.random.default_rng(0)
    for weight in keras_model.weights:  # batch-norm statistics away from 0 and 1, so inference mode shows
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32) * weight.numpy()
                      + (rng.uniform(0.1, 0.3, weight.shape).astype(np.float32) if "moving" in weight.path else 0))
    model_path = run_dir / "model.keras"
    keras_model.save(model_path)
    out = tmp_path_factory.mktemp("exports")
    code = cli.main(["export", str(model_path), "--out", str(out)])
    (export_dir,) = out.iterdir()
    return model_path, export_dir, code


def test_export_writes_a_versioned_savedmodel_in_a_new_run_folder(exported):
    model_path, export_dir, code = exported
    assert code == 0 and export_dir.name.endswith("-export")
    assert (export_dir / "1" / "saved_model.pb").is_file() and (export_dir / "1" / "variables").is_dir()
    assert json.loads((export_dir / "config.json").read_text()) == {"model": str(model_path), "format": "savedmodel"}
    assert sorted(path.name for path in export_dir.iterdir()) == ["1", "config.json"]  # nothing half-written left


def test_reloaded_export_predicts_what_the_keras_model_predicts(exported):
    model_path, export_dir, _ = exported
    tiles = np.random.default_rng(1).random((3, 32, 32, 1)).astype(np.float32)
    expected = unet.load_model(model_path).predict(tiles, verbose=0)
    reloaded = tf.saved_model.load(str(export_dir / "1"))  # kept in a name: its variables die with it
    served = reloaded.serve(tf.constant(tiles)).numpy()
    assert served.shape == (3, 32, 32, 1)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert np.ptp(expected) > 0.01  # not a constant output that any export would match


def test_export_never_overwrites_an_existing_folder(exported):
    model_path, export_dir, _ = exported
    with pytest.raises(ValueError, match="already exists: an export is never overwritten"):
        unet.export_model(model_path, export_dir / "1")


def test_export_unknown_format_is_rejected_by_the_parser(exported, capsys):
    model_path, _, _ = exported
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(model_path), "--format", "onnx"])
    assert exit_info.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err


def test_export_of_a_missing_model_is_a_one_line_error_and_leaves_no_folder(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "none.keras"), "--out", str(tmp_path / "exports")]) == 2
    assert capsys.readouterr().err.startswith(f"error: model not found: {tmp_path / 'none.keras'} (give a .keras")
    assert not (tmp_path / "exports").exists()


def test_keras_export_is_a_float32_any_size_copy_with_the_runs_settings(exported, tmp_path):
    model_path, _, _ = exported
    (model_path.parent / "postprocessing.json").write_text(json.dumps({"threshold": 0.55}))
    assert cli.main(["export", str(model_path), "--format", "keras", "--out", str(tmp_path)]) == 0
    (export_dir,) = tmp_path.iterdir()
    # model.onnx and onnx.json: its ONNX copy (tests/test_onnx.py)
    assert sorted(path.name for path in export_dir.iterdir()) == ["export.json", "model.keras", "model.onnx",
                                                                  "onnx.json", "postprocessing.json"]
    assert json.loads((export_dir / "postprocessing.json").read_text()) == {"threshold": 0.55}
    original, copy = unet.load_model(model_path), unet.load_model(export_dir / "model.keras")
    assert copy.input_shape[1:3] == (None, None) and all(weight.dtype == "float32" for weight in copy.weights)
    tiles = np.random.default_rng(1).random((2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(tiles, verbose=0), original.predict(tiles, verbose=0), rtol=1e-5, atol=1e-6)
    assert copy.predict(np.zeros((1, 64, 96, 1), np.float32), verbose=0).shape[1:3] == (64, 96)


def _small_unet(seed: int, output_channels: int = 2):
    keras_model = unet.build_unet((32, 32, 1), depth=2, base_filters=4, batch_norm=True,
                                  output_channels=output_channels)
    rng = np.random.default_rng(seed)
    for weight in keras_model.weights:  # members that differ, batch-norm statistics away from 0 and 1
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32) * weight.numpy()
                      + (rng.uniform(0.1, 0.3, weight.shape).astype(np.float32) if "moving" in weight.path else 0))
    return keras_model


def test_average_of_models_predicts_the_mean_of_theirs_at_any_size(tmp_path):
    members = [_small_unet(seed) for seed in (1, 2, 3)]
    average = unet.average_models(members)
    tiles = np.random.default_rng(4).random((2, 64, 96, 1)).astype(np.float32)
    theirs = [unet.portable(member).predict(tiles, verbose=0) for member in members]
    assert max(np.abs(theirs[0] - other).max() for other in theirs[1:]) > 0.01  # the members differ
    unet.save_model(average, tmp_path / "average.keras")
    reloaded = unet.portable(unet.load_model(tmp_path / "average.keras"))
    np.testing.assert_allclose(reloaded.predict(tiles, verbose=0), np.mean(theirs, axis=0), rtol=1e-5, atol=1e-6)
    assert len(reloaded.trainable_weights) == 3 * len(members[0].trainable_weights)


def test_average_needs_two_models_with_the_same_channels():
    with pytest.raises(ValueError, match="at least two models, got 1"):
        unet.average_models([_small_unet(1)])
    with pytest.raises(ValueError, match="same output channels, got 1 -> 1, 1 -> 2"):
        unet.average_models([_small_unet(1), _small_unet(2, output_channels=1)])


def _run_folder(root, name, seed, split_rows):
    folder = root / name
    folder.mkdir()
    _small_unet(seed).save(folder / "model.keras")
    (folder / "split.csv").write_text("image_id,cluster,subset\n" + "".join(f"{row}\n" for row in split_rows))
    (folder / "postprocessing.json").write_text(json.dumps({"threshold": 0.45}))
    (folder / "training.json").write_text(json.dumps({"minutes": seed * 10.0}))
    return folder / "model.keras"


def test_keras_export_of_several_models_is_their_average_with_the_first_runs_files(tmp_path):
    split = ["a,0,train", "b,1,cv", "c,1,test"]
    paths = [_run_folder(tmp_path, name, seed, split) for name, seed in (("one", 1), ("two", 2))]
    out = tmp_path / "exports"
    assert cli.main(["export", *map(str, paths), "--format", "keras", "--out", str(out)]) == 0
    (export_dir,) = out.iterdir()
    assert sorted(path.name for path in export_dir.iterdir()) == ["export.json", "model.keras", "model.onnx",
                                                                  "onnx.json", "postprocessing.json", "split.csv"]
    assert json.loads((export_dir / "export.json").read_text()) == {
        "average_of": list(map(str, paths)), "format": "keras",
        "members": [{"training": {"minutes": 10.0}}, {"training": {"minutes": 20.0}}]}  # each member's recipe
    tiles = np.random.default_rng(5).random((2, 32, 32, 1)).astype(np.float32)
    expected = np.mean([unet.load_model(path).predict(tiles, verbose=0) for path in paths], axis=0)
    np.testing.assert_allclose(unet.load_model(export_dir / "model.keras").predict(tiles, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)


def test_an_average_leaves_out_the_first_models_nucleus_score(tmp_path):
    """A score model was fitted to one model's maps: the average gets the rest of its post-processing only."""
    split = ["a,0,train", "b,1,cv", "c,1,test"]
    paths = [_run_folder(tmp_path, name, seed, split) for name, seed in (("one", 1), ("two", 2))]
    count = len(nucleus_score.FEATURES)
    score_model = nucleus_score.ScoreModel((0.0,) * count, (1.0,) * count, (1.0,) * count, 0.0)
    scored = postprocessing.Postprocessing(threshold=0.45, min_score=0.3, score_model=score_model.as_dict())
    scored.save(paths[0].parent / "postprocessing.json")
    for members, expected in (([paths[0]], scored), (paths, scored.replace(score_model=None, min_score=None))):
        out = tmp_path / f"exports{len(members)}"
        assert cli.main(["export", *map(str, members), "--format", "keras", "--out", str(out)]) == 0
        (export_dir,) = out.iterdir()
        assert postprocessing.Postprocessing.load(export_dir / "postprocessing.json") == expected


def test_models_of_different_splits_are_not_averaged_and_leave_no_folder(tmp_path, capsys):
    one = _run_folder(tmp_path, "one", 1, ["a,0,train", "b,1,cv", "c,1,test"])
    two = _run_folder(tmp_path, "two", 2, ["a,0,test", "b,1,cv", "c,1,train"])
    out = tmp_path / "exports"
    assert cli.main(["export", str(one), str(two), "--format", "keras", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {two} was trained on another split than {one}: "
                                       "average models of one split only\n")
    (two.parent / "split.csv").unlink()
    assert cli.main(["export", str(one), str(two), "--out", str(out)]) == 2
    assert "no split.csv beside it" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_savedmodel_export_of_several_models_serves_their_average(tmp_path):
    split = ["a,0,train", "b,1,cv", "c,1,test"]
    paths = [_run_folder(tmp_path, name, seed, split) for name, seed in (("one", 1), ("two", 2))]
    out = tmp_path / "exports"
    assert cli.main(["export", *map(str, paths), "--out", str(out), "--quiet"]) == 0
    (export_dir,) = out.iterdir()
    assert sorted(path.name for path in export_dir.iterdir()) == ["1", "config.json"]
    tiles = np.random.default_rng(6).random((2, 32, 32, 1)).astype(np.float32)
    expected = np.mean([unet.load_model(path).predict(tiles, verbose=0) for path in paths], axis=0)
    reloaded = tf.saved_model.load(str(export_dir / "1"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(tiles)).numpy(), expected, atol=1e-5)


def test_the_serving_snippet_segments_as_the_keras_file_does(tmp_path):
    """docs/scaling.md, "Serving an exported model": the SavedModel in place of the .keras file, through the API."""
    import skimage.io

    import nucleunet

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keras_model = unet.build_unet((None, None, 1), depth=2, base_filters=4)
    rng = np.random.default_rng(2)
    for weight in keras_model.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))
    keras_model.save(run_dir / "model.keras")
    assert cli.main(["export", str(run_dir / "model.keras"), "--out", str(tmp_path / "exports")]) == 0
    (export_dir,) = (tmp_path / "exports").iterdir()
    image = (rng.random((300, 280)) * 255).astype(np.uint8)
    skimage.io.imsave(tmp_path / "my_image.png", image, check_contrast=False)

    served = tf.saved_model.load(str(export_dir / "1"))
    model = nucleunet.load_model(run_dir).with_network(lambda tiles: served.serve(tiles).numpy())
    result = model.segment(skimage.io.imread(tmp_path / "my_image.png"), probability=True)

    expected = nucleunet.load_model(run_dir).segment(image, probability=True)
    np.testing.assert_allclose(result.probability, expected.probability, atol=1e-4)
    assert np.ptp(expected.probability) > 0.01
    np.testing.assert_array_equal(result.labels, expected.labels)

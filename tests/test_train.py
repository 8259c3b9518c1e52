"""train_and_predicted_masks.py: configuration, data feeding, the time budget, and the CLI end to end."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

import dsb
import train_and_predicted_masks as cli
import unet


# ---- configuration -------------------------------------------------------------------------

def test_every_preset_is_a_valid_config():
    for name, values in cli.PRESETS.items():
        config = cli.TrainConfig.from_dict(dict(values, preset=name))
        assert config.preset == name


def test_seed_preset_is_the_reference():
    config = cli.TrainConfig.from_dict(dict(cli.PRESETS["seed"], preset="seed"))
    assert (config.base_filters, config.depth, config.batch_size, config.epochs, config.steps_per_epoch,
            config.learning_rate, config.loss) == (64, 5, 20, 3, 3500, 1e-4, "bce")


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown configuration keys: colour"):
        cli.TrainConfig.from_dict({"preset": "cpu", "colour": "red"})


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("epochs", -1), ("learning_rate", 0.0),
                                          ("minutes", 0.0), ("loss", "mse"), ("threshold", 1.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        cli.TrainConfig.from_dict({"preset": "cpu", field: value})


def test_command_line_overrides_the_preset():
    args = cli.build_arg_parser().parse_args(["--preset", "cpu", "--batch-size", "4", "--no-batch-norm", "--seed", "7"])
    config = cli.config_from_args(args, "cpu")
    assert config.batch_size == 4 and config.batch_norm is False and config.seed == 7
    assert config.base_filters == cli.PRESETS["cpu"]["base_filters"]


def test_config_round_trips_through_json():
    config = cli.TrainConfig.from_dict(dict(cli.PRESETS["cpu"], preset="cpu"))
    assert cli.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ["--data", "--preset", "--epochs", "--steps-per-epoch", "--batch-size", "--learning-rate",
                   "--minutes", "--seed", "--out", "--evaluate"]:
        assert option in text


# ---- data feeding --------------------------------------------------------------------------

def test_dihedral_gives_eight_distinct_transforms():
    square = np.arange(9).reshape(3, 3)
    results = {cli.dihedral(square, k).tobytes() for k in range(8)}
    assert len(results) == 8


def _sequence(count=10, size=16, **overrides):
    rng = np.random.default_rng(0)
    masks = (rng.random((count, size, size)) > 0.5).astype(np.uint8)
    images = masks.astype(np.float16)  # image equal to mask: augmentation must keep them aligned
    values = dict(preset="smoke", batch_size=4, steps_per_epoch=3, seed=1, depth=2, tile_size=size, min_overlap=4)
    config = cli.TrainConfig.from_dict({**values, **overrides})
    return cli.make_training_sequence(images, masks, config)


def test_batches_keep_images_and_masks_aligned():
    x, y = _sequence()[0]
    assert x.shape == y.shape == (4, 16, 16, 1) and x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x, y)


def test_batches_are_reproducible_and_change_between_epochs():
    first, second = _sequence(), _sequence()
    np.testing.assert_array_equal(first[1][0], second[1][0])
    before = first[1][0].copy()
    first.on_epoch_end()
    assert not np.array_equal(first[1][0], before)
    assert not np.array_equal(_sequence(seed=2)[1][0], before)


def test_time_budget_stops_training_early():
    model = unet.build_unet((16, 16, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    budget = cli.make_time_budget_callback(minutes=0.5 / 60)
    history = model.fit(_sequence(steps_per_epoch=100000), epochs=3, callbacks=[budget], verbose=0)
    assert budget.stopped and len(history.history["loss"]) == 1


def test_training_path_learns_synthetic_nuclei(tmp_path, synthetic_folder):
    """A tiny U-Net on bright disks reaches a high validation Dice through our sequence in seconds."""
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    images, masks, _ = dsb.tiles_for_records(records, 64, 16)
    config = cli.TrainConfig.from_dict(dict(preset="smoke", batch_size=8, steps_per_epoch=40, seed=0, depth=3,
                                            base_filters=8, batch_norm=True, loss="bce_dice",
                                            learning_rate=3e-3, tile_size=64, min_overlap=16))
    keras.utils.set_random_seed(0)
    model = unet.build_unet((64, 64, 1), depth=3, base_filters=8, batch_norm=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=unet.bce_dice_loss, metrics=[unet.DiceCoefficient()])
    model.fit(cli.make_training_sequence(images, masks, config), epochs=3, verbose=0)
    dice = model.evaluate(images[..., None].astype(np.float32), masks[..., None].astype(np.float32),
                          verbose=0, return_dict=True)["dice"]
    assert dice > 0.8


def test_error_image_colours():
    truth = np.array([[True, True, False, False]])
    predicted = np.array([[True, False, True, False]])
    picture = cli.error_image(truth, predicted)
    assert tuple(picture[0, 0]) == pytest.approx(cli.TRUE_POSITIVE)
    assert tuple(picture[0, 1]) == pytest.approx(cli.FALSE_NEGATIVE)
    assert tuple(picture[0, 2]) == pytest.approx(cli.FALSE_POSITIVE)
    assert tuple(picture[0, 3]) == (0, 0, 0)


# ---- command line, end to end on real images -----------------------------------------------

def _common(tmp_path, data):
    return ["--data", str(data), "--split", str(tmp_path / "split.csv"), "--out", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]


def test_cli_trains_evaluates_and_draws_on_real_images(tmp_path, real_subset_zip, capsys):
    assert cli.main(["--preset", "smoke", *_common(tmp_path, real_subset_zip)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ["config.json", "split.csv", "model.keras", "history.csv", "metrics.json", "training.json"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "logs").rglob("*tfevents*"))

    split = pd.read_csv(run_dir / "split.csv")
    assert len(split) == 24 and set(split["subset"]) == {"train", "cv", "test"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_ids = set(split.loc[split["subset"] == "test", "image_id"])
    assert {row["image_id"] for row in metrics["per_image"]} == test_ids
    assert all(0.0 <= row["dice"] <= 1.0 for row in metrics["per_image"])
    assert metrics["summary"]["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in metrics["per_image"]]))

    figures = sorted((run_dir / "figures").glob("cluster_*.png"))
    assert len(figures) == split.loc[split["subset"] == "test", "cluster"].nunique()
    assert all(figure.stat().st_size > 10_000 for figure in figures)
    config = cli.TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert config.preset == "smoke"
    out = capsys.readouterr().out
    assert "Test split, pixel Dice" in out and str(run_dir) in out

    # Re-evaluating the saved model reproduces the numbers, in a new folder.
    assert cli.main(["--evaluate", str(run_dir / "model.keras"), *_common(tmp_path, real_subset_zip)]) == 0
    evaluation = next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("-evaluate"))
    again = json.loads((evaluation / "metrics.json").read_text())
    assert again["summary"]["mean_dice"] == pytest.approx(metrics["summary"]["mean_dice"], abs=1e-6)


def test_cli_bad_size_is_a_one_line_error(tmp_path, capsys, synthetic_folder):
    assert cli.main(["--preset", "smoke", "--batch-size", "0", *_common(tmp_path, synthetic_folder)]) == 2
    assert capsys.readouterr().err.strip() == "error: batch_size must be at least 1, got 0"


def test_cli_missing_model_is_a_one_line_error(tmp_path, capsys, synthetic_folder):
    assert cli.main(["--evaluate", str(tmp_path / "none.keras"), *_common(tmp_path, synthetic_folder)]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_cli_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err

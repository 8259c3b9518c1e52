"""train_and_predicted_masks.py: configuration, data feeding, the time budget, and the CLI end to end."""

from __future__ import annotations

import gc
import json
import weakref

import keras
import numpy as np
import pandas as pd
import pytest

import dsb
import segment
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
                                          ("minutes", 0.0), ("loss", "mse"), ("threshold", 1.0),
                                          ("lr_schedule", "linear"), ("sampling", "cluster")])
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
    first.epoch = 1
    assert not np.array_equal(first[1][0], before)
    assert not np.array_equal(_sequence(seed=2)[1][0], before)


def test_image_sampling_weighs_images_not_tiles():
    # Image "big" owns 97 of 100 tiles; drawing images first gives it about a quarter of the draws.
    size = 8
    images = np.arange(100, dtype=np.float16)[:, None, None] * np.ones((1, size, size), np.float16)
    masks = np.zeros((100, size, size), np.uint8)
    owners = np.array(["big"] * 97 + ["a", "b", "c"], dtype=object)
    values = dict(preset="smoke", batch_size=50, steps_per_epoch=20, seed=3, depth=2, tile_size=size, min_overlap=2)
    drawn = {}
    for sampling in ("tile", "image"):
        sequence = cli.make_training_sequence(images, masks, cli.TrainConfig.from_dict({**values, "sampling": sampling}),
                                              owners)
        tiles = np.concatenate([sequence[i][0][:, 0, 0, 0] for i in range(len(sequence))]).astype(int)
        drawn[sampling] = np.mean(tiles < 97)
    assert drawn["tile"] > 0.9
    assert 0.18 < drawn["image"] < 0.32
    with pytest.raises(ValueError, match="owner image"):
        cli.make_training_sequence(images, masks, cli.TrainConfig.from_dict({**values, "sampling": "image"}))


def test_cosine_schedule_decays_to_zero_over_the_run():
    config = cli.TrainConfig.from_dict({"preset": "cpu", "learning_rate": 1e-3, "epochs": 4, "steps_per_epoch": 10,
                                        "lr_schedule": "cosine"})
    schedule = cli.learning_rate_schedule(config)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    constant = cli.TrainConfig.from_dict({"preset": "cpu", "learning_rate": 1e-3})
    assert cli.learning_rate_schedule(constant) == 1e-3


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

def _common(folder, data):
    return ["--data", str(data), "--split", str(folder / "split.csv"), "--out", str(folder / "runs"),
            "--cache-dir", str(folder / "cache"), "--quiet"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, real_subset_zip):
    """One smoke-preset training run on 24 real images: (folder, run folder, printed output)."""
    folder = tmp_path_factory.mktemp("cli")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["--preset", "smoke", *_common(folder, real_subset_zip)]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return folder, run_dir, printed.getvalue()


def test_cli_training_run_folder_is_complete(smoke_run):
    _, run_dir, printed = smoke_run
    for name in ["config.json", "split.csv", "clusters.json", "model.keras", "history.csv", "metrics.json",
                 "training.json"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert any((run_dir / "logs").rglob("*tfevents*"))
    config = cli.TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert config.preset == "smoke"
    assert "pixel Dice and DSB2018 score" in printed and str(run_dir) in printed


def test_cli_evaluates_the_test_split_only(smoke_run):
    _, run_dir, _ = smoke_run
    split = pd.read_csv(run_dir / "split.csv")
    assert len(split) == 24 and set(split["subset"]) == {"train", "cv", "test"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_ids = set(split.loc[split["subset"] == "test", "image_id"])
    assert {row["image_id"] for row in metrics["per_image"]} == test_ids
    for row in metrics["per_image"]:
        assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["map"] <= row["ap50"] <= 1.0
    assert metrics["summary"]["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in metrics["per_image"]]))
    assert metrics["summary"]["mean_map"] == pytest.approx(np.mean([r["map"] for r in metrics["per_image"]]))


def test_cli_draws_one_figure_per_test_cluster(smoke_run):
    _, run_dir, _ = smoke_run
    split = pd.read_csv(run_dir / "split.csv")
    figures = sorted((run_dir / "figures").glob("cluster_*.png"))
    assert len(figures) == split.loc[split["subset"] == "test", "cluster"].nunique()
    assert all(figure.stat().st_size > 10_000 for figure in figures)


def test_cli_reevaluation_reproduces_the_numbers(smoke_run, real_subset_zip):
    folder, run_dir, _ = smoke_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert cli.main(["--evaluate", str(run_dir / "model.keras"), *_common(folder, real_subset_zip)]) == 0
    evaluation = max(p for p in (folder / "runs").iterdir() if p.name.endswith("-evaluate"))
    again = json.loads((evaluation / "metrics.json").read_text())
    assert again["summary"]["mean_dice"] == pytest.approx(metrics["summary"]["mean_dice"], abs=1e-6)
    assert again["summary"]["mean_map"] == pytest.approx(metrics["summary"]["mean_map"], abs=1e-6)


def test_cli_evaluates_any_dsb_folder_with_clusters(smoke_run, real_subset_zip, tmp_path, synthetic_folder, capsys):
    folder, run_dir, _ = smoke_run
    args = ["--evaluate", str(run_dir / "model.keras"), "--subset", "all", "--data", str(synthetic_folder),
            "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert cli.main(args) == 0
    assert "all images of stage1_train" in capsys.readouterr().out
    (evaluation,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert len(metrics["per_image"]) == 12
    assert all(0 <= row["cluster"] < 8 for row in metrics["per_image"])  # nearest training cluster


def test_cli_tune_refuses_the_test_split(smoke_run, real_subset_zip, capsys):
    folder, run_dir, _ = smoke_run
    args = ["--evaluate", str(run_dir / "model.keras"), "--tune", "--subset", "test", *_common(folder, real_subset_zip)]
    assert cli.main(args) == 2
    assert "must not look at the test split" in capsys.readouterr().err


def test_cli_tune_writes_a_grid_on_cv(smoke_run, real_subset_zip):
    folder, run_dir, _ = smoke_run
    assert cli.main(["--evaluate", str(run_dir / "model.keras"), "--tune", *_common(folder, real_subset_zip)]) == 0
    tuning = pd.read_csv(max((folder / "runs").glob("*-tune")) / "tuning.csv")
    # A contact model (the smoke preset's): every contact threshold, and the distance watershed's marker heights.
    splits = len(cli.TUNE_CONTACT_THRESHOLDS) + len([h for h in cli.TUNE_MARKER_HEIGHTS if h is not None])
    assert len(tuning) == len(cli.TUNE_THRESHOLDS) * splits * len(cli.TUNE_MIN_SIZES)
    assert set(tuning["contact_threshold"].dropna()) == set(cli.TUNE_CONTACT_THRESHOLDS)
    assert tuning["mean_map"].is_monotonic_decreasing


def test_cli_predicts_a_folder_of_mixed_images(smoke_run, real_subset_zip, tmp_path):
    import skimage.io

    folder, run_dir, _ = smoke_run
    records = dsb.load_dataset(real_subset_zip, cache_dir=folder / "cache", progress=False)[:3]
    images = tmp_path / "mine"
    images.mkdir()
    raw = [(np.clip(r.image, 0, 1) * 255).astype(np.uint8) for r in records]
    skimage.io.imsave(images / "a.png", np.dstack([raw[0]] * 3 + [np.full_like(raw[0], 255)]), check_contrast=False)
    skimage.io.imsave(images / "b.tif", raw[1].astype(np.uint16) * 257, check_contrast=False)
    skimage.io.imsave(images / "c.jpg", np.dstack([raw[2]] * 3), check_contrast=False)
    (images / ".DS_Store").write_bytes(b"junk")
    (images / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "runs"
    assert cli.main(["--predict", str(run_dir / "model.keras"), "--input", str(images), "--out", str(out),
                     "--quiet"]) == 0
    (prediction,) = out.iterdir()
    shapes = {"a": raw[0].shape, "b": raw[1].shape, "c": raw[2].shape}
    for name, shape in shapes.items():
        mask = skimage.io.imread(prediction / "masks" / f"{name}.png")
        labels = skimage.io.imread(prediction / "labels" / f"{name}.png")
        overlay = skimage.io.imread(prediction / "overlays" / f"{name}.png")
        assert mask.shape == labels.shape == shape and overlay.shape == shape + (3,)
        assert labels.dtype == np.uint16 and set(np.unique(mask)) <= {0, 255}
    submission = pd.read_csv(prediction / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels"] and set(submission["ImageId"]) == set(shapes)
    for name, group in submission.groupby("ImageId"):
        rebuilt = np.zeros(shapes[name], int)
        for rle in group["EncodedPixels"]:
            if rle:
                decoded = segment.rle_decode(rle, shapes[name])
                assert not np.any(rebuilt[decoded]), "nuclei of one image overlap"
                rebuilt[decoded] += 1
        labels = skimage.io.imread(prediction / "labels" / f"{name}.png")
        np.testing.assert_array_equal(rebuilt > 0, labels > 0)
    counts = pd.read_csv(prediction / "counts.csv")
    assert sorted(counts["image_id"]) == ["a", "b", "c"]
    skipped = json.loads((prediction / "skipped.json").read_text())
    assert list(skipped) == ["broken"] and "broken.png" in skipped["broken"]


def test_cli_predict_without_input_is_a_one_line_error(smoke_run, capsys):
    _, run_dir, _ = smoke_run
    assert cli.main(["--predict", str(run_dir / "model.keras")]) == 2
    assert capsys.readouterr().err.strip() == "error: --predict needs --input FOLDER (the images to segment)"


def test_marker_height_zero_means_connected_components():
    args = cli.build_arg_parser().parse_args(["--marker-height", "0"])
    assert cli.config_from_args(args, "cpu").marker_height is None


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


# ---- the contact channel, end to end -------------------------------------------------------

def test_target_channels_unpack_the_stored_bits():
    stored = np.array([[0, 1, 2, 3]], np.uint8)
    plain = cli.TrainConfig.from_dict({"preset": "smoke"})
    contacts = cli.TrainConfig.from_dict({"preset": "smoke", "contacts": True})
    assert cli.target_channels(stored, plain)[..., 0].tolist() == [[0, 1, 0, 1]]
    both = cli.target_channels(stored, contacts)
    assert both.shape == (1, 4, 2) and both.dtype == np.float32
    assert both[..., 0].tolist() == [[0, 1, 0, 1]] and both[..., 1].tolist() == [[0, 0, 1, 1]]



def test_validation_batches_cover_every_cv_tile_once_in_order():
    rng = np.random.default_rng(0)
    images = rng.random((11, 8, 8)).astype(np.float16)
    masks = rng.integers(0, 4, (11, 8, 8)).astype(np.uint8)
    config = cli.TrainConfig.from_dict({"preset": "smoke", "contacts": True})
    sequence = cli.make_validation_sequence(images, masks, 4, config)
    batches = [sequence[i] for i in range(len(sequence))]
    assert [len(x) for x, _ in batches] == [4, 4, 3]
    x = np.concatenate([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    assert x.dtype == y.dtype == np.float32 and x.shape == (11, 8, 8, 1) and y.shape == (11, 8, 8, 2)
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32))
    np.testing.assert_array_equal(y, cli.target_channels(masks, config))


def test_cli_lets_go_of_the_train_and_cv_images_before_training(tmp_path, real_subset_zip, monkeypatch):
    """Only the tiles and the test images stay in memory while the model trains (the memory target)."""
    dsb.load_dataset(real_subset_zip, cache_dir=tmp_path / "cache", progress=False)  # later loads: views of one array
    released = {}
    load_data = cli.load_data

    def watched_load_data(config, **kwargs):
        records, split = load_data(config, **kwargs)
        test_ids = set(split.loc[split["subset"] == "test", "image_id"])
        released.update({r.image_id: weakref.ref(r) for r in records if r.image_id not in test_ids})
        assert records[0].image.base is not None  # loaded from the cache
        released["the cache's image array"] = weakref.ref(records[0].image.base)
        return records, split

    class Stop(Exception):
        pass

    def train(config, run_dir, data, **kwargs):
        gc.collect()
        assert len(data["train_images"]) and len(data["cv_images"])
        still_alive = [name for name, ref in released.items() if ref() is not None]
        assert len(released) > 10 and not still_alive
        raise Stop

    monkeypatch.setattr(cli, "load_data", watched_load_data)
    monkeypatch.setattr(cli, "train", train)
    with pytest.raises(Stop):
        cli.main(["--preset", "smoke", *_common(tmp_path, real_subset_zip)])

@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, real_subset_zip):
    """A smoke-preset run without the contact channel (one output, as the reference): (folder, run folder)."""
    folder = tmp_path_factory.mktemp("plain")
    assert cli.main(["--preset", "smoke", "--no-contacts", *_common(folder, real_subset_zip)]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return folder, run_dir


def test_cli_contact_model_has_two_outputs(smoke_run):
    _, run_dir, _ = smoke_run
    config = cli.TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert config.contacts is True
    assert cli.load_model(run_dir / "model.keras").output_shape[-1] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["postprocessing"]["contact_threshold"] == config.contact_threshold


def test_cli_one_channel_model_is_trained_evaluated_and_tuned(plain_run, real_subset_zip):
    folder, run_dir = plain_run
    assert cli.load_model(run_dir / "model.keras").output_shape[-1] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(0.0 <= row["dice"] <= 1.0 for row in metrics["per_image"])
    assert cli.main(["--evaluate", str(run_dir / "model.keras"), "--tune", "--subset", "cv",
                     *_common(folder, real_subset_zip)]) == 0
    tuning_dir = max(p for p in (folder / "runs").iterdir() if p.name.endswith("-tune"))
    table = pd.read_csv(tuning_dir / "tuning.csv")
    assert table["contact_threshold"].isna().all()
    assert len(table) == len(cli.TUNE_THRESHOLDS) * len(cli.TUNE_MARKER_HEIGHTS) * len(cli.TUNE_MIN_SIZES)

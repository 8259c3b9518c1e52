"""train_and_predicted_masks.py: subcommands end to end on real images, their options, and one-line errors."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import re
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.io

import dsb
import train_and_predicted_masks as cli
import unet
from nucleunet import evaluation, models, nucleus_score, outputs, pipeline, postprocessing, robustness, stratify, tuning
from nucleunet.api import load_model
from nucleunet.config import TrainConfig
from nucleunet.errors import UserError

COMMANDS_PAGE = Path(cli.__file__).resolve().parent / "docs" / "commands.md"


def _data_options(folder, data):
    return ["--data", str(data), "--split", str(folder / "split.csv"), "--cache-dir", str(folder / "cache"), "--quiet"]


def _newest(folder: Path, what: str) -> Path:
    return max(folder.glob(f"*-{what}"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, real_subset_zip):
    """One smoke-preset training run on 24 real images: (folder, run folder, printed output)."""
    folder = tmp_path_factory.mktemp("cli")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["train", "--preset", "smoke", *_data_options(folder, real_subset_zip),
                         "--out", str(folder / "runs")]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return folder, run_dir, printed.getvalue()


# ---- train ---------------------------------------------------------------------------------

def test_training_run_folder_is_complete(smoke_run):
    _, run_dir, printed = smoke_run
    for name in ["config.json", "split.csv", "clusters.json", "model.keras", "state.json",
                 "history.csv", "metrics.json", "training.json", "postprocessing.json"]:
        assert (run_dir / name).stat().st_size > 0, name
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] is True and (run_dir / "checkpoints" / state["last"]).stat().st_size > 0
    assert any((run_dir / "logs").rglob("*tfevents*"))
    saved = postprocessing.Postprocessing.load(run_dir / "postprocessing.json")
    assert saved.nucleus_area > 0  # the training images' typical nucleus area, for scale 'auto'
    started = models.starting_postprocessing(TrainConfig.load(run_dir / "config.json"))
    assert saved == started.replace(nucleus_area=saved.nucleus_area)
    assert "pixel Dice and DSB2018 score" in printed and str(run_dir) in printed


def test_training_evaluates_the_test_split_only(smoke_run):
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


def test_training_draws_one_figure_per_test_cluster(smoke_run):
    _, run_dir, _ = smoke_run
    split = pd.read_csv(run_dir / "split.csv")
    figures = sorted((run_dir / "figures").glob("cluster_*.png"))
    assert len(figures) == split.loc[split["subset"] == "test", "cluster"].nunique()
    assert all(figure.stat().st_size > 10_000 for figure in figures)


def test_contact_model_has_two_outputs(smoke_run):
    _, run_dir, _ = smoke_run
    assert unet.load_model(run_dir / "model.keras").output_shape[-1] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["postprocessing"]["contact_threshold"] == 0.2


def test_training_lets_go_of_the_train_and_cv_images_before_training(tmp_path, real_subset_zip, monkeypatch):
    """Only the tiles and the test images stay in memory while the model trains (the memory target)."""
    dsb.load_dataset(real_subset_zip, cache_dir=tmp_path / "cache", progress=False)  # later loads: views of one array
    released = {}
    load_data = pipeline.load_data

    def watched_load_data(config, **kwargs):
        records, split, stats = load_data(config, **kwargs)
        test_ids = set(split.loc[split["subset"] == "test", "image_id"])
        released.update({r.image_id: weakref.ref(r) for r in records if r.image_id not in test_ids})
        assert records[0].image.base is not None  # loaded from the cache
        released["the cache's image array"] = weakref.ref(records[0].image.base)
        return records, split, stats

    class Stop(Exception):
        pass

    def train(config, run_dir, tiles, **kwargs):
        gc.collect()
        assert len(tiles.train_images) and len(tiles.cv_images)
        still_alive = [name for name, ref in released.items() if ref() is not None]
        assert len(released) > 10 and not still_alive
        raise Stop

    monkeypatch.setattr(pipeline, "load_data", watched_load_data)
    monkeypatch.setattr(pipeline.training, "train", train)
    with pytest.raises(Stop):
        cli.main(["train", "--preset", "smoke", *_data_options(tmp_path, real_subset_zip),
                  "--out", str(tmp_path / "runs")])


# ---- evaluate and tune -----------------------------------------------------------------------

def test_reevaluation_reproduces_the_numbers_and_writes_no_split(smoke_run, real_subset_zip, tmp_path, monkeypatch):
    _, run_dir, _ = smoke_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    split_before = (run_dir / "split.csv").read_bytes()

    def no_new_split(*args, **kwargs):
        raise AssertionError("an evaluation made a split")

    monkeypatch.setattr(stratify, "load_or_make_split", no_new_split)
    assert cli.main(["evaluate", str(run_dir / "model.keras"), "--data", str(real_subset_zip), "--no-cache",
                     "--quiet", "--out", str(tmp_path)]) == 0
    again = json.loads((_newest(tmp_path, "evaluate") / "metrics.json").read_text())
    assert again["summary"]["mean_dice"] == pytest.approx(metrics["summary"]["mean_dice"], abs=1e-6)
    assert again["summary"]["mean_map"] == pytest.approx(metrics["summary"]["mean_map"], abs=1e-6)
    assert (run_dir / "split.csv").read_bytes() == split_before


def test_evaluation_under_shifts_scores_every_shift_and_none_as_plain(smoke_run, real_subset_zip, tmp_path):
    _, run_dir, _ = smoke_run
    assert cli.main(["evaluate", str(run_dir / "model.keras"), "--perturb", "--data", str(real_subset_zip),
                     "--no-cache", "--quiet", "--out", str(tmp_path)]) == 0
    evaluation = _newest(tmp_path, "evaluate")
    summary = pd.read_csv(evaluation / "robustness.csv")
    assert summary["shift"].tolist() == list(robustness.SHIFTS)
    plain = json.loads((evaluation / "metrics.json").read_text())["summary"]
    none = summary.set_index("shift").loc["none"]
    assert none["map"] == pytest.approx(plain["mean_map"], abs=1e-6)
    assert none["dice"] == pytest.approx(plain["mean_dice"], abs=1e-6)
    per_image = pd.read_csv(evaluation / "robustness_per_image.csv")
    assert len(per_image) == len(robustness.SHIFTS) * plain["images"]


def test_evaluation_of_a_model_without_a_split_needs_one(smoke_run, tmp_path, synthetic_folder, capsys):
    _, run_dir, _ = smoke_run
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    lone.write_bytes((run_dir / "model.keras").read_bytes())
    assert cli.main(["evaluate", str(lone), "--data", str(synthetic_folder), "--no-cache", "--quiet",
                     "--out", str(tmp_path / "runs")]) == 2
    assert "has no split.csv beside it" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "lone").glob("*.csv"))


def test_evaluates_any_dsb_folder_with_clusters(smoke_run, tmp_path, synthetic_folder, capsys):
    _, run_dir, _ = smoke_run
    assert cli.main(["evaluate", str(run_dir / "model.keras"), "--subset", "all", "--data", str(synthetic_folder),
                     "--no-cache", "--quiet", "--out", str(tmp_path)]) == 0
    assert "all images of stage1_train" in capsys.readouterr().out
    metrics = json.loads((_newest(tmp_path, "evaluate") / "metrics.json").read_text())
    assert len(metrics["per_image"]) == 12
    assert all(0 <= row["cluster"] < 8 for row in metrics["per_image"])  # nearest training cluster


@pytest.fixture(scope="module")
def tuned(smoke_run, real_subset_zip, tmp_path_factory):
    """One ``tune --scale auto --fit-score`` of a copy of the smoke run's model whose postprocessing.json predates
    the recorded nucleus area (the two tests below read it; one tune of a poor model's many specks takes minutes):
    (model copy, tune folder, the settings before, the training run's settings)."""
    folder, run_dir, _ = smoke_run
    model_copy = tmp_path_factory.mktemp("tuned") / "run" / "model.keras"  # the shared run's files stay
    model_copy.parent.mkdir()
    for name in ("model.keras", "config.json", "split.csv", "postprocessing.json"):
        (model_copy.parent / name).write_bytes((run_dir / name).read_bytes())
    trained = postprocessing.Postprocessing.load(model_copy.parent / "postprocessing.json")
    assert trained.nucleus_area > 0  # the training run recorded its training images' typical nucleus area
    before = trained.replace(nucleus_area=None)  # as in the files of a model made before it was recorded
    before.save(model_copy.parent / "postprocessing.json")
    assert cli.main(["tune", str(model_copy), "--scale", "auto", "--fit-score", "--data", str(real_subset_zip),
                     "--cache-dir", str(folder / "cache"), "--quiet", "--out", str(model_copy.parent / "runs")]) == 0
    return model_copy, _newest(model_copy.parent / "runs", "tune"), before, trained


def test_tune_chooses_on_cv_and_saves_the_best_beside_the_model(tuned):
    model_copy, tune_dir, before, trained = tuned
    table = pd.read_csv(tune_dir / "tuning.csv")
    cuts = len(tuning.TUNE_MIN_SCORES) + 1  # the nucleus score's cuts on the best settings come first
    # A contact model (the smoke preset's): every contact threshold, and the distance watershed's marker heights.
    assert len(table) == len(tuning.tuning_grid(True, postprocessing.Postprocessing())) + cuts - 1
    assert set(table["contact_threshold"]) == set(tuning.TUNE_CONTACT_THRESHOLDS)
    assert table["mean_map"].iloc[:cuts].is_monotonic_decreasing
    assert table["mean_map"].iloc[cuts:].is_monotonic_decreasing
    best = postprocessing.Postprocessing.load(model_copy.parent / "postprocessing.json")
    top = table.iloc[0]
    assert (best.threshold, best.min_size, best.contact_threshold, best.tta) == (
        top["threshold"], top["min_size"], top["contact_threshold"], top["tta"])
    assert best.marker_height == (None if pd.isna(top["marker_height"]) else top["marker_height"])
    assert postprocessing.Postprocessing.load(tune_dir / "postprocessing.json") == best
    # tune added the area from the model's training images, and predicts with each CV image's own zoom
    assert best.scale == "auto" and best.nucleus_area == trained.nucleus_area and set(table["scale"]) == {"auto"}
    assert postprocessing.Postprocessing.load(tune_dir / "postprocessing_before.json") == before
    # evaluate and predict now read the tuned settings
    assert models.TrainedModel.open(model_copy).postprocessing == best


def test_tune_fits_a_nucleus_score_on_the_training_images_and_chooses_its_cut_on_cv(tuned):
    model_copy, tune_dir, _, _ = tuned
    fitted = json.loads((tune_dir / "score_model.json").read_text())
    assert fitted["features"] == list(nucleus_score.FEATURES)
    table = pd.read_csv(tune_dir / "tuning.csv")
    cuts = table.iloc[:len(tuning.TUNE_MIN_SCORES) + 1]  # the cuts, tried on the best other settings, come first
    assert set(cuts["min_score"].dropna()) == set(tuning.TUNE_MIN_SCORES) and cuts["min_score"].isna().sum() == 1
    assert len(cuts[["threshold", "min_size", "contact_threshold"]].drop_duplicates()) == 1
    assert table["min_score"].iloc[len(cuts):].isna().all()  # the other settings, without a cut
    best = postprocessing.Postprocessing.load(model_copy.parent / "postprocessing.json")
    assert best.score_model == fitted
    assert best.min_score == (None if pd.isna(table["min_score"].iloc[0]) else table["min_score"].iloc[0])
    assert table["mean_map"].iloc[0] == cuts["mean_map"].max()


def test_a_nucleus_score_is_not_fitted_on_a_model_that_finds_nothing_or_only_right_nuclei():
    truth = np.zeros((64, 64), np.int32)
    truth[10:30, 10:30] = 1
    image = (truth > 0).astype(np.float32)
    records = [dsb.ImageRecord("a", image, truth, {})] * 2

    def blank(tiles):
        return np.zeros(tiles.shape[:3] + (2,), np.float32)

    def perfect(tiles):  # the image itself as the nucleus probability: finds exactly the true nucleus
        return np.concatenate([tiles, np.zeros_like(tiles)], axis=-1)

    settings = postprocessing.Postprocessing(min_size=0)
    with pytest.raises(UserError, match="on its 2 training images: no nuclei to learn"):
        tuning.fit_score_model(settings, records, blank, 64, 16, progress=False)
    with pytest.raises(UserError, match="all of the 2 nuclei match a true one"):
        tuning.fit_score_model(settings, records, perfect, 64, 16, progress=False)
    with pytest.raises(UserError, match="no training images"):
        tuning.fit_score_model(settings, [], perfect, 64, 16, progress=False)


def test_tune_refuses_the_test_split(smoke_run, capsys):
    _, run_dir, _ = smoke_run
    with pytest.raises(SystemExit):
        cli.main(["tune", str(run_dir / "model.keras"), "--subset", "test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


# ---- predict -------------------------------------------------------------------------------

def test_predicts_a_folder_of_mixed_images(smoke_run, real_subset_zip, tmp_path):
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
    assert cli.main(["predict", str(run_dir / "model.keras"), str(images), "--out", str(out), "--quiet"]) == 3
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
                decoded = outputs.rle_decode(rle, shapes[name])
                assert not np.any(rebuilt[decoded]), "nuclei of one image overlap"
                rebuilt[decoded] += 1
        labels = skimage.io.imread(prediction / "labels" / f"{name}.png")
        np.testing.assert_array_equal(rebuilt > 0, labels > 0)
    counts = pd.read_csv(prediction / "counts.csv")
    assert sorted(counts["image"]) == ["a", "b", "c"]
    skipped = json.loads((prediction / "skipped.json").read_text())
    assert list(skipped) == [str(images / "broken.png")] and "not a readable image" in skipped[str(images / "broken.png")]


def test_predict_overrides_one_postprocessing_field(smoke_run, tmp_path):
    _, run_dir, _ = smoke_run
    image = tmp_path / "one.png"
    skimage.io.imsave(image, np.zeros((40, 40), np.uint8), check_contrast=False)
    assert cli.main(["predict", str(run_dir / "model.keras"), str(image), "--threshold", "0.9", "--marker-height", "0",
                     "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    written = json.loads((_newest(tmp_path / "runs", "predict") / "config.json").read_text())["postprocessing"]
    assert written == {**json.loads((run_dir / "postprocessing.json").read_text()), "threshold": 0.9,
                       "marker_height": None}


def test_options_that_their_decision_rules_rejected_are_gone():
    parser = cli.build_arg_parser()
    for argv in (["predict", "x.png", "--min-size-relative", "0.2"], ["predict", "x.png", "--auto-gain"],
                 ["evaluate", "m.keras", "--no-auto-gain"], ["train", "--sampling", "image"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    help_text = parser._subparsers._group_actions[0].choices["predict"].format_help()
    assert "--min-size-relative" not in help_text and "auto-gain" not in help_text
    assert cli.postprocessing_overrides(parser.parse_args(["evaluate", "m.keras", "--min-size", "15"])) == {
        "min_size": 15}


def test_min_score_from_the_command_line_and_zero_keeping_every_nucleus():
    parser = cli.build_arg_parser()
    assert cli.postprocessing_overrides(parser.parse_args(["predict", "x.png", "--min-score", "0.3"])) == {
        "min_score": 0.3}
    assert cli.postprocessing_overrides(parser.parse_args(["evaluate", "m.keras", "--min-score", "0"])) == {
        "min_score": None}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--min-score", "0.3"])


def test_extra_zooms_from_the_command_line_and_none_for_one_zoom():
    parser = cli.build_arg_parser()
    assert cli.postprocessing_overrides(parser.parse_args(["predict", "x.png", "--extra-zooms", "1.41"])) == {
        "extra_zooms": [1.41]}
    assert cli.postprocessing_overrides(parser.parse_args(["evaluate", "m.keras", "--extra-zooms"])) == {
        "extra_zooms": []}
    assert postprocessing.Postprocessing(extra_zooms=(1.41,)).replace(extra_zooms=[]).extra_zooms == ()
    assert parser.parse_args(["tune", "m.keras", "--extra-zooms", "0.71", "1.41"]).extra_zooms == [0.71, 1.41]
    assert parser.parse_args(["tune", "m.keras"]).extra_zooms is None  # the model's
    for bad in ("1", "0", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["predict", "x.png", "--extra-zooms", bad])



def test_tta_views_from_the_command_line_for_predict_and_evaluate_only():
    parser = cli.build_arg_parser()
    assert cli.postprocessing_overrides(parser.parse_args(["predict", "x.png", "--tta-views", "8"])) == {"tta_views": 8}
    assert cli.postprocessing_overrides(parser.parse_args(["evaluate", "m.keras", "--tta", "--tta-views", "4"])) == {
        "tta": True, "tta_views": 4}
    assert "tta_views" not in cli.postprocessing_overrides(parser.parse_args(["predict", "x.png"]))  # the model's
    for bad in (["predict", "x.png", "--tta-views", "3"], ["train", "--tta-views", "2"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert cli.postprocessing_overrides(parser.parse_args(["predict", "x.png", "--no-tta-extra-zooms"])) == {
        "tta_extra_zooms": False}
    assert "tta_extra_zooms" not in cli.postprocessing_overrides(parser.parse_args(["predict", "x.png"]))
    # the ready model's own number of views, chosen by price (docs/results.md), and the option that overrides it
    ready = load_model()
    assert ready.postprocessing.views == 4 and ready.with_settings(tta_views=8).postprocessing.views == 8
    assert ready.postprocessing.tile_size == "auto"  # the fewest tiles of up to prediction.AUTO_TILE_MAX, by price


# ---- the command line itself ---------------------------------------------------------------

def _synopsis() -> dict[str, set[str]]:
    """Options per command in the synopsis block of docs/commands.md: a line starting with the script's name and its
    command, then indented continuation lines; ``--[no-]x`` names the option pair ``--x`` / ``--no-x``."""
    text = COMMANDS_PAGE.read_text()
    block = text[text.index("<!-- synopsis -->"):text.index("<!-- /synopsis -->")]
    commands, current = {}, None
    for line in block.splitlines():
        match = re.match(rf"python {cli.SCRIPT} \[?(\w+)", line)
        if match:
            current = commands.setdefault(match.group(1), set())
        elif not line.startswith(" "):
            current = None
        if current is not None:
            current |= {f"--{name}" for name in re.findall(r"--(?:\[no-\])?([a-z][a-z-]*)", line)}
    return commands


def _parser_options(command: str) -> set[str]:
    parser = cli.build_arg_parser()
    (subparsers,) = [action for action in parser._actions if action.dest == "command"]
    options = set()
    for action in subparsers.choices[command]._actions:
        options |= {option for option in action.option_strings if option.startswith("--") and option != "--help"}
    return {option for option in options if not option.startswith("--no-") or option == "--no-cache"}


def _commands() -> list[str]:
    (subparsers,) = [action for action in cli.build_arg_parser()._actions if action.dest == "command"]
    return list(subparsers.choices)


def test_the_synopsis_lists_every_command_and_exactly_its_options():
    synopsis = _synopsis()
    assert sorted(synopsis) == sorted(_commands()) == sorted(["train", "resume", "evaluate", "tune", "predict",
                                                              "export"])
    for command in _commands():
        assert synopsis[command] == _parser_options(command), command


@pytest.mark.parametrize("argv, foreign", [
    (["evaluate", "m.keras", "--epochs", "3"], "--epochs"),
    (["predict", "m.keras", "x.png", "--subset", "cv"], "--subset"),
    (["train", "--tune"], "--tune"),
    (["export", "m.keras", "--threshold", "0.5"], "--threshold"),
])
def test_each_command_rejects_options_of_another(argv, foreign, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and f"unrecognized arguments: {foreign}" in capsys.readouterr().err


def test_options_without_a_command_train(monkeypatch):
    seen = []
    monkeypatch.setattr(pipeline, "train_run", lambda config, out, **kwargs: seen.append((config, out)))
    for argv in ([], ["--preset", "smoke", "--seed", "4"]):
        cli.main(argv)
    assert seen[1][0].preset == "smoke" and seen[1][0].seed == 4 and len(seen) == 2


def test_command_line_overrides_the_preset(capsys):
    args = cli.build_arg_parser().parse_args(["train", "--preset", "cpu", "--batch-size", "4", "--no-batch-norm",
                                              "--seed", "7", "--minutes", "0", "--marker-height", "0"])
    config = cli.config_from_args(args)
    assert config.batch_size == 4 and config.batch_norm is False and config.seed == 7 and config.minutes is None
    assert config.base_filters == TrainConfig.from_preset("cpu").base_filters and config.marker_height is None
    assert config.contact_radius == 2  # the default band; --contact-radius changes it
    wide = cli.config_from_args(cli.build_arg_parser().parse_args(["train", "--preset", "cpu", "--contact-radius", "3"]))
    assert wide.contact_radius == 3
    # the preset weighs contact pixels 5 times; without its contact channel the weight goes too, unless given
    assert config.contact_weight == 5.0
    # and --help says so, preset by preset, instead of a default the presets do not use
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    words = " ".join(capsys.readouterr().out.split())
    assert "counts W times (default: the preset's: 5 in cpu; 5 in ready; 1 in the others)" in words
    plain = cli.config_from_args(cli.build_arg_parser().parse_args(["train", "--preset", "cpu", "--no-contacts"]))
    assert plain.contacts is False and plain.contact_weight == 1.0
    with pytest.raises(UserError, match="contact_weight"):
        cli.config_from_args(cli.build_arg_parser().parse_args(["train", "--preset", "cpu", "--no-contacts",
                                                                "--contact-weight", "5"]))


def test_every_help_ends_with_an_example(capsys):
    for command in _commands():
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert f"python {cli.SCRIPT} {command}" in capsys.readouterr().out.split("Example")[-1]


# ---- what the user can fix: one line, exit code 2; a bug: a traceback ----------------------

def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_model_file_that_is_not_keras(tmp_path, capsys, synthetic_folder):
    fake = tmp_path / "model.keras"
    fake.write_bytes(b"this is not a model")
    assert cli.main(["evaluate", str(fake), "--subset", "all", "--data", str(synthetic_folder),
                     "--out", str(tmp_path / "runs"), "--no-cache", "--quiet"]) == 2
    assert "is not a readable Keras model" in _one_line_error(capsys)


def test_model_whose_input_does_not_fit(tmp_path, capsys, synthetic_folder):
    path = tmp_path / "rgb.keras"
    unet.build_unet((None, None, 3), depth=2, base_filters=2).save(path)
    assert cli.main(["predict", str(path), str(synthetic_folder), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "expected a model from (batch, H, W, 1)" in _one_line_error(capsys)


def test_output_folder_that_cannot_be_written(tmp_path, capsys, synthetic_training_set):
    folder, split = synthetic_training_set
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert cli.main(["--preset", "smoke", "--data", str(folder), "--split", str(split), "--no-cache",
                     "--out", str(blocker / "runs"), "--quiet"]) == 2
    assert str(blocker) in _one_line_error(capsys)


def test_bad_size_on_the_command_line(capsys):
    assert cli.main(["--preset", "smoke", "--steps-per-epoch", "-5"]) == 2
    assert _one_line_error(capsys) == "error: steps_per_epoch must be at least 1, got -5"


def test_changed_dataset_is_a_one_line_error(tmp_path, capsys, synthetic_folder):
    split = tmp_path / "split.csv"
    pd.DataFrame({"image_id": ["other"], "cluster": [0], "subset": ["test"]}).to_csv(split, index=False)
    assert cli.main(["--preset", "smoke", "--data", str(synthetic_folder), "--split", str(split),
                     "--out", str(tmp_path / "runs"), "--no-cache", "--quiet"]) == 2
    assert "the dataset no longer matches the split" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # no run folder for a run that could not start


def test_missing_data_is_a_one_line_error_and_leaves_no_run_folder(tmp_path, capsys):
    assert cli.main(["--preset", "smoke", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs")]) == 2
    assert "dataset path does not exist" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_bug_is_not_turned_into_a_one_line_error(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug in NumPy or in our code")

    monkeypatch.setattr(evaluation, "evaluate_run", broken)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["evaluate", "unet_dsb2018"])


def test_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_fine_tuning_on_a_few_images_of_another_layout_starts_from_the_model(smoke_run, tmp_path):
    import tifffile

    from conftest import make_synthetic_image

    _, run_dir, _ = smoke_run
    folder = tmp_path / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # the Cellpose layout: img.tif with img_masks.tif
        image, masks = make_synthetic_image(rng, (96, 96), nuclei=3, kind="gray")
        tifffile.imwrite(folder / f"img{index}.tif", image)
        tifffile.imwrite(folder / f"img{index}_masks.tif", sum((mask > 0) * (k + 1) for k, mask in enumerate(masks))
                         .astype(np.uint16))
    assert cli.main(["train", "--init", str(run_dir / "model.keras"), "--data", str(folder), "--split",
                     str(tmp_path / "split.csv"), "--epochs", "2", "--steps-per-epoch", "2", "--crop-size", "64",
                     "--no-cache", "--quiet", "--out", str(tmp_path / "runs")]) == 0
    (tuned,) = (tmp_path / "runs").iterdir()
    config = TrainConfig.load(tuned / "config.json")
    base = TrainConfig.load(run_dir / "config.json")
    assert config.preset == "finetune" and config.init == str(run_dir / "model.keras")
    assert (config.depth, config.base_filters, config.contacts) == (base.depth, base.base_filters, base.contacts)
    assert config.contact_radius == base.contact_radius  # the contact band it was trained on
    split = pd.read_csv(tmp_path / "split.csv")
    assert set(split["subset"]) == {"train", "cv"}  # six images: no test split
    assert (tuned / "model.keras").is_file() and not (tuned / "metrics.json").exists()
    starting = json.loads((tuned / "training.json").read_text())["starting_model"]  # what fine-tuning improved on
    assert np.isfinite(starting["val_loss"]) and 0 <= starting["val_dice"] <= 1


def test_an_average_of_models_fine_tunes_as_one_model(smoke_run, tmp_path):
    from conftest import make_synthetic_image, write_dsb_folder

    _, run_dir, _ = smoke_run
    model = str(run_dir / "model.keras")
    assert cli.main(["export", model, model, "--format", "keras", "--quiet", "--out", str(tmp_path / "exports")]) == 0
    (export_dir,) = (tmp_path / "exports").iterdir()
    rng = np.random.default_rng(1)
    folder = write_dsb_folder(tmp_path / "mine", {f"img{index}": make_synthetic_image(rng, (96, 96), nuclei=3)
                                                  for index in range(4)})
    assert cli.main(["train", "--init", str(export_dir / "model.keras"), "--data", str(folder), "--split",
                     str(tmp_path / "split.csv"), "--epochs", "1", "--steps-per-epoch", "2", "--crop-size", "64",
                     "--no-cache", "--quiet", "--out", str(tmp_path / "runs")]) == 0
    (tuned,) = (tmp_path / "runs").iterdir()
    single, average = unet.load_model(model), unet.load_model(tuned / "model.keras")
    assert len(average.trainable_weights) == 2 * len(single.trainable_weights)  # both members trained on
    starting = json.loads((tuned / "training.json").read_text())["starting_model"]
    assert np.isfinite(starting["val_loss"]) and np.isfinite(pd.read_csv(tuned / "history.csv")["val_loss"]).all()


def test_predict_without_a_model_needs_the_ready_one_and_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "ready_model_folders", lambda: [tmp_path / "package", tmp_path / "checkout"])
    assert cli.main(["predict", str(tmp_path), "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "the ready model 'unet_dsb2018' is not installed" in error
    assert str(tmp_path / "package" / "unet_dsb2018" / "model.keras") in error
    assert str(tmp_path / "checkout" / "unet_dsb2018" / "model.keras") in error
    assert not (tmp_path / "runs").exists()
    assert cli.model_and_inputs(["m.keras", "a.png"]) == (Path("m.keras"), ["a.png"])


def test_the_tile_size_help_names_the_auto_tiles_limit():
    # the help writes the number out (the command line does not import prediction to parse); it must follow it
    from nucleunet import prediction

    predict = next(action for action in cli.build_arg_parser()._subparsers._group_actions[0].choices["predict"]._actions
                   if "--tile-size" in action.option_strings)
    assert f"at most {prediction.AUTO_TILE_MAX} pixels" in predict.help

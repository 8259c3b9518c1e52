"""Bad and hostile input, and crashes: nothing is written outside a run folder, no command changes a model, one image
never stops the others, and a killed run leaves a state that resume or the next run handles."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import imageio.v3
import numpy as np
import pandas as pd
import pytest
import skimage.draw
import skimage.io
import tifffile

import train_and_predicted_masks as cli
import unet
from nucleunet import api, inputs, models, outputs, runs, training
from nucleunet.config import TrainConfig
from nucleunet.errors import UserError

from conftest import write_split


def _cells(shape=(90, 120)) -> np.ndarray:
    """An 8-bit gray image of 5 bright discs on a dim background."""
    image = np.full(shape, 25, np.uint8)
    for row, col in [(20, 20), (20, 70), (50, 40), (70, 95), (60, 10)]:
        rr, cc = skimage.draw.disk((row, col), 8, shape=shape)
        image[rr, cc] = 230
    return image


def _png(image=None) -> bytes:
    return imageio.v3.imwrite("<bytes>", _cells() if image is None else image, extension=".png")


def _tiff(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue()


def _predict(stand_in_model, inputs_, tmp_path, *extra) -> tuple[int, Path | None]:
    out = tmp_path / "runs"
    code = cli.main(["predict", str(stand_in_model), *map(str, inputs_), "--out", str(out), "--quiet", *extra])
    found = sorted(out.iterdir()) if out.exists() else []
    return code, found[-1] if found else None


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with the hash of its bytes."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# ---- names that would leave the run folder ----------------------------------------------------

def test_a_zip_of_escaping_and_absolute_members_writes_nothing_outside_the_run_folder(stand_in_model, tmp_path,
                                                                                      monkeypatch):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    absolute = tmp_path / "abs_target.png"
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        opened.writestr("../../escape.png", _png())
        opened.writestr(str(absolute), _png())
        opened.writestr("C:/windows.png", _png())
        opened.writestr("good.png", _png())
    before = _tree(tmp_path)
    code, run_dir = _predict(stand_in_model, [archive], tmp_path / "work")
    assert code == cli.SOME_SKIPPED
    written = {path for path in _tree(tmp_path) if path not in before}
    assert written and all(path.startswith(f"work/runs/{run_dir.name}/") for path in written), sorted(written)
    assert not absolute.exists() and not list(tmp_path.rglob("escape*")) and not list(tmp_path.rglob("windows*"))
    assert pd.read_csv(run_dir / "counts.csv")["image"].tolist() == ["good"]
    skipped = json.loads((run_dir / "skipped.json").read_text())
    assert sorted(skipped) == sorted(f"{archive}:{member}" for member in ("../../escape.png", str(absolute),
                                                                          "C:/windows.png"))
    assert skipped[f"{archive}:../../escape.png"] == "not read: a '..' part, which leads out of its folder"
    assert skipped[f"{archive}:{absolute}"] == "not read: an absolute path"


def test_output_path_refuses_names_and_links_that_lead_out_of_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for key in ("../x", "/tmp/x", "a/../../x", "C:/x"):
        with pytest.raises(UserError, match="lead out of the run folder"):
            outputs.output_path(run_dir, "labels", key, ".tif")
    (run_dir / "labels").mkdir()
    (run_dir / "labels" / "sub").symlink_to(tmp_path)  # a link inside the run folder to outside it
    with pytest.raises(UserError, match="symbolic link"):
        outputs.output_path(run_dir, "labels", "sub/x", ".tif")
    assert outputs.output_path(run_dir, "labels", "a/b", ".tif") == run_dir / "labels" / "a" / "b.tif"


# ---- no command changes a model ----------------------------------------------------------------

def test_resume_of_the_ready_model_is_refused_and_changes_nothing(capsys):
    folder = models.ready_model_path().parent
    before = _tree(folder)
    assert cli.main(["resume", str(folder), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "ready models' folder" in error
    assert _tree(folder) == before


@pytest.mark.parametrize("kind", ["export", "finished", "bare"])
def test_resume_refuses_anything_but_an_unfinished_training_run(tmp_path, kind, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    TrainConfig.from_preset("smoke").save(run_dir / "config.json")
    write_split(run_dir / "split.csv", {"a": "train", "b": "cv"})
    if kind == "export":
        runs.write_json(run_dir / "export.json", {"model": "x", "format": "keras"})
        training.new_state(run_dir)
    elif kind == "finished":
        training.new_state(run_dir)
        training.finish_state(run_dir)
    before = _tree(run_dir)
    assert cli.main(["resume", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert {"export": "exported model", "finished": "its training is finished",
            "bare": "not a training run folder"}[kind] in error
    assert _tree(run_dir) == before


def test_no_command_writes_into_the_ready_models_folder(tmp_path, capsys):
    folder = models.ready_model_path().parent
    before = _tree(folder.parent)
    image = tmp_path / "cells.png"
    image.write_bytes(_png())
    assert cli.main(["predict", str(image), "--out", str(folder / "runs"), "--quiet"]) == 2
    assert "ready models' folder" in capsys.readouterr().err
    assert cli.main(["tune", "unet_dsb2018", "--quiet", "--out", str(tmp_path / "runs")]) == 2
    assert "tune a copy instead" in capsys.readouterr().err
    assert _tree(folder.parent) == before and not (tmp_path / "runs").exists()


# ---- fine-tuning keeps the starting model's split ---------------------------------------------

@pytest.fixture
def starting_run(tmp_path, synthetic_training_set):
    """A small 'starting model' run folder trained (in name) on the synthetic set with its split."""
    data, split = synthetic_training_set
    run_dir = tmp_path / "start"
    run_dir.mkdir()
    config = TrainConfig.from_preset("smoke", data=str(data), split=str(split))
    config.save(run_dir / "config.json")
    (run_dir / "split.csv").write_bytes(split.read_bytes())
    unet.build_unet((None, None, 1), depth=config.depth, base_filters=config.base_filters,
                    batch_norm=config.batch_norm, output_channels=2).save(run_dir / "model.keras")
    return run_dir, data, split


def test_fine_tuning_on_the_same_data_reuses_the_starting_models_split(starting_run, tmp_path):
    run_dir, data, split = starting_run
    new_split = tmp_path / "new_split.csv"
    assert cli.main(["train", "--init", str(run_dir / "model.keras"), "--data", str(data), "--split",
                     str(new_split), "--epochs", "1", "--steps-per-epoch", "1", "--crop-size", "64", "--no-cache",
                     "--quiet", "--figures-per-cluster", "0", "--out", str(tmp_path / "runs")]) == 0
    start = pd.read_csv(split)
    (new_run,) = (tmp_path / "runs").iterdir()
    made = pd.read_csv(new_run / "split.csv")
    assert made.equals(start) and pd.read_csv(new_split).equals(start)
    trained_on = set(start.loc[start["subset"] != "test", "image_id"])
    assert not trained_on & set(made.loc[made["subset"] == "test", "image_id"])


def test_fine_tuning_refuses_a_split_that_tests_on_the_starting_models_training_images(starting_run, tmp_path,
                                                                                        capsys):
    run_dir, data, split = starting_run
    start = pd.read_csv(split)
    swapped = start.copy()
    first_train = swapped.index[swapped["subset"] == "train"][0]
    first_test = swapped.index[swapped["subset"] == "test"][0]
    swapped.loc[[first_train, first_test], "subset"] = ["test", "train"]
    swapped.to_csv(tmp_path / "other.csv", index=False)
    assert cli.main(["train", "--init", str(run_dir / "model.keras"), "--data", str(data), "--split",
                     str(tmp_path / "other.csv"), "--epochs", "1", "--steps-per-epoch", "1", "--no-cache",
                     "--quiet", "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "was trained or checked on into its test split" in error and str(run_dir / "split.csv") in error
    assert not (tmp_path / "runs").exists()


# ---- bounds --------------------------------------------------------------------------------------

def _tiff_declaring(path: Path, height: int, width: int) -> Path:
    """A small compressed TIFF whose header is changed to declare ``height`` x ``width`` pixels."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), compression="zlib")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tiff:
        tags = tiff.pages[0].tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            assert tag.dtype in (3, 4)  # SHORT or LONG, stored in the tag itself
            if tag.dtype == 3:  # SHORT cannot hold it: make the tag LONG
                struct.pack_into("<H", data, tag.offset + 2, 4)
            struct.pack_into("<I", data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return path


def test_a_huge_declared_image_is_refused_from_its_header_within_seconds_and_little_memory(tmp_path):
    huge = inputs.InputImage("huge", _tiff_declaring(tmp_path / "huge.tif", 100_000, 100_000))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"10,000,000,000 pixels .* over the limit of 1,000,000,000"):
        inputs.read_input(huge)
    seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 5 and peak < 2**28, (seconds, peak)
    small = inputs.InputImage("small", _tiff_declaring(tmp_path / "small.tif", 64, 64))
    assert inputs.read_input(small)[0].shape == (64, 64)
    with pytest.raises(UserError, match="over the limit of 100"):
        inputs.read_input(small, max_pixels=100)


def test_predict_skips_an_oversized_file_and_segments_the_rest(stand_in_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _tiff_declaring(folder / "huge.tif", 100_000, 100_000)
    (folder / "good.png").write_bytes(_png())
    code, run_dir = _predict(stand_in_model, [folder], tmp_path)
    assert code == cli.SOME_SKIPPED
    assert pd.read_csv(run_dir / "counts.csv")["nuclei"].tolist() == [5]
    (reason,) = json.loads((run_dir / "skipped.json").read_text()).values()
    assert "over the limit" in reason and "--max-pixels" in reason


def test_zip_members_that_would_decompress_to_too_much_are_not_read():
    bomb = zipfile.ZipInfo("bomb.tif")
    bomb.file_size, bomb.compress_size = 10 * 2**30, 10 * 2**20
    assert "over the limit" in inputs.member_problem(bomb)
    dense = zipfile.ZipInfo("dense.tif")
    dense.file_size, dense.compress_size = 500 * 2**20, 2**20
    assert "zip bomb" in inputs.member_problem(dense)
    plain = zipfile.ZipInfo("plain.tif")
    plain.file_size, plain.compress_size = 500 * 2**20, 400 * 2**20
    assert inputs.member_problem(plain) is None


@pytest.mark.parametrize("option", [["--scale", "100"], ["--scale", "0"], ["--tile-size", "100000"],
                                    ["--tile-size", "100"], ["--extra-zooms", "50"], ["--max-pixels", "0"]])
def test_options_out_of_bounds_are_one_line_errors(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "x.png", *option])
    assert exit_info.value.code == 2 and option[0] in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("min_size", "30"), ("scale", 100), ("threshold", True),
                                          ("extra_zooms", 1.41), ("tile_size", 7), ("nucleus_area", -1)])
def test_a_bad_settings_file_names_the_file_and_the_field(stand_in_model, tmp_path, field, value, capsys):
    path = stand_in_model.parent / "postprocessing.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, field: value}))
    image = tmp_path / "cells.png"
    image.write_bytes(_png())
    assert cli.main(["predict", str(stand_in_model), str(image), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error and f"{field} must be" in error


# ---- one image never stops the others ----------------------------------------------------------

def test_an_unreadable_file_and_a_long_name_among_good_images_give_exit_code_3(stand_in_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = "n" * 236 + ".png"  # 240 characters
    for name in ("one.png", "two.png", long_name):
        (folder / name).write_bytes(_png())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, run_dir = _predict(stand_in_model, [folder], tmp_path)
    assert code == cli.SOME_SKIPPED
    counts = pd.read_csv(run_dir / "counts.csv")
    assert sorted(counts["image"]) == sorted(["one", "two", long_name[:-4]]) and set(counts["nuclei"]) == {5}
    assert list(json.loads((run_dir / "skipped.json").read_text())) == [str(folder / "broken.png")]
    assert (run_dir / "labels" / f"{long_name[:-4]}.tif").is_file()
    assert json.loads((run_dir / "status.json").read_text())["complete"] is True
    assert not list(run_dir.rglob(f"*{runs.PARTIAL}*"))


def test_exit_codes_say_all_done_and_nothing_done(stand_in_model, tmp_path):
    image = tmp_path / "cells.png"
    image.write_bytes(_png())
    assert _predict(stand_in_model, [image], tmp_path / "a")[0] == 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nothing")
    code, run_dir = _predict(stand_in_model, [broken], tmp_path / "b")
    assert code == 2 and json.loads((run_dir / "skipped.json").read_text())


def test_a_failure_while_segmenting_or_writing_one_image_skips_it_and_the_others_go_on(stand_in_model, tmp_path,
                                                                                       monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(_png())
    segment = api.Model.segment

    def failing(self, image, *, name="image", **options):
        if name.endswith("b.png"):
            raise RuntimeError("out of memory, say")
        return segment(self, image, name=name, **options)

    monkeypatch.setattr(api.Model, "segment", failing)
    code, run_dir = _predict(stand_in_model, [folder], tmp_path)
    assert code == cli.SOME_SKIPPED
    assert pd.read_csv(run_dir / "counts.csv")["image"].tolist() == ["a", "c"]
    assert json.loads((run_dir / "skipped.json").read_text()) == {
        str(folder / "b.png"): "failed: RuntimeError: out of memory, say"}


def test_a_stopped_predict_writes_its_tables_and_says_it_is_incomplete(stand_in_model, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(_png())
    segment = api.Model.segment

    def interrupted(self, image, *, name="image", **options):
        if name.endswith("b.png"):
            raise KeyboardInterrupt
        return segment(self, image, name=name, **options)

    monkeypatch.setattr(api.Model, "segment", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["predict", str(stand_in_model), str(folder), "--out", str(tmp_path / "runs"), "--quiet"])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert pd.read_csv(run_dir / "counts.csv")["image"].tolist() == ["a"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status == {"complete": False, "input_files": 3, "segmented": 1, "skipped": 0}


def test_outputs_that_would_collide_after_planes_are_expanded_or_by_case_are_skipped(stand_in_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "img.tif", np.stack([_cells(), _cells()]))  # planes img_z000, img_z001
    (folder / "img_z000.png").write_bytes(_png())
    (folder / "Other.png").write_bytes(_png())
    (folder / "other.tif").write_bytes(_tiff(_cells()))
    code, run_dir = _predict(stand_in_model, [folder], tmp_path)
    assert code == cli.SOME_SKIPPED
    assert sorted(pd.read_csv(run_dir / "counts.csv")["image"]) == ["Other", "img_z000", "img_z001"]
    skipped = json.loads((run_dir / "skipped.json").read_text())
    assert sorted(skipped) == [str(folder / "img_z000.png"), str(folder / "other.tif")]
    assert all("would be named" in reason for reason in skipped.values())


# ---- shapes as a user means them -----------------------------------------------------------------

def test_a_two_channel_array_saved_by_tifffile_is_one_image_with_channels(stand_in_model, tmp_path, caplog):
    two = np.stack([np.zeros((90, 120), np.uint8), _cells()], axis=-1)  # nuclei in the second channel
    tifffile.imwrite(tmp_path / "two.tif", two)
    raw, axes, _ = inputs.read_input(inputs.InputImage("two", tmp_path / "two.tif"))
    assert axes == "YXC" and raw.shape == (90, 120, 2) and "--channel" in caplog.text
    code, run_dir = _predict(stand_in_model, [tmp_path / "two.tif"], tmp_path, "--channel", "1")
    assert code == 0 and pd.read_csv(run_dir / "counts.csv")[["image", "nuclei"]].values.tolist() == [["two", 5]]


def test_an_image_too_small_for_the_network_is_skipped_with_that_reason(stand_in_model, tmp_path):
    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(_png(np.full((10, 10), 200, np.uint8)))
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    code, run_dir = _predict(stand_in_model, [tiny, good], tmp_path)
    assert code == cli.SOME_SKIPPED
    (reason,) = json.loads((run_dir / "skipped.json").read_text()).values()
    assert "10 x 10 pixels, too small to segment" in reason


# ---- what a killed run leaves ----------------------------------------------------------------------

def test_settling_a_killed_runs_checkpoints_keeps_what_its_state_names(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / training.CHECKPOINTS).mkdir(parents=True)
    model = unet.build_unet((None, None, 1), depth=2, base_filters=2)
    for epoch in (2, 3, 4):  # epoch 4's checkpoint was written, but the kill came before its state.json
        unet.save_model(model, run_dir / training.CHECKPOINTS / f"epoch-{epoch:04d}.keras")
    (run_dir / f".{123}-0{runs.PARTIAL}.keras").write_bytes(b"half")
    state = {"finished": False, "epoch": 2, "last": "epoch-0003.keras", "best": "epoch-0002.keras"}
    runs.remove_partial_files(run_dir)
    training.settle_checkpoints(run_dir, state)
    assert sorted(path.name for path in (run_dir / training.CHECKPOINTS).iterdir()) == ["epoch-0002.keras",
                                                                                        "epoch-0003.keras"]
    assert (run_dir / "model.keras").read_bytes() == (run_dir / training.CHECKPOINTS / "epoch-0002.keras").read_bytes()
    assert not list(run_dir.glob(f".*{runs.PARTIAL}*"))


def test_temporary_names_stay_short_for_long_names(tmp_path):
    target = tmp_path / ("n" * 250 + ".tif")
    with runs.atomic_path(target) as temporary:
        assert len(temporary.name) < 40 and temporary.name.endswith(runs.PARTIAL + ".tif")
        temporary.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_the_api_refuses_what_predict_skips(tmp_path):
    model = api.load_model()
    with pytest.raises(UserError, match="too small to segment"):
        model.segment(np.zeros((10, 10)))
    with pytest.raises(UserError, match="over the limit of 100"):
        model.segment(np.zeros((20, 20)), max_pixels=100)

"""experiments/leave_cluster_out.py: the held-out split and the tables made from each run's per-image scores (the
runs themselves are the slow part; tests/test_experiments.py runs the script on tiny data)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pandas as pd
import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def loco():
    sys.path.insert(0, str(EXPERIMENTS_DIR))
    sys.modules.pop("common", None)  # the experiments' own, not the benchmarks'
    try:
        yield importlib.import_module("leave_cluster_out")
    finally:
        sys.path.remove(str(EXPERIMENTS_DIR))
        sys.modules.pop("common", None)


def _row(cluster, score, true, predicted, matched):
    return {"image_id": f"{cluster}-{score}-{true}", "cluster": cluster, "map": score, "dice": 0.8,
            "f1_50": 2 * matched / (true + predicted), "true_nuclei": true, "predicted_nuclei": predicted}


def test_every_recipe_is_options_the_train_command_takes(loco):
    import train_and_predicted_masks as cli

    parser = cli.build_arg_parser()
    for name, options in loco.RECIPES.items():
        args = parser.parse_args(["train", "--preset", "cpu", *options])  # an option removed from train fails here
        assert args.command == "train", name


def test_the_held_out_cluster_goes_to_test_and_nothing_else_moves(loco):
    split = pd.DataFrame({"image_id": list("abcdef"), "cluster": [0, 0, 1, 1, 4, 4],
                          "subset": ["train", "cv", "train", "test", "train", "cv"]})
    held = loco.held_out_split(split, 4)
    assert list(held["subset"]) == ["train", "cv", "train", "test", "test", "test"]
    assert list(split["subset"]) == ["train", "cv", "train", "test", "train", "cv"]  # the original is untouched


def test_tables_score_the_held_out_images_and_the_own_split_apart(loco):
    folds = {
        # cluster 0 held out: its two images, and one test image of cluster 4 (the own split)
        0: [_row(0, 0.8, 10, 10, 9), _row(0, 0.6, 100, 80, 70), _row(4, 0.9, 5, 5, 5)],
        4: [_row(4, 0.2, 200, 100, 50), _row(0, 0.7, 10, 10, 10)],
    }
    table = loco.summarize(folds)
    assert table["per_cluster"]["0"] == {"images": 2, "map": 0.7, "dice": 0.8, "found": round(79 / 110, 4)}
    assert table["per_cluster"]["4"]["found"] == 0.25
    assert table["mean_over_clusters"] == pytest.approx(0.45)
    assert table["by_kind_mean_over_clusters"] == {"fluorescence": 0.7, "stained or brightfield": 0.2}
    assert table["own_split_test_map_per_fold"] == {"0": 0.9, "4": 0.7} and table["own_split_test_map"] == 0.8
    crowding = table["crowding"]
    assert list(crowding) == ["0-20", "60-150", "over 150"]
    assert crowding["0-20"]["images"] == 1 and crowding["60-150"]["found"] == 0.7
    assert crowding["over 150"] == {"images": 1, "map": 0.2, "dice": 0.8, "found": 0.25, "fluorescence_images": 0}


def test_matches_come_back_from_the_f1(loco):
    assert loco.matched_true(_row(0, 0.5, 37, 41, 29)) == 29
    assert loco.matched_true({"f1_50": 1.0, "true_nuclei": 0, "predicted_nuclei": 0}) == 0  # an empty image


def test_the_report_puts_recipes_side_by_side(loco):
    cluster0 = [_row(0, 0.8, 10, 10, 9), _row(4, 0.9, 5, 5, 5)]
    base = {0: cluster0, 4: [_row(4, 0.2, 200, 100, 50), _row(0, 0.7, 10, 10, 10)]}
    better = {0: cluster0, 4: [_row(4, 0.4, 200, 150, 120), _row(0, 0.7, 10, 10, 10)]}
    text = loco.report({"today": loco.summarize(base), "new": loco.summarize(better)})
    lines = text.splitlines()
    assert lines[0] == "| held out | images | today: mAP | found | new: mAP | found |"
    assert "| cluster 4 (stained) | 1 | 0.200 | 0.250 | 0.400 | 0.600 |" in lines
    assert "| **mean over the 8 clusters** | | **0.500** |  | **0.600** |  |" in lines
    assert "| over 150 | 1 | 0.200 | 0.250 | 0.400 | 0.600 |" in lines


def test_another_training_length_names_its_runs_apart(loco):
    assert loco.run_name("today", loco.EPOCHS, loco.STEPS) == "today"
    assert loco.run_name("today", 8, 100) == "today-8x100"
    assert loco.run_name("colour", loco.EPOCHS, loco.STEPS, seed=1) == "colour-seed1"


def test_kept_files_name_the_data_by_its_file_name_however_the_run_spelt_it(loco, tmp_path):
    run, kept = tmp_path / "run", tmp_path / "kept"
    run.mkdir()
    data = tmp_path / "datasets" / "stage1_train.zip"
    (run / "config.json").write_text('{\n  "preset": "cpu",\n  "data": "../datasets/stage1_train.zip"\n}\n')
    (run / "metrics.json").write_text(f'{{"data": "{data}"}}\n')
    loco.keep_files(run, kept, data)
    assert (kept / "config.json").read_text() == '{\n  "preset": "cpu",\n  "data": "stage1_train.zip"\n}\n'
    assert (kept / "metrics.json").read_text() == '{"data": "stage1_train.zip"}\n'
    assert not (kept / "history.csv").exists()

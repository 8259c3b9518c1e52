"""Smoke tests of the experiment scripts (``experiments/``): each runs on tiny input and writes what it promises.

The experiments record decisions already made (``experiments/README.md``); they are not part of the default test run
(``make test-slow`` runs them), so that a change to the code they study is checked against them on request.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
pytestmark = pytest.mark.slow


def experiment(name: str):
    """An experiment script imported as a module, with the experiments' own ``common`` (the benchmarks' has the same
    name)."""
    sys.path.insert(0, str(EXPERIMENTS_DIR))
    sys.modules.pop("common", None)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS_DIR))


def run_quick(tmp_path: Path, script: str, *extra: str) -> dict:
    target = tmp_path / f"{script.removesuffix('.py')}.json"
    finished = subprocess.run([sys.executable, str(EXPERIMENTS_DIR / script), "--quick", "--json", str(target), *extra],
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "wrote" in finished.stdout
    return json.loads(target.read_text())


def test_finetune_few_quick(tmp_path):
    ready = EXPERIMENTS_DIR.parent / "models" / "unet_dsb2018" / "model.keras"
    results = run_quick(tmp_path, "finetune_few.py", "--model", str(ready), "--counts", "3")
    assert results["cluster"] == 4 and set(results["runs"]) == {"3"}
    assert 0 <= results["runs"]["3"]["test"]["mean_map"] <= 1 and results["before"]["images"] == results["test_images"]


def test_finetune_few_refuses_to_score_on_images_the_model_trained_on(tmp_path):
    # The ready model's split marks cluster 4's training images 'train': scoring on them would flatter it.
    ready = EXPERIMENTS_DIR.parent / "models" / "unet_dsb2018" / "model.keras"
    finished = subprocess.run([sys.executable, str(EXPERIMENTS_DIR / "finetune_few.py"), "--model", str(ready),
                               "--score-on", "unused", "--json", str(tmp_path / "out.json")],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0 and "the model trained on 23 of these images" in finished.stderr
    assert not (tmp_path / "out.json").exists()


def test_int8_quick(tmp_path):
    results = run_quick(tmp_path, "int8.py", "--keep", str(tmp_path / "kept"))
    assert results["images"] == 3 and results["calibration_tiles"] == 8 and results["model"].endswith("model.keras")
    assert 0 <= results["int8"]["map"] <= 1 and results["speed_up"] > 0
    assert 0 <= results["int8_against_float32"]["lowest_foreground_agreement"] <= 1
    kept = json.loads((tmp_path / "kept" / "int8.json").read_text())
    assert (tmp_path / "kept" / "model.int8.onnx").is_file() and kept["calibration"]["tiles"] == 8


def test_zoom_range_quick(tmp_path):
    results = run_quick(tmp_path, "zoom_range.py")
    assert results["images"] == 3 and results["reference_area"] > 0
    rules = results["mean_map"]
    assert len(rules) == 30 and all(set(values) == {"scale1.00", "scale0.25", "mean"} for values in rules.values())
    assert all(0 <= values["mean"] <= 1 for values in rules.values())
    table = pd.read_csv(tmp_path / "zoom_range.csv")
    narrow = table.filter(like="zoom: zoom 0.5-2x").to_numpy()
    wide = table.filter(like="zoom: zoom 0.25-4x").to_numpy()
    assert narrow.min() >= 0.5 and narrow.max() <= 2 and wide.min() >= 0.25 and wide.max() <= 4


def test_auto_scale_names_an_unknown_shift():
    finished = subprocess.run([sys.executable, str(EXPERIMENTS_DIR / "auto_scale.py"), "--shifts", "none", "fog"],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "unknown shifts ['fog']" in finished.stderr


def test_auto_scale_quick(tmp_path):
    results = run_quick(tmp_path, "auto_scale.py")
    assert results["images"] == 3 and results["reference_area"] > 0
    assert set(results["mean_map"]["1x"]) == {"none", "scale2", "mean"}
    oracle = results["mean_map"]["best zoom per image (oracle)"]
    assert all(0 <= values["mean"] <= oracle["mean"] for values in results["mean_map"].values())
    assert (tmp_path / "auto_scale.csv").is_file()


def two_touching_disks(hole: int = 0) -> np.ndarray:
    """Maps of two touching disks split by a line of high contact, with a hole of ``hole`` pixels in its middle."""
    yy, xx = np.mgrid[:64, :96]
    probability = ((((yy - 32) ** 2 + (xx - 30) ** 2) < 18 ** 2) | (((yy - 32) ** 2 + (xx - 62) ** 2) < 18 ** 2))
    maps = np.zeros((64, 96, 2), np.float32)
    maps[..., 0] = probability * 0.9
    maps[..., 1] = np.where((np.abs(xx - 46) <= 1) & (np.abs(yy - 32) > (hole - 1) / 2), 0.9, 0.1) * probability
    return maps


def test_seed_rules_default_rule_is_segments_and_stricter_seeds_merge_a_fragment():
    seed_rules = experiment("seed_rules")
    from nucleunet import postprocessing

    maps = two_touching_disks()  # with a 2-pixel seed fragment inside the right one:
    maps[29:41, 65:72, 1] = 0.9  # a ring of contact around a 50-pixel seed inside the right nucleus
    maps[30:40, 66:71, 1] = 0.1
    settings = postprocessing.Postprocessing(threshold=0.5, min_size=30, contact_threshold=0.5)
    plain = seed_rules.seeded_labels(maps, threshold=0.5, contact_threshold=0.5, min_size=30)
    assert (plain == settings.labels(maps)).all()
    strict = seed_rules.seeded_labels(maps, threshold=0.5, contact_threshold=0.5, min_size=30, seed_min=60)
    assert plain.max() == 3 and strict.max() == 2


def test_seed_rules_neck_rules_split_a_seed_joined_through_a_gap_in_the_contact_line():
    seed_rules = experiment("seed_rules")

    maps = two_touching_disks(hole=3)  # one seed part joins the two nuclei through the hole
    options = dict(threshold=0.5, contact_threshold=0.5, min_size=30)
    assert seed_rules.seeded_labels(maps, **options).max() == 1
    assert seed_rules.seeded_labels(maps, **options, seed_erosion=2).max() == 2
    assert seed_rules.seeded_labels(maps, **options, seed_split=2.0).max() == 2
    assert len(seed_rules.rule_grid("necks", quick=False)) == 2 * 3 * 4 * 4
    assert seed_rules.setting_name(seed_rules.rule_grid("necks", quick=True)[0]) == \
        "threshold 0.4, contact 0.5, seed erosion 0, seed split none"


def test_seed_rules_quick(tmp_path):
    results = run_quick(tmp_path, "seed_rules.py")
    assert results["images"] == 3 and len(results["mean_map"]) == 4 + 3
    assert all(0 <= value <= 1 for value in results["mean_map"].values())
    assert (tmp_path / "seed_rules.csv").is_file()


def test_sharpness_quick(tmp_path):
    results = run_quick(tmp_path, "sharpness.py")
    assert results["images"] == 3 and results["limit"] > 0
    shifts = results["per_shift"]
    assert {"none", "blur", "scale0.25", "scale2.00"} <= set(shifts)
    assert shifts["blur"]["max"] < shifts["none"]["max"] and 0 <= shifts["blur"][f"under {results['limit']}"] <= 1


def test_background_quick(tmp_path):
    results = run_quick(tmp_path, "background.py")
    assert results["images"] == 3 and results["limit"] > 0
    shifts = results["per_shift"]
    assert shifts["background"]["min"] > shifts["none"]["max"]  # a ramp raises every image's unevenness
    assert set(results["share_above_limits"]["0.06"]) == {"none", "background", "shading"}
    assert (tmp_path / "background.csv").is_file()


def test_auto_scale_scores_a_table_with_the_zooms_it_was_made_with():
    # A table of 5 zooms (0.5-2x), as made before the automatic zoom reached 0.35-2.83x: each image's score at zoom
    # z is z, so a rule's mean is the mean zoom it chose.
    auto_scale = experiment("auto_scale")
    zooms = ("0.50", "0.71", "1.00", "1.41", "2.00")
    rows = pd.DataFrame({"shift": ["none"] * 3, "area_at_1": [400.0, 100.0, 5000.0], "sharpness": [0.1, 0.03, 0.1],
                         **{f"map_at_{zoom}": [float(zoom)] * 3 for zoom in zooms}})
    table = auto_scale.score_rules(rows, 400.0)
    assert table.loc["1x", "none"] == 1.0
    assert table.loc["auto, toward 400 px (the training images')", "none"] == pytest.approx((1 + 2 + 0.5) / 3)
    assert table.loc["auto, toward 400 px, no zoom-in below sharpness 0.04", "none"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert table.loc["best zoom per image (oracle)", "none"] == 2.0


def test_score_losses_sorts_every_unmatched_nucleus_into_one_kind():
    score_losses = experiment("score_losses")

    truth = np.zeros((40, 120), np.int32)
    truth[5:15, 5:15] = 1                                  # matched
    truth[5:15, 20:30], truth[5:15, 30:40] = 2, 3          # merged into one prediction
    truth[5:15, 50:60] = 4                                 # missed
    truth[20:36, 5:25] = 5                                 # split in two
    truth[20:30, 40:50] = 6                                # outlined in the wrong place
    predicted = np.zeros_like(truth)
    predicted[5:15, 5:15] = 1
    predicted[5:15, 20:40] = 2
    predicted[20:36, 5:15], predicted[20:36, 15:25] = 3, 4
    predicted[20:30, 44:54] = 5                            # shifted: IoU 0.43
    predicted[30:38, 80:90] = 6                            # on the background
    counts = score_losses.error_counts(truth, predicted)
    assert counts["matched"] == 1 and (counts["true"], counts["predicted"]) == (6, 6)
    assert [counts[f"true_{kind}"] for kind in score_losses.ERRORS] == [1, 2, 1, 1]
    assert [counts[f"predicted_{kind}"] for kind in score_losses.FALSE] == [1, 1, 2, 1]
    assert counts["matched"] + sum(counts[f"true_{kind}"] for kind in score_losses.ERRORS) == counts["true"]


def test_score_losses_quick(tmp_path):
    results = run_quick(tmp_path, "score_losses.py")
    scores = results["mean_map"]
    assert results["images"] == 3 and {"mAP", "oracle_split", "true_contacts_r2"} <= set(scores)
    assert scores["true_foreground_and_contacts"] >= scores["mAP"]  # the truth in place of the prediction
    assert scores["oracle_drop_unmatched"] >= scores["mAP"]  # dropping only wrong nuclei never lowers it
    counts = results["counts_at_iou_0.5"]
    assert counts["matched"] + sum(counts[f"true_{kind}"] for kind in ("missed", "merged", "split", "outline")) \
        == counts["true"]
    assert (tmp_path / "score_losses.csv").is_file()


def test_multi_zoom_predicts_the_neighbouring_zooms_within_range_and_averages_each_zoom_once():
    multi_zoom = experiment("multi_zoom")
    assert multi_zoom.zooms_of(1.0) == pytest.approx({"z": 1.0, "down": 2 ** -0.5, "up": 2 ** 0.5, "one": 1.0})
    assert set(multi_zoom.zooms_of(2 * 2 ** 0.5)) == {"z", "down", "one"}  # no 4x
    assert set(multi_zoom.zooms_of(2 ** -1.5)) == {"z", "up", "one"}  # no 0.25x
    maps = {"z": (1.0, np.zeros((2, 2, 1))), "up": (1.41, np.ones((2, 2, 1))), "one": (1.0, np.full((2, 2, 1), 9.0))}
    np.testing.assert_allclose(multi_zoom.variant_maps(maps, ("z", "up")), 0.5)
    np.testing.assert_allclose(multi_zoom.variant_maps(maps, ("z", "one")), 0.0)  # 1x is z: counted once
    np.testing.assert_allclose(multi_zoom.variant_maps(maps, ("down", "z")), 0.0)  # a zoom left out


def test_multi_zoom_quick(tmp_path):
    results = run_quick(tmp_path, "multi_zoom.py", "--no-tta")
    assert results["images"] == 3 and set(results["cv_map"]) == set(
        ["z", "z, z*sqrt2", "z/sqrt2, z", "z/sqrt2, z, z*sqrt2", "z, 1x"])
    assert all(0 <= value <= 1 for value in results["cv_map"].values())
    assert (tmp_path / "multi_zoom.csv").is_file()


def test_polarity_quick(tmp_path):
    results = run_quick(tmp_path, "polarity.py")
    wrong = results["wrong_per_kind"]
    assert sum(counts["images"] for counts in wrong.values()) == results["images"] >= 2
    assert all(counts["wrong: colour rule"] == 0 for counts in wrong.values())  # the quick images are judged right
    assert len(results["decision_changed"]) == 2  # the two stained images that luminance misjudges
    assert results["composites_flagged"] == 0
    for scores in results["decision_changed"].values():
        assert scores["colour_rule"]["map"] > scores["luminance_rule"]["map"]


def test_denoise_quick(tmp_path):
    results = run_quick(tmp_path, "denoise.py")
    assert results["images"] == 3 and set(results["mean_map"]) == {"none", "noise", "blur+noise", "low light"}
    assert results["mean_map"]["none"]["smoothed"] == 0 and results["mean_map"]["low light"]["smoothed"] == 3
    assert all(0 <= row["off"] <= 1 and 0 <= row["on"] <= 1 for row in results["mean_map"].values())
    assert (tmp_path / "denoise.csv").is_file()


def test_leave_cluster_out_quick(tmp_path):
    keep, runs = tmp_path / "keep", tmp_path / "runs"
    results = run_quick(tmp_path, "leave_cluster_out.py", "--keep", str(keep))
    assert set(results["per_cluster"]) == {"0", "1"} and results["quick"]
    assert all(values["images"] == 6 for values in results["per_cluster"].values())
    assert 0 <= results["mean_over_clusters"] <= 1 and set(results["own_split_test_map_per_fold"]) == {"0", "1"}
    assert "stage1_train" in results["options"] and not any(option.startswith("/") for option in results["options"])
    assert all(isinstance(seconds, float) for seconds in results["seconds_per_fold"].values())
    # Run again where the runs are gone (the first run's are in its scratch folder; this one's go to `runs`): fold 0's
    # kept scores are used and nothing of it is trained; fold 1, whose kept scores are gone, is trained again.
    (keep / "cluster1" / "metrics.json").unlink()
    again = run_quick(tmp_path, "leave_cluster_out.py", "--keep", str(keep), "--runs", str(runs))
    assert again["seconds_per_fold"]["0"] is None and isinstance(again["seconds_per_fold"]["1"], float)
    assert again["per_cluster"]["0"] == results["per_cluster"]["0"]
    assert (keep / "cluster1" / "metrics.json").is_file()
    # Run again where fold 1's finished run is: it is reused, not trained or timed again.
    third = run_quick(tmp_path, "leave_cluster_out.py", "--keep", str(keep), "--runs", str(runs))
    assert third["seconds_per_fold"] == {"0": None, "1": None} and third["per_cluster"] == again["per_cluster"]


def test_capacity_counts_hours_from_steps_at_each_widths_fastest_speed(tmp_path, monkeypatch):
    capacity = experiment("capacity")
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    for name, width, epochs, speeds in (("base", 16, 3, [10.0, 5.0]), ("longer", 16, 6, [2.0, 8.0]),
                                        ("wide", 24, 3, [4.0, 1.0])):
        for cluster in range(8):
            folder = runs / name / f"cluster{cluster}"
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(dict(base_filters=width, epochs=epochs, steps_per_epoch=100,
                                                                batch_size=8)))
            (folder / "training.json").write_text(json.dumps(dict(tiles_per_second=speeds[cluster % 2])))
        (results / f"leave_cluster_out_{name}.json").write_text(json.dumps(dict(run_files=f"somewhere/{name}")))
    monkeypatch.setattr(capacity.common, "RESULTS_DIR", results)
    speeds = capacity.fastest_speeds(runs)
    assert speeds == {16: 10.0, 24: 4.0}  # a slowed run (shared cores, pauses) does not set the speed
    assert capacity.training_hours("base", speeds, runs) == pytest.approx(8 * 300 * 8 / 10.0 / 3600)
    assert capacity.training_hours("longer", speeds, runs) == pytest.approx(8 * 600 * 8 / 10.0 / 3600)
    assert capacity.training_hours("wide", speeds, runs) == pytest.approx(8 * 300 * 8 / 4.0 / 3600)
    longer = dict(gain=0.014, gain_per_added_hour=0.026)
    assert not capacity.wider_adopted(longer, dict(gain=0.002, gain_per_added_hour=0.005))
    assert not capacity.wider_adopted(longer, dict(gain=0.009, gain_per_added_hour=0.05))  # below 0.01
    assert not capacity.wider_adopted(longer, dict(gain=0.012, gain_per_added_hour=0.02))  # less per hour
    assert capacity.wider_adopted(longer, dict(gain=0.02, gain_per_added_hour=0.03))

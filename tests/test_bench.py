"""Smoke tests of the benchmark scripts: each runs on tiny input and writes the JSON it promises.

The benchmarks themselves are scripts (``make bench``), not timed tests; these only check that each
script runs end to end and reports positive numbers under the expected keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"

def run_quick(tmp_path: Path, script: str, *extra: str) -> dict:
    # Named as make bench names them (bench_data.py -> data.json), so report.py can read the folder.
    target = tmp_path / f"{script.removeprefix('bench_').removesuffix('.py')}.json"
    finished = subprocess.run([sys.executable, str(BENCH_DIR / script), "--quick", "--json", str(target), *extra],
                              capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "wrote" in finished.stdout
    return json.loads(target.read_text())


def assert_positive(results: dict, *paths: str) -> None:
    for path in paths:
        value = results
        for key in path.split("."):
            value = value[key]
        assert isinstance(value, (int, float)) and value > 0, f"{path} = {value!r}"


@pytest.mark.parametrize("script", ["bench_large.py", "bench_price.py"])
def test_the_benchmarks_engine_choices_are_predicts(script):
    # written out in the scripts (they import the package only after parsing): kept equal to models.ENGINES here
    from nucleunet import models

    finished = subprocess.run([sys.executable, str(BENCH_DIR / script), "--help"], capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode == 0 and "{" + ",".join(models.ENGINES) + "}" in finished.stdout


def test_bench_data_quick(tmp_path):
    results = run_quick(tmp_path, "bench_data.py")
    assert results["benchmark"] == "data" and results["quick"] is True
    assert_positive(results, "floor_decode.seconds", "cold_threads.seconds", "cold_processes.seconds",
                    "warm.seconds", "cold_threads.peak_rss_mib", "cold_threads.tiles", "warm.tiles")
    assert results["cold_threads"]["images"] == results["cold_processes"]["images"] == results["warm"]["images"] == 12
    assert set(results["met"]) == {"cold", "warm"}


def test_bench_train_quick(tmp_path):
    results = run_quick(tmp_path, "bench_train.py", "--variants", "bf16")
    assert_positive(results, "floor.tiles_per_second", "ours.tiles_per_second", "ratio", "train_flops_per_tile",
                    "peak_gflops", "ours.gflops", "ours.fraction_of_peak", "variants.bf16.tiles_per_second",
                    "matmul_peak.numpy_float32_gflops", "matmul_peak.tf_float32_gflops")
    # Quick: 4 steps per round, the first left out; floor and ours alternate for the default 2 rounds.
    assert results["ours"]["steps_timed"] == results["floor"]["steps_timed"] == 2 * 3
    assert len(results["ours"]["round_medians"]) == len(results["floor"]["round_medians"]) == 2


def test_bench_infer_quick(tmp_path):
    results = run_quick(tmp_path, "bench_infer.py")
    assert_positive(results, "floor.megapixels_per_second", "ours.megapixels_per_second", "ratio",
                    "tta.cost", "tiles")
    assert results["images"] == 3


def test_bench_memory_quick(tmp_path):
    results = run_quick(tmp_path, "bench_memory.py")
    assert_positive(results, "peak_rss_mib", "wall_seconds")
    assert results["preset"] == "smoke"


def test_report_renders_the_tables_of_the_results_it_finds(tmp_path):
    run_quick(tmp_path, "bench_infer.py")
    finished = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--results", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "### 3. Inference" in finished.stdout and "### 1. Data" not in finished.stdout
    empty = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--results", str(tmp_path / "none")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode != 0 and "no benchmark results" in empty.stderr


def test_quick_runs_do_not_overwrite_the_real_results():
    sys.path.insert(0, str(BENCH_DIR))
    common = pytest.importorskip("common")
    parser = common.base_parser("infer", "test")
    assert parser.parse_args([]).json == common.RESULTS_DIR / "infer.json"
    assert parser.parse_args(["--quick"]).json == common.RESULTS_DIR / "infer_quick.json"
    assert parser.parse_args(["--quick", "--json", "x.json"]).json == Path("x.json")


def test_unet_flop_count_matches_a_hand_count():
    sys.path.insert(0, str(BENCH_DIR))
    bench_train = pytest.importorskip("bench_train")
    import unet

    model = unet.build_unet((8, 8, 1), depth=2, base_filters=2, batch_norm=True)
    pixels = 8 * 8
    expected = 2 * (pixels * 9 * (1 * 2 + 2 * 2)            # level 0: 1->2, 2->2
                    + pixels / 4 * 9 * (2 * 4 + 4 * 4)      # level 1 (4x4): 2->4, 4->4
                    + pixels / 4 * 4 * 4 * 2                # transpose 2x2, stride 2: each input pixel, 4->2
                    + pixels * 9 * (4 * 2 + 2 * 2)          # up level 0: concat 4 -> 2, 2 -> 2
                    + pixels * 1 * 2 * 1)                   # 1x1 output
    assert bench_train.forward_flops(model) == expected


def test_bench_large_quick(tmp_path):
    results = run_quick(tmp_path, "bench_large.py")
    assert results["benchmark"] == "large" and results["side"] == 1000
    assert_positive(results, "large.seconds", "large.peak_rss_gib", "large.megapixels_per_second")
    assert set(results["speed"]) == {"256", "512"} and set(results["speed"]["512"]) == {"floor", "trained tiles",
                                                                                          "auto tiles"}
    finished = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--results", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0 and "### 5. Large images" in finished.stdout, finished.stderr[-2000:]


def test_bench_large_blank_quick(tmp_path):
    results = run_quick(tmp_path, "bench_large.py", "--blank", "--repeats", "1")
    assert results["blank"] and results["side"] == 1000 and set(results["median_seconds"]) == {"half empty",
                                                                                               "half dotted"}
    assert_positive(results, "median_seconds.half empty", "median_seconds.half dotted")


def test_bench_flatfield_quick(tmp_path):
    results = run_quick(tmp_path, "bench_flatfield.py")
    sizes = results["sizes"]
    assert [row["side"] for row in sizes] == [256, 512] and all(row["flattened"] for row in sizes)
    # one full-size copy (and the stretch's percentile): well under three times the image
    assert all(0 < row["flatten_peak_mib"] < 3 * row["image_mib"] for row in sizes)


def test_bench_engines_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    results = run_quick(tmp_path, "bench_engines.py")
    assert set(results["subsets"]) == {"small", "large"}
    assert_positive(results, "subsets.small.keras.megapixels_per_second", "subsets.small.onnx.megapixels_per_second",
                    "subsets.large.speedup", "load_seconds.onnx")
    # the two engines run the same network: their maps agree to float rounding (an untrained network's values sit
    # near 0.5, so a rounding difference may move the odd pixel across it)
    assert all(d["max_abs"] < 1e-4 and d["flipped_fraction"] < 0.01 for d in results["differences"].values())
    finished = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--results", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0 and "### 7. Engines" in finished.stdout, finished.stderr[-2000:]


def test_bench_price_quick(tmp_path):
    results = run_quick(tmp_path, "bench_price.py")
    for subset in ("cv", "test"):
        entry = results["subsets"][subset]
        assert set(entry["settings"]) >= {"defaults", "plain", "no TTA"}
        assert_positive(entry, "floor.seconds_per_megapixel", "settings.defaults.seconds_per_megapixel",
                        "settings.plain.x_plain")
        assert all(0 <= value["map"] <= 1 and len(value["per_image"]) == entry["images"]
                   for value in entry["settings"].values())
    assert results["subsets"]["cv"]["settings"]["no TTA"]["overrides"] == {"tta": False}


def test_bench_price_on_held_out_clusters_quick(tmp_path):
    results = run_quick(tmp_path, "bench_price.py", "--leave-cluster-out", "today", "--per-cluster", "2",
                        "--settings", "defaults", "plain")
    # the held-out networks get what the ready model's defaults do to an image
    from nucleunet import models
    from nucleunet.postprocessing import Postprocessing

    ready = Postprocessing.load(models.ready_model_path().parent / "postprocessing.json")
    assert results["leave_cluster_out"] == "today"
    for field, value in results["defaults"].items():
        assert getattr(ready, field) == (tuple(value) if isinstance(value, list) else value), field
    for entry in results["settings"].values():
        assert set(entry["clusters"]) == {"0", "1"}
        assert all(value["images"] == 2 for value in entry["clusters"].values())
        assert 0 <= entry["mean_over_clusters"] <= 1 and entry["stained_or_brightfield"] is None
    assert results["settings"]["plain"]["overrides"]["scale"] == 1.0


def test_price_table_puts_stardist_beside_ours_on_the_same_images(tmp_path):
    results = run_quick(tmp_path, "bench_price.py", "--settings", "defaults", "plain")
    cv = results["subsets"]["cv"]
    peer = {"benchmark": "peer_stardist_speed", "machine": results["machine"],
            "subsets": {"cv": {"images": cv["images"], "megapixels": cv["megapixels"],
                               "seconds": 2 * cv["settings"]["plain"]["seconds"], "seconds_per_megapixel": 1.0,
                               "map": 0.25},
                        "test": {"images": cv["images"] + 1, "megapixels": 1.0, "seconds": 1.0,
                                 "seconds_per_megapixel": 1.0, "map": 0.25}}}
    (tmp_path / "peer_stardist_speed.json").write_text(json.dumps(peer))
    finished = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), "--results", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = [line for line in finished.stdout.splitlines() if "StarDist predict_instances" in line]
    # only where the images are the same: the test row's count differs, so it is left out
    assert len(rows) == 1 and rows[0].startswith("| cv: StarDist") and "| 2 |" in rows[0]


def test_bench_large_at_the_defaults_quick(tmp_path):
    results = run_quick(tmp_path, "bench_large.py", "--defaults", "--engine", "keras")
    assert results["defaults"] and "--no-tta" not in results["large"]["command"] and "speed" not in results
    assert results["engine"] == "keras" and "--engine keras" in results["large"]["command"]
    from nucleunet import prediction  # the limits predict ran with are recorded beside its numbers
    assert (results["auto_tile_max"], results["max_batch_pixels"]) == (prediction.AUTO_TILE_MAX,
                                                                      prediction.MAX_BATCH_PIXELS)
    # committed results name no machine's folders: the command is relative to the project, the scratch folder SCRATCH
    assert str(BENCH_DIR.parent) not in results["large"]["command"] + results["model"]
    assert results["large"]["command"].startswith("train_and_predicted_masks.py predict") and "SCRATCH/" in \
        results["large"]["command"]
    assert_positive(results, "large.seconds", "large.peak_rss_gib")


def test_bench_price_prices_the_model_it_is_given(tmp_path):
    script = str(BENCH_DIR / "bench_price.py")
    # a model not yet shipped is priced by its path; a wrong one is named before any image is read
    missing = tmp_path / "no-such-run"
    finished = subprocess.run([sys.executable, script, "--subsets", "cv", "--settings", "defaults", "--model",
                               str(missing), "--json", str(tmp_path / "price.json")],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0 and "model not found" in finished.stderr and str(missing) in finished.stderr
    assert not (tmp_path / "price.json").exists()
    # --quick prices a tiny model of its own: a model given beside it is refused, not ignored
    finished = subprocess.run([sys.executable, script, "--quick", "--model", str(missing)], capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 2 and "--model prices one model" in finished.stderr

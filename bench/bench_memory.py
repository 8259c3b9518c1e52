"""Memory benchmark: peak resident memory of a ``cpu``-preset training run (train, validate, evaluate, figures).

Runs ``train_and_predicted_masks.py train`` in a subprocess (a run folder in a temporary directory) and reads its
peak RSS from ``getrusage(RUSAGE_CHILDREN)``; ``--minutes`` shortens the training budget (the rest of the
run is unchanged: data, tiles, validation, test evaluation). Also reports what the stored tiles take.

    python bench/bench_memory.py                 # full cpu preset (about 14 minutes of training)
    python bench/bench_memory.py --minutes 2     # shortened
    python bench/bench_memory.py --quick         # smoke preset on tiny synthetic data
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

TARGET_GIB = 3.0


def main(argv=None) -> int:
    parser = common.base_parser("memory", __doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, help="training budget (default: the preset's own)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        scratch = Path(scratch)
        command = [sys.executable, str(common.PROJECT_DIR / "train_and_predicted_masks.py"), "train",
                   "--out", str(scratch / "runs"), "--quiet"]
        if args.quick:
            data = common.write_tiny_dataset(scratch / "data", images=24)
            command += ["--preset", "smoke", "--data", str(data), "--split", str(scratch / "split.csv"),
                        "--no-cache"]
        else:
            command += ["--preset", "cpu"]
        if args.minutes is not None:
            command += ["--minutes", str(args.minutes)]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if finished.returncode:
            print(finished.stdout[-3000:], finished.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"the training run failed with exit status {finished.returncode}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (run_dir,) = (scratch / "runs").iterdir()
        training = json.loads((run_dir / "training.json").read_text())
        summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
        config = json.loads((run_dir / "config.json").read_text())
        log = finished.stderr + finished.stdout
    tiles = next((line for line in log.splitlines() if "tiles " in line and "train" in line), "")
    results = {
        "benchmark": "memory", "quick": args.quick, "machine": common.machine(), "command": common.portable(" ".join(command), scratch=scratch),
        "preset": config["preset"], "minutes_budget": config["minutes"], "shortened": args.minutes is not None,
        "wall_seconds": seconds, "training_minutes": training["minutes"], "peak_rss_mib": peak_mib,
        "peak_rss_gib": peak_mib / 1024, "test_mean_dice": summary["mean_dice"], "tiles_log_line": tiles.strip(),
        "tile_bytes_per_pixel": {"images": 2, "masks": 1, "batch": "float32, cast per batch"},
        "targets": {"peak_rss_gib": TARGET_GIB},
    }
    results["met"] = {"peak_rss": results["peak_rss_gib"] <= TARGET_GIB}
    common.print_table(
        f"Memory: preset {results['preset']}, training budget {results['minutes_budget']} min"
        f"{' (shortened)' if results['shortened'] else ''}",
        [("peak RSS of the whole run", peak_mib / 1024, TARGET_GIB, results["training_minutes"], seconds)],
        ("measurement", "GiB", "target GiB", "trained min", "wall s"))
    print(f"{tiles.strip()}\ntarget: peak <= {TARGET_GIB} GiB ({'met' if results['met']['peak_rss'] else 'NOT met'})")
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

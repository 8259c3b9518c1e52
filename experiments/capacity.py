"""Capacity per CPU-hour: does a wider network or a longer schedule buy more on unseen kinds per hour of training?

The rule (docs/results/leave-cluster-out/decision_rule.txt, 2026-12-06 07:40 UTC and its 14:04 addendum): against
the baseline recipe, each candidate's gain is its mean mAP over the 8 held-out clusters minus the baseline's, its
cost the training hours it adds over the 8 runs. The wider network is adopted if its gain is at least 0.01 and its
gain per added hour at least that of training longer.

The hours come from each run's steps and speed, not from the minutes its ``training.json`` counts: those include the
pauses and the time the 2 cores were shared with other work, which differed from run to run. A network's speed is the
fastest of its runs (training tiles per second, ``training.json``; the least disturbed), taken over every
leave-one-cluster-out run of the same width on this machine; validation and scoring are left out of the cost.

    python experiments/capacity.py --baseline contact-weight --longer contact-weight-6x100 --wider wide24
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common

RUN_FILES = common.PROJECT_DIR / "docs" / "results" / "leave-cluster-out"


def result(name: str) -> dict:
    return json.loads((common.RESULTS_DIR / f"leave_cluster_out_{name}.json").read_text())


def _width(run_dir: Path) -> int:
    return json.loads((run_dir / "config.json").read_text())["base_filters"]


def fastest_speeds(run_files: Path = RUN_FILES) -> dict[int, float]:
    """Training tiles per second of the fastest leave-one-cluster-out run of each network width."""
    fastest: dict[int, float] = {}
    for training in run_files.glob("*/cluster*/training.json"):
        width = _width(training.parent)
        fastest[width] = max(fastest.get(width, 0.0), json.loads(training.read_text())["tiles_per_second"])
    return fastest


def training_hours(name: str, speeds: dict[int, float], run_files: Path = RUN_FILES) -> float:
    """The hours of training the recipe's 8 runs take at their network's fastest speed."""
    found = result(name)
    runs = sorted((run_files / Path(found["run_files"]).name).glob("cluster*"))
    if len(runs) != 8:
        raise SystemExit(f"{name}: {len(runs)} runs kept, not 8")
    seconds = 0.0
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        tiles = config["epochs"] * config["steps_per_epoch"] * config["batch_size"]
        seconds += tiles / speeds[config["base_filters"]]
    return seconds / 3600


def wider_adopted(longer: dict, wider: dict) -> bool:
    """The rule: the wider network's gain at least 0.01, and its gain per added hour at least training longer's."""
    return bool(wider["gain"] >= 0.01 and wider["gain_per_added_hour"] >= longer["gain_per_added_hour"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="contact-weight")
    parser.add_argument("--longer", default="contact-weight-6x100")
    parser.add_argument("--wider", default="wide24")
    parser.add_argument("--json", type=Path, default=common.RESULTS_DIR / "capacity.json")
    args = parser.parse_args()

    speeds = fastest_speeds()
    base_map, base_hours = result(args.baseline)["mean_over_clusters"], training_hours(args.baseline, speeds)
    rows, out = [], {"baseline": args.baseline, "tiles_per_second": speeds, "recipes": {}}
    for role, name in (("longer", args.longer), ("wider", args.wider)):
        found = result(name)
        gain = found["mean_over_clusters"] - base_map
        hours = training_hours(name, speeds) - base_hours
        if hours <= 0:
            raise SystemExit(f"{name} must train longer than {args.baseline}")
        out["recipes"][role] = dict(name=name, mean_over_clusters=found["mean_over_clusters"], gain=round(gain, 4),
                                    added_hours=round(hours, 3), gain_per_added_hour=round(gain / hours, 4),
                                    stained_or_brightfield=found["by_kind_mean_over_clusters"]["stained or brightfield"],
                                    fluorescence=found["by_kind_mean_over_clusters"]["fluorescence"])
        rows.append([name, f"{found['mean_over_clusters']:.4f}", f"{gain:+.4f}", f"{hours:.3f}", f"{gain / hours:+.4f}"])
    out["wider_adopted"] = wider_adopted(out["recipes"]["longer"], out["recipes"]["wider"])
    common.print_table("Capacity per added hour of training (8 held-out clusters)", rows,
                       ("recipe", "mean mAP", f"gain over {args.baseline}", "added hours", "gain per added hour"))
    print(f"speeds (training tiles/s, fastest run of each width): {speeds}")
    print(f"{args.baseline}: mean {base_map:.4f}, {base_hours:.3f} hours of training")
    print("wider network adopted" if out["wider_adopted"] else "wider network not adopted: training longer is the "
          "better use of the hours")
    out["machine"] = common.machine()
    common.write_json(args.json, out)


if __name__ == "__main__":
    main()

"""How does a training recipe do on kinds of images it has never seen? Leave one cluster out, eight times.

For each of the split's 8 clusters: a split that marks all of that cluster's images ``test`` (nothing of it reaches
training, the choice of checkpoint or the post-processing), a training run of the recipe on the other clusters'
train images (``train_and_predicted_masks.py train``, which then scores every ``test`` image with the run's own
post-processing), and from that run's ``metrics.json``: the held-out cluster's images, and the other clusters' test
images (the own-split score of the same run). Reported per held-out cluster, by kind (fluorescence: clusters 0-3;
stained tissue and brightfield: 4-7), and by how crowded the image is (true nuclei per image in bins, with the share
of true nuclei found: matched at IoU 0.5).

    nice python experiments/leave_cluster_out.py --recipe today
    nice python experiments/leave_cluster_out.py --recipe today --epochs 8   # the preset's own length (runs: today-8x100)
    python experiments/leave_cluster_out.py --report today colour     # the tables of finished recipes, side by side

Runs go to ``runs/leave-cluster-out/<recipe>/cluster<k>/``: a finished one is reused, an unfinished one resumed, so
the command can be run again after an interruption; where a run's folder is gone but its kept files (below) are
there, the kept scores are used. ``seconds_per_fold`` counts what this command spent training and scoring each fold
(a resumed run: only the part after the resume), null for a fold it reused (a finished run or kept files). Each
run's small files are kept under ``--keep`` (default ``docs/results/leave-cluster-out/<recipe>/``), the table in
``experiments/results/leave_cluster_out_<recipe>.json``.
The training is the recipe shortened (``--epochs`` x ``--steps-per-epoch``, no time budget, so the result does not
depend on the machine's speed or on what else runs on it); test-time augmentation is off when scoring. The default,
3 x 100 steps, did not rank two recipes as the preset's own length (``--epochs 8``) does, so decisions are measured
with ``--epochs 8`` (docs/results.md, "The shortened measure against the preset's own length").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import common as common_bench
from bench.common import portable

import common

SCRATCH_DIR = Path(tempfile.gettempdir())

SPLIT = common.PROJECT_DIR / "docs" / "results" / "split.csv"
SMALL_FILES = ("config.json", "history.csv", "training.json", "postprocessing.json", "metrics.json")

# Training options on top of the cpu preset. A recipe is added here when it is tried, and removed from the code it
# switches (not from this record) when its rule rejects it: docs/results.md keeps the decision.
RECIPES: dict[str, list[str]] = {
    # The cpu preset as it was until 2026-12-06 14:04 UTC, when contact weight 5 was adopted into it: the baseline of
    # the recipes decided until then (their runs and results keep the name).
    "today": ["--contact-weight", "1"],
    # Tried and rejected (docs/results/leave-cluster-out/decision.txt): "colour", --colour-variants 4.
    # Rejected on one seed, then adopted on two (decision.txt, its second rule in decision_rule.txt): the cross-entropy
    # of the pixels where nuclei touch counted 5 times (unet.ContactWeightedLoss). The cpu preset since: the baseline
    # of the recipes decided after it (each recipe below is the preset, so contact weight 5, plus its options).
    "contact-weight": ["--contact-weight", "5"],
    # Tried and rejected (decision.txt): "cytoplasm", --cytoplasm 0.3 (a cytoplasm painted around the nuclei).
    # Tried and rejected (decision.txt): "cores", --cores (a third output channel, the core of each nucleus, as seeds).
    # Tried and rejected (decision.txt): "acquisition", --acquisition 0.15 (bright specks, saturation, low light and
    # JPEG in 15 % of the crops each).
    # Tried and rejected (decision.txt): "touch-crops", --touch-crops 0.5 (half the crops centred where nuclei touch).
    # Tried and rejected (decision.txt): "distance", --distance (a third output channel, each pixel's distance to its
    # nucleus's edge; one seed per dome of it).
    # A wider network: 24 filters at the first level instead of 16 (about twice the work per step).
    "wide24": ["--base-filters", "24"],
    # Tried and rejected (decision.txt): "contrast-wide", --contrast-range 0.3 1.7 (the preset's is 0.6-1.4: faint
    # nuclei, as stained tissue shows them once in gray).
    # Tried and rejected (decision.txt): "texture", --texture 0.3 (30 % of the crops mottled by a fine texture, as the
    # chromatin of stained nuclei looks in gray).
}
# What the clusters of docs/results/split.csv hold (docs/results.md, "Where it fails").
KINDS = {0: "fluorescence", 1: "fluorescence", 2: "fluorescence", 3: "fluorescence",
         4: "stained", 5: "stained", 6: "stained", 7: "brightfield"}
CROWDING_BINS = (0, 20, 60, 150, np.inf)
# The shortened training of every run (the cpu preset trains 8 x 100 steps where the CPU computes bfloat16 fast).
EPOCHS, STEPS = 3, 100


def run_name(recipe: str, epochs: int, steps: int, seed: int = 0) -> str:
    """What a recipe's runs and results are called: the recipe, with the training length and the seed where they
    are not the defaults."""
    length = "" if (epochs, steps) == (EPOCHS, STEPS) else f"-{epochs}x{steps}"
    return f"{recipe}{length}{f'-seed{seed}' if seed else ''}"


def held_out_split(split: pd.DataFrame, cluster: int) -> pd.DataFrame:
    """``split`` with every image of ``cluster`` marked test."""
    held = split.copy()
    held.loc[held["cluster"] == cluster, "subset"] = "test"
    return held


def matched_true(row: dict) -> int:
    """True nuclei matched at IoU 0.5, from the F1 at 0.5 (2 matches / (true + predicted))."""
    return int(round(row["f1_50"] * (row["true_nuclei"] + row["predicted_nuclei"]) / 2))


def summarize(folds: dict[int, list[dict]]) -> dict:
    """The tables of the benchmark from each held-out cluster's per-image rows (``metrics.json``'s ``per_image``,
    each with its ``cluster``): held-out images per cluster, by kind and by crowding, and the own-split score."""
    held, own = [], []
    for cluster, rows in folds.items():
        for row in rows:
            entry = {**row, "fold": int(cluster), "matched": matched_true(row)}
            (held if int(row["cluster"]) == int(cluster) else own).append(entry)
    held, own = pd.DataFrame(held), pd.DataFrame(own)

    def scores(frame: pd.DataFrame) -> dict:
        true = int(frame["true_nuclei"].sum())
        return {"images": int(len(frame)), "map": round(float(frame["map"].mean()), 4),
                "dice": round(float(frame["dice"].mean()), 4),
                "found": round(float(frame["matched"].sum() / true), 4) if true else None}

    per_cluster = {str(cluster): scores(group) for cluster, group in held.groupby("cluster")}
    cluster_maps = {int(cluster): values["map"] for cluster, values in per_cluster.items()}
    kinds = {}
    for kind in ("fluorescence", "stained or brightfield"):
        members = [c for c in cluster_maps if (KINDS.get(c) == "fluorescence") == (kind == "fluorescence")]
        kinds[kind] = round(float(np.mean([cluster_maps[c] for c in members])), 4) if members else None
    bins = pd.cut(held["true_nuclei"], CROWDING_BINS, right=True, include_lowest=True)
    crowding = {}
    for interval, group in held.groupby(bins, observed=True):
        low, high = interval.left, interval.right
        name = f"over {int(low)}" if np.isinf(high) else f"{max(int(low), 0)}-{int(high)}"
        crowding[name] = {**scores(group), "fluorescence_images": int(group["cluster"].map(KINDS).eq(
            "fluorescence").sum())}
    own_per_fold = {str(fold): round(float(group["map"].mean()), 4) for fold, group in own.groupby("fold")} \
        if len(own) else {}
    return {
        "mean_over_clusters": round(float(np.mean(list(cluster_maps.values()))), 4),
        "by_kind_mean_over_clusters": kinds,
        "all_held_out_images": scores(held),
        "per_cluster": per_cluster,
        "crowding": crowding,
        "own_split_test_map": round(float(np.mean(list(own_per_fold.values()))), 4) if own_per_fold else None,
        "own_split_test_map_per_fold": own_per_fold,
    }


def report(results: dict[str, dict]) -> str:
    """Markdown tables of recipes side by side (recipe name -> its results JSON): per held-out cluster, the means,
    by crowding, and the own split's test images."""
    names = list(results)
    first = results[names[0]]

    def cell(values: dict | None, key: str = "map") -> str:
        return "-" if values is None or values.get(key) is None else f"{values[key]:.3f}"

    header = "| held out | images | " + " | ".join(f"{name}: mAP | found" for name in names) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(names))]
    for cluster, values in first["per_cluster"].items():
        row = [f"cluster {cluster} ({KINDS.get(int(cluster), '?')})", str(values["images"])]
        for name in names:
            mine = results[name]["per_cluster"].get(cluster)
            row += [cell(mine), cell(mine, "found")]
        lines.append("| " + " | ".join(row) + " |")
    for label, pick in (("mean over the 8 clusters", lambda r: r["mean_over_clusters"]),
                        ("mean, fluorescence (0-3)", lambda r: r["by_kind_mean_over_clusters"]["fluorescence"]),
                        ("mean, stained and brightfield (4-7)",
                         lambda r: r["by_kind_mean_over_clusters"]["stained or brightfield"])):
        lines.append(f"| **{label}** | | " + " | ".join(f"**{pick(results[name]):.3f}** | " for name in names) + " |")
    lines.append(f"| all held-out images | {first['all_held_out_images']['images']} | " + " | ".join(
        f"{cell(results[name]['all_held_out_images'])} | {cell(results[name]['all_held_out_images'], 'found')}"
        for name in names) + " |")
    lines += ["", "| true nuclei per image | images | " + " | ".join(f"{name}: mAP | found" for name in names) + " |",
              "|" + "---|" * (2 + 2 * len(names))]
    for bin_name, values in first["crowding"].items():
        row = [bin_name, str(values["images"])]
        for name in names:
            mine = results[name]["crowding"].get(bin_name)
            row += [cell(mine), cell(mine, "found")]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| own split, test images of the other clusters (mean of the 8 runs) | " + " | ".join(
        f"{name}: {results[name]['own_split_test_map']:.3f}" for name in names) + " |", "|---|" + "---|" * len(names)]
    return "\n".join(lines)


def finished_run(folder: Path) -> Path | None:
    """The finished run in ``folder`` (its ``state.json`` says so and it has scored the test images), or None."""
    for path in sorted(path for path in folder.glob("*") if (path / "state.json").is_file()):
        state = json.loads((path / "state.json").read_text())
        if state.get("finished") is not False and (path / "metrics.json").is_file():
            return path
    return None


def fold_run(folder: Path, split_path: Path, options: list[str]) -> Path:
    """The run in ``folder`` that has no finished one yet: resumed where one was started, else trained."""
    existing = sorted(path for path in folder.glob("*") if (path / "state.json").is_file())
    if existing:
        common.run_cli(["resume", str(existing[-1])])
        return existing[-1]
    common.run_cli(["train", "--split", str(split_path), "--out", str(folder), *options])
    (path,) = [path for path in folder.glob("*") if (path / "state.json").is_file()]
    return path


def keep_files(run_dir: Path, target: Path, data: Path) -> None:
    """A run's small files copied to ``target``, naming the data by its file name and the project's files relative to
    it (committed records name no machine's paths)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run_dir / name).is_file():
            text = (run_dir / name).read_text().replace(str(data), data.name)
            if name == "config.json":  # the data as the run was given it, which may be another spelling of ``data``
                config = json.loads(text)
                if config.get("data"):
                    config["data"] = Path(config["data"]).name
                text = json.dumps(config, indent=2) + "\n"
            (target / name).write_text(portable(text, scratch=SCRATCH_DIR))


def quick_inputs(folder: Path) -> tuple[Path, pd.DataFrame]:
    """``--quick``: a tiny synthetic dataset and a split of it in two clusters."""
    data = common_bench.write_tiny_dataset(folder)
    ids = sorted(path.name for path in data.iterdir())
    subsets = ["train", "train", "train", "cv", "test", "train"] * (len(ids) // 6 + 1)
    return data, pd.DataFrame({"image_id": ids, "cluster": [(index // 2) % 2 for index in range(len(ids))],
                               "subset": subsets[: len(ids)]})


def main() -> None:
    first = argparse.ArgumentParser(add_help=False)  # what names the default JSON: leave_cluster_out_<name>.json
    first.add_argument("--recipe", default="today")
    first.add_argument("--epochs", type=int, default=EPOCHS)
    first.add_argument("--steps-per-epoch", type=int, default=STEPS)
    first.add_argument("--seed", type=int, default=0)
    known = first.parse_known_args()[0]
    name = run_name(known.recipe, known.epochs, known.steps_per_epoch, known.seed)
    parser = common.base_parser(f"leave_cluster_out_{name}", __doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="today")
    parser.add_argument("--clusters", type=int, nargs="+", help="the clusters to hold out (default: all)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS}; 8 is the cpu preset's own "
                        "length, the one decisions are measured at")
    parser.add_argument("--steps-per-epoch", type=int, default=STEPS, help=f"default {STEPS}; another length than "
                        f"{EPOCHS} x {STEPS} names its runs and results <recipe>-<epochs>x<steps>")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (weights, crops; default 0; another "
                        "names its runs and results <recipe>-seed<N>): the spread between seeds is the noise")
    parser.add_argument("--data", type=Path, help="the DSB training set (default: dsb.find_dataset())")
    parser.add_argument("--split", type=Path, default=SPLIT, help="the split whose clusters are held out")
    parser.add_argument("--runs", type=Path, help="where the runs go (default: runs/leave-cluster-out; with --quick, "
                        "a scratch folder)")
    parser.add_argument("--keep", type=Path, help="where each run's small files are kept (default: "
                        "docs/results/leave-cluster-out/<recipe>)")
    parser.add_argument("--report", nargs="+", metavar="RECIPE",
                        help="print the tables of these recipes' results (their JSON files), side by side; no runs")
    args = parser.parse_args()
    if args.report:
        results = {name: json.loads((common.RESULTS_DIR / f"leave_cluster_out_{name}.json").read_text())
                   for name in args.report}
        print(report(results))
        return
    import dsb
    from nucleunet import stratify

    if args.quick:  # a tiny dataset, the smoke preset, runs and kept files under a scratch folder unless named
        scratch = Path(tempfile.mkdtemp(prefix="leave-cluster-out-"))
        data, split = quick_inputs(scratch / "data")
        args.runs, keep = args.runs or scratch / "runs", args.keep or scratch / "keep"
        base = ["--preset", "smoke", "--no-cache"]
    else:
        data, split = dsb.find_dataset(args.data), stratify.read_split(args.split)
        keep = args.keep or common.PROJECT_DIR / "docs" / "results" / "leave-cluster-out" / name
        args.runs = args.runs or common.PROJECT_DIR / "runs" / "leave-cluster-out"
        base = ["--preset", "cpu", "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
                "--minutes", "0"]
    clusters = args.clusters if args.clusters is not None else sorted(int(c) for c in split["cluster"].unique())
    options = [*base, "--data", str(data), "--seed", str(args.seed), "--no-tta", "--figures-per-cluster", "0",
               *RECIPES[args.recipe]]
    recipe_dir = args.runs / name
    folds, seconds = {}, {}
    for cluster in clusters:
        folder = recipe_dir / f"cluster{cluster}"
        folder.mkdir(parents=True, exist_ok=True)
        split_path = folder / "split.csv"
        if not split_path.exists():
            held_out_split(split, cluster).to_csv(split_path, index=False)
        kept, run_dir = keep / f"cluster{cluster}", finished_run(folder)
        seconds[str(cluster)] = None  # stays so for a fold reused (its kept files or its finished run)
        if run_dir is None and (kept / "metrics.json").is_file():
            # The run folder is gone (runs/ is not committed: another machine, a fresh clone) but the finished run's
            # kept files are here: its scores are reused, not trained again. Keep files only land once a run is done.
            print(f"cluster {cluster}: the finished run's kept files in {portable(str(kept))}", flush=True)
            folds[cluster] = json.loads((kept / "metrics.json").read_text())["per_image"]
        else:
            if run_dir is None:
                start = time.perf_counter()
                run_dir = fold_run(folder, split_path, options)
                seconds[str(cluster)] = round(time.perf_counter() - start, 1)
            folds[cluster] = json.loads((run_dir / "metrics.json").read_text())["per_image"]
            keep_files(run_dir, kept, data)
        held = [row["map"] for row in folds[cluster] if row["cluster"] == cluster]
        took = "" if seconds[str(cluster)] is None else f" ({seconds[str(cluster)]:.0f} s)"
        print(f"cluster {cluster}: {len(held)} held-out images, mAP {np.mean(held):.3f}{took}", flush=True)
    table = summarize(folds)
    print(json.dumps({key: table[key] for key in ("mean_over_clusters", "by_kind_mean_over_clusters",
                                                  "own_split_test_map")}, indent=1))
    common.write_json(args.json, {
        "experiment": "leave_cluster_out", "recipe": args.recipe, "quick": args.quick,
        "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "options": [portable(option) if option != str(data) else data.name for option in options],
        "split": portable(str(args.split)), "run_files": portable(str(keep)), "seconds_per_fold": seconds,
        **table, "machine": common.machine()})


if __name__ == "__main__":
    main()

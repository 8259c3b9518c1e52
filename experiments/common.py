"""Shared pieces of the experiment scripts: a model's CV images, their scores, and where the results go.

Each experiment prints a table and writes its numbers as JSON (default ``experiments/results/<name>.json``); the
timing, machine and table helpers are the benchmarks' (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

EXPERIMENTS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = EXPERIMENTS_DIR.parent
RESULTS_DIR = EXPERIMENTS_DIR / "results"
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from bench.common import base_parser as bench_parser  # noqa: E402
from bench.common import machine, median, print_table, timed, write_json  # noqa: E402,F401 - for the experiments


def run_cli(arguments: list[str]) -> str:
    """``train_and_predicted_masks.py ARGUMENTS --quiet`` in a fresh interpreter: its output, or on failure the end of
    its output and ``SystemExit``."""
    import subprocess

    finished = subprocess.run([sys.executable, str(PROJECT_DIR / "train_and_predicted_masks.py"), *arguments,
                               "--quiet"], capture_output=True, text=True, check=False)
    if finished.returncode:
        print(finished.stdout[-3000:], finished.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(arguments[:2])} failed with exit status {finished.returncode}")
    return finished.stdout


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every experiment has: ``--quick`` and ``--json`` (default ``experiments/results/<name>.json``)."""
    return bench_parser(name, description, RESULTS_DIR)


def model_parser(name: str, description: str, *, tta: bool = False, subset: bool = False,
                 model_help: str = "the model (default: the ready model in models/)") -> argparse.ArgumentParser:
    """``base_parser`` with the options of the benchmarks that score a model on its CV images: ``--model`` (the
    ready model by default), ``--data``, with ``tta``, ``--tta``, and with ``subset``, ``--subset`` (cv, or test
    once a decision is made: its results go to ``<name>_test.json`` by default)."""
    parser = base_parser(name, description)
    if subset:
        parser.add_argument("--subset", choices=("cv", "test"), default="cv",
                            help="the split's images to score (default: cv; test only after a decision)")
    parser.add_argument("--model", type=Path, default=PROJECT_DIR / "models" / "unet_dsb2018" / "model.keras",
                        help=model_help)
    parser.add_argument("--data", type=Path, help="the DSB training set (default: dsb.find_dataset())")
    if tta:
        parser.add_argument("--tta", action="store_true", help="predict with test-time augmentation (8x slower)")
    return parser


@dataclasses.dataclass
class CVImages:
    """What the zoom benchmarks score a model with: its CV images (ids), the training images' typical nucleus
    area (``postprocessing.reference_area``), and its predictor."""

    model: object  # models.TrainedModel
    source: Path
    train: list
    cv: list
    clusters: dict
    reference: float
    predict_tiles: object
    tile_size: int
    min_overlap: int


def cv_raw_images(model_path: Path, data: Path | None, quick: bool):
    """The model at ``model_path`` (``models.TrainedModel``), the ids of its split's CV images (``quick``: 3), and an
    iterator of (image_id, raw image, labels) over them as their files hold them (``dsb.read_raw_images``)."""
    import dsb
    from nucleunet import models, stratify

    model = models.TrainedModel.open(model_path)
    split = stratify.read_split(model.split)
    cv = sorted(split.loc[split["subset"] == "cv", "image_id"])[: 3 if quick else None]
    return model, cv, dsb.read_raw_images(dsb.find_dataset(data), cv)


def cv_images(model_path: Path, data: Path | None, quick: bool) -> CVImages:
    """The model at ``model_path`` with the CV and training image ids of its split (``quick``: 3 and 10)."""
    import dsb
    from nucleunet import models, postprocessing, stratify

    model = models.TrainedModel.open(model_path)
    source = dsb.find_dataset(data)
    split = stratify.read_split(model.split)
    train = sorted(split.loc[split["subset"] == "train", "image_id"])
    cv = sorted(split.loc[split["subset"] == "cv", "image_id"])
    if quick:
        train, cv = train[:10], cv[:3]
    reference = postprocessing.reference_area(labels for _, _, labels in dsb.read_raw_images(source, train))
    predict_tiles, tile_size, min_overlap = model.predictor("float32")
    return CVImages(model, source, train, cv, dict(zip(split["image_id"], split["cluster"].astype(int))), reference,
                    predict_tiles, tile_size, min_overlap)


def write_rule_results(json_path: Path, name: str, data: CVImages, table, summary, *, quick: bool, seconds: float,
                       model_path: Path, **extra) -> None:
    """Print a rules-by-shifts ``summary`` of CV mAP, write the per-image ``table`` beside ``json_path`` as CSV and
    the means as JSON."""
    print(f"CV mAP without test-time augmentation, {len(data.cv)} images, {model_path}:")
    print(summary.round(3).to_string())
    csv_path = Path(json_path).with_suffix(".csv")
    table.to_csv(csv_path, index=False)
    write_json(json_path, {
        "benchmark": name, "quick": quick, "model": str(model_path), "images": len(data.cv),
        "reference_area": data.reference, **extra, "seconds": round(seconds, 1),
        "mean_map": {rule: {shift: round(float(value), 4) for shift, value in values.items()}
                     for rule, values in summary.iterrows()},
        "per_image": csv_path.name, "machine": machine()})


def shifted(raw: np.ndarray, labels: np.ndarray, shift: str, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The image and labels of one row (``robustness.perturb``, seeded by the image's id, as ``evaluate --perturb``)."""
    from nucleunet import robustness

    return robustness.perturb(raw, labels, shift, seed=robustness.image_seed(image_id))

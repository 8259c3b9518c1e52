"""Shared pieces of the benchmark scripts: timing, memory, the machine, tables, JSON, tiny data.

Each ``bench_*.py`` script prints a table and writes its numbers as JSON (default
``bench/results/<name>.json``); ``make bench`` runs them all, ``bench/RESULTS.md`` keeps the record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))


class _BenchParser(argparse.ArgumentParser):
    """Resolves ``--json``'s default after parsing: a ``--quick`` run must not overwrite a real run's results."""

    def __init__(self, name: str, **kwargs):
        super().__init__(**kwargs)
        self.bench_name = name

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.json is None:
            test = "_test" if getattr(parsed, "subset", "cv") == "test" else ""
            parsed.json = RESULTS_DIR / f"{self.bench_name}{test}{'_quick' if parsed.quick else ''}.json"
        return parsed


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick`` and ``--json``."""
    parser = _BenchParser(name, description=description)
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke run on tiny synthetic data and a tiny model (numbers mean nothing)")
    parser.add_argument("--json", type=Path,
                        help=f"where to write the results (default: bench/results/{name}.json; "
                             f"with --quick, {name}_quick.json)")
    return parser


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


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_gib, 1),
        "avx512_bf16": "avx512_bf16" in flags.split(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_free_flag": Path("/tmp/cpu_free").exists(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory so far (Linux reports KiB) of this process or of its waited-for children."""
    return resource.getrusage(who).ru_maxrss / 1024


def median(values) -> float:
    return float(statistics.median(values))


def timed(function, *args, **kwargs):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    """A plain fixed-width table on stdout."""
    cells = [tuple(header)] + [tuple(format_value(value) for value in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print("  ".join(value.ljust(width) if i == 0 else value.rjust(width)
                        for i, (value, width) in enumerate(zip(row, widths))))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def format_value(value) -> str:
    """A table cell: floats to 3 significant digits (whole numbers from 100 up)."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: Path, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nwrote {path}")


def write_tiny_dataset(root: Path, *, images: int = 12, shape=(96, 128), seed: int = 0) -> Path:
    """A tiny synthetic DSB-layout folder (gray PNGs with disk nuclei, one mask PNG each), for ``--quick``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    top = Path(root) / "stage1_train"
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    for index in range(images):
        image_id = f"tiny{index:03d}"
        (top / image_id / "images").mkdir(parents=True, exist_ok=True)
        (top / image_id / "masks").mkdir(exist_ok=True)
        picture = rng.normal(20, 5, shape)
        for nucleus in range(4):
            centre = rng.integers(12, shape[0] - 12), rng.integers(12, shape[1] - 12)
            disk = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < int(rng.integers(4, 10)) ** 2
            picture[disk] = 200
            Image.fromarray((disk * 255).astype(np.uint8)).save(top / image_id / "masks" / f"m{nucleus}.png")
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(top / image_id / "images" / f"{image_id}.png")
    return top


@dataclasses.dataclass
class CVImages:
    """What the zoom benchmarks score a model with: its CV images (ids), the training images' typical nucleus
    area (``segment.reference_area``), and its predictor."""

    model: object  # pipeline.TrainedModel
    source: Path
    train: list
    cv: list
    clusters: dict
    reference: float
    predict_tiles: object
    tile_size: int
    min_overlap: int


def cv_raw_images(model_path: Path, data: Path | None, quick: bool):
    """The model at ``model_path`` (``pipeline.TrainedModel``), the ids of its split's CV images (``quick``: 3), and an
    iterator of (image_id, raw image, labels) over them as their files hold them (``dsb.read_raw_images``)."""
    import dsb
    import pipeline
    import stratify

    model = pipeline.TrainedModel.open(model_path)
    split = stratify.read_split(model.split)
    cv = sorted(split.loc[split["subset"] == "cv", "image_id"])[: 3 if quick else None]
    return model, cv, dsb.read_raw_images(dsb.find_dataset(data), cv)


def cv_images(model_path: Path, data: Path | None, quick: bool) -> CVImages:
    """The model at ``model_path`` with the CV and training image ids of its split (``quick``: 3 and 10)."""
    import dsb
    import pipeline
    import segment
    import stratify

    model = pipeline.TrainedModel.open(model_path)
    source = dsb.find_dataset(data)
    split = stratify.read_split(model.split)
    train = sorted(split.loc[split["subset"] == "train", "image_id"])
    cv = sorted(split.loc[split["subset"] == "cv", "image_id"])
    if quick:
        train, cv = train[:10], cv[:3]
    reference = segment.reference_area(labels for _, _, labels in dsb.read_raw_images(source, train))
    predict_tiles, tile_size, min_overlap = model.predictor()
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

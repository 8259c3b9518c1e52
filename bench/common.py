"""Shared pieces of the benchmark scripts: timing, memory, the machine, tables, JSON, tiny data.

Each ``bench_*.py`` script prints a table and writes its numbers as JSON (default
``bench/results/<name>.json``); ``make bench`` runs them all, ``bench/RESULTS.md`` keeps the record. The
experiments (``experiments/``) use these pieces too.
"""

from __future__ import annotations

import argparse
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

    def __init__(self, name: str, results_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.bench_name, self.results_dir = name, results_dir

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.json is None:
            test = "_test" if getattr(parsed, "subset", "cv") == "test" else ""
            parsed.json = self.results_dir / f"{self.bench_name}{test}{'_quick' if parsed.quick else ''}.json"
        return parsed


def base_parser(name: str, description: str, results_dir: Path = RESULTS_DIR) -> argparse.ArgumentParser:
    """The options every benchmark has: ``--quick`` and ``--json`` (in ``results_dir`` by default)."""
    parser = _BenchParser(name, results_dir, description=description)
    parser.add_argument("--quick", action="store_true",
                        help="seconds-long smoke run on tiny synthetic data and a tiny model (numbers mean nothing)")
    where = results_dir.relative_to(PROJECT_DIR).as_posix()
    parser.add_argument("--json", type=Path,
                        help=f"where to write the results (default: {where}/{name}.json; with --quick, "
                             f"{name}_quick.json)")
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


def portable(text: str, *, scratch: Path | None = None) -> str:
    """``text`` (a path or a command) without this machine's folders: the project's folder left out (paths relative
    to it) and ``scratch`` written as SCRATCH, so that committed results name no machine's paths."""
    if scratch is not None:
        text = text.replace(str(scratch), "SCRATCH")
    return text.replace(str(PROJECT_DIR) + "/", "").replace(sys.executable, "python")


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

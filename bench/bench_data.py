"""Data benchmark: cold load of the training set (decode, grayscale, labels, tiles) and warm load (cache).

Each measurement runs in a fresh subprocess, so its peak resident memory is its own and nothing is
already imported or cached in memory (with ``processes=True`` the decoding workers, children of the
forkserver, are not counted; each holds one image at a time). Compared with the floor of a plain serial loop that only
decodes every PNG with PIL (no grayscale, labels, statistics or tiles).

    python bench/bench_data.py            # the real training set (dsb.find_dataset)
    python bench/bench_data.py --quick    # a tiny synthetic set, seconds
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

MODES = ("cold-threads", "cold-processes", "warm", "write-cache", "floor-decode")


def measure(mode: str, source: Path, cache_dir: Path) -> dict:
    """One measurement in this process: seconds, images, tiles, peak RSS."""
    import dsb
    from nucleunet import layouts, tiling

    start = time.perf_counter()
    if mode == "floor-decode":
        import io

        from PIL import Image

        reader = layouts.DatasetReader(source)
        entries, _ = layouts.scan_layout(layouts.list_files(source))
        for entry in entries:
            for name in (entry.image, *entry.masks):
                Image.open(io.BytesIO(reader.read_bytes(name)[0])).load()
        return {"seconds": time.perf_counter() - start, "images": len(entries),
                "peak_rss_mib": common.peak_rss_mib()}
    if mode == "write-cache":
        records = dsb.load_dataset(source, cache_dir=None, progress=False, processes=True)
        report = records.report
        path = dsb.cache_file(cache_dir, source)
        written = time.perf_counter()
        dsb.write_cache(path, records, report)
        return {"seconds": time.perf_counter() - written, "images": len(records),
                "cache_mib": path.stat().st_size / 2**20, "peak_rss_mib": common.peak_rss_mib()}
    if mode == "warm":
        records = dsb.load_dataset(source, cache_dir=cache_dir, progress=False)
    else:
        records = dsb.load_dataset(source, cache_dir=None, progress=False, processes=mode == "cold-processes")
    loaded = time.perf_counter()
    images, masks, _ = tiling.tiles_for_records(records)
    end = time.perf_counter()
    return {"seconds": end - start, "load_seconds": loaded - start, "tile_seconds": end - loaded,
            "images": len(records), "masks": int(sum(r.labels.max(initial=0) for r in records)),
            "tiles": int(len(images)), "tile_mib": (images.nbytes + masks.nbytes) / 2**20,
            "peak_rss_mib": common.peak_rss_mib()}


def run_child(mode: str, source: Path, cache_dir: Path, *, in_process: bool = False) -> dict:
    """``measure`` in a fresh interpreter (``in_process``: here, for ``--quick``)."""
    if in_process:
        return measure(mode, source, cache_dir)
    command = [sys.executable, __file__, "--measure", mode, "--data", str(source), "--cache-dir", str(cache_dir)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = common.base_parser("data", __doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder or zip (default: dsb.find_dataset())")
    parser.add_argument("--repeats", type=int, default=3, help="warm loads to take the median of (default 3)")
    parser.add_argument("--cold-repeats", type=int, default=1, help="cold loads per mode (default 1)")
    parser.add_argument("--measure", choices=MODES, help=argparse_hidden())
    parser.add_argument("--cache-dir", type=Path, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.data, args.cache_dir)))
        return 0

    import dsb

    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        scratch = Path(scratch)
        if args.quick:
            source = common.write_tiny_dataset(scratch / "data")
            args.repeats, args.cold_repeats = 1, 1
        else:
            source = dsb.find_dataset(args.data)
        cache_dir = scratch / "cache"
        quick = dict(in_process=args.quick)
        runs = {mode: [run_child(mode, source, cache_dir, **quick) for _ in range(args.cold_repeats)]
                for mode in ("floor-decode", "cold-threads", "cold-processes")}
        runs["write-cache"] = [run_child("write-cache", source, cache_dir, **quick)]
        runs["warm"] = [run_child("warm", source, cache_dir, **quick) for _ in range(args.repeats)]

    def summary(mode):
        chosen = sorted(runs[mode], key=lambda run: run["seconds"])[len(runs[mode]) // 2]
        return {**chosen, "seconds": common.median(run["seconds"] for run in runs[mode]),
                "all_seconds": [run["seconds"] for run in runs[mode]]}

    results = {"benchmark": "data", "quick": args.quick, "source": Path(source).name, "machine": common.machine(),
               **{mode.replace("-", "_"): summary(mode) for mode in runs}}
    floor = results["floor_decode"]["seconds"]
    results["targets"] = {"cold_seconds": 30.0, "warm_seconds": 3.0}
    best_cold = min(results["cold_threads"]["seconds"], results["cold_processes"]["seconds"])
    results["met"] = {"cold": best_cold <= 30.0, "warm": results["warm"]["seconds"] <= 3.0}
    rows = []
    for mode, label in (("floor_decode", "floor: PIL-decode every PNG, serial"),
                        ("cold_threads", "cold: load_dataset(cache_dir=None) + tiles, threads (default)"),
                        ("cold_processes", "cold: load_dataset(..., processes=True) + tiles"),
                        ("warm", "warm: load_dataset from the cache + tiles")):
        value = results[mode]
        rows.append((label, len(value["all_seconds"]), value["seconds"], floor / value["seconds"],
                     value["peak_rss_mib"]))
    common.print_table(
        f"Data: {results['cold_threads']['images']} images, {results['cold_threads']['masks']} masks, "
        f"{results['cold_threads']['tiles']} tiles ({results['cold_threads']['tile_mib']:.0f} MiB stored)",
        rows, ("measurement", "runs", "median s", "floor/this", "peak RSS MiB"))
    print(f"cache write: {results['write_cache']['seconds']:.1f} s, {results['write_cache']['cache_mib']:.0f} MiB; "
          f"targets: cold <= 30 s ({'met' if results['met']['cold'] else 'NOT met'}), "
          f"warm <= 3 s ({'met' if results['met']['warm'] else 'NOT met'})")
    common.write_json(args.json, results)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())

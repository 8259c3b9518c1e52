"""Markdown tables of the latest ``bench/results/*.json``, for ``bench/RESULTS.md``.

    python bench/report.py > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import common


def load(name: str) -> dict | None:
    path = common.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(common._format(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    out = []
    data, train, infer, memory = (load(name) for name in ("data", "train", "infer", "memory"))
    if data:
        floor = data["floor_decode"]["seconds"]
        out += [f"### 1. Data ({data['cold_threads']['images']} images, {data['cold_threads']['masks']} masks, "
                f"{data['cold_threads']['tiles']} tiles)", "",
                table(("measurement", "runs", "median s", "floor / this", "peak RSS MiB"), [
                    (label, len(data[key]["all_seconds"]), data[key]["seconds"], floor / data[key]["seconds"],
                     data[key]["peak_rss_mib"])
                    for key, label in (("floor_decode", "floor: PIL-decode every PNG, serial, no processing"),
                                       ("cold_threads", "cold, threads (default)"),
                                       ("cold_processes", "cold, `processes=True`"),
                                       ("warm", "warm (cache)"))]), ""]
    if train:
        rows = [("floor: `model.fit` on a float32 array", train["floor"]["tiles_per_second"], 1.0,
                 train["floor"]["gflops"], train["floor"]["fraction_of_peak"]),
                ("ours: training sequence + callbacks", train["ours"]["tiles_per_second"], train["ratio"],
                 train["ours"]["gflops"], train["ours"]["fraction_of_peak"])]
        rows += [(f"floor variant: {name}", value["tiles_per_second"], value["speed_vs_floor"], value["gflops"],
                  value["fraction_of_peak"]) for name, value in train["variants"].items()]
        peak = train["matmul_peak"]
        out += [f"### 2. Training (preset {train['preset']}, {train['config']['steps_per_epoch']} steps per "
                f"measurement, {train['train_flops_per_tile'] / 1e9:.2f} GFLOP per training tile)", "",
                table(("measurement", "tiles/s", "x floor", "GFLOP/s", "of matmul peak"), rows), "",
                f"Matmul peak ({peak['size']}x{peak['size']}): NumPy float32 {peak['numpy_float32_gflops']:.0f}, "
                f"TF float32 {peak['tf_float32_gflops']:.0f}, TF bfloat16 {peak['tf_bfloat16_gflops']:.0f} GFLOP/s.", ""]
    if infer:
        out += [f"### 3. Inference ({infer['images']} test images, {infer['megapixels']:.1f} MP, "
                f"{infer['tiles']} tiles; {infer['model']})", "",
                table(("measurement", "median s", "MP/s", "x floor"), [
                    ("floor: `model.predict` on pre-cut tiles", infer["floor"]["seconds"],
                     infer["floor"]["megapixels_per_second"], 1.0),
                    ("ours: stitched, `make_predictor`", infer["ours"]["seconds"],
                     infer["ours"]["megapixels_per_second"], infer["ratio"]),
                    ("stitched, `predict_on_batch` predictor", infer["predict_on_batch"]["seconds"],
                     infer["predict_on_batch"]["megapixels_per_second"], infer["predict_on_batch"]["ratio"])]), "",
                f"TTA on {infer['tta']['images']} images: {infer['tta']['tta_seconds']:.1f} s against "
                f"{infer['tta']['plain_seconds']:.1f} s without ({infer['tta']['cost']:.1f}x).", ""]
    if memory:
        out += ["### 4. Memory", "",
                table(("measurement", "peak RSS GiB", "target GiB", "trained min", "wall s"), [
                    (f"`{memory['preset']}` run{' (shortened)' if memory['shortened'] else ''}",
                     memory["peak_rss_gib"], 3.0, memory["training_minutes"], memory["wall_seconds"])]), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

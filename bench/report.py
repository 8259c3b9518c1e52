"""Markdown tables of the latest ``bench/results/*.json``, for ``bench/RESULTS.md``.

    python bench/report.py > /tmp/tables.md
    python bench/report.py --results DIR      # JSON files written elsewhere (``--json DIR/<name>.json``)

``memory_full.json`` (``bench_memory.py --json bench/results/memory_full.json``: the whole preset, not
shortened) is shown beside ``memory.json`` when present; ``large.json`` (``bench_large.py``),
``finetune_few.json`` (``finetune_few.py``), ``engines.json`` (``bench_engines.py``) and ``price.json``
(``bench_price.py``) when present; ``peer_stardist_speed.json`` (``peer_stardist.py --speed``) joins the price
table, StarDist's time on the same images beside ours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import common


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(common.format_value(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR,
                        help="folder of the benchmarks' JSON files (default: bench/results)")
    folder = parser.parse_args(argv).results
    out = []
    data, train, infer, memory, memory_full, large, finetune, engines, price, stardist = (
        load(folder, name) for name in ("data", "train", "infer", "memory", "memory_full", "large", "finetune_few",
                                        "engines", "price", "peer_stardist_speed"))
    if not any((data, train, infer, memory, memory_full, large, finetune, engines, price)):
        raise SystemExit(f"no benchmark results in {folder}: run make bench first")
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
        xla = "without XLA" if train["config"].get("jit_compile") else "with XLA"
        rows += [(f"floor variant: {xla if name == 'xla' else name}", value["tiles_per_second"],
                  value["speed_vs_floor"], value["gflops"], value["fraction_of_peak"])
                 for name, value in train["variants"].items()]
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
                     infer["ours"]["megapixels_per_second"], infer["ratio"])]), "",
                f"TTA on {infer['tta']['images']} images: {infer['tta']['tta_seconds']:.1f} s against "
                f"{infer['tta']['plain_seconds']:.1f} s without ({infer['tta']['cost']:.1f}x).", ""]
    runs = [run for run in (memory, memory_full) if run]
    if runs:
        out += ["### 4. Memory", "",
                table(("measurement", "peak RSS GiB", "target GiB", "trained min", "wall s"), [
                    (f"`{run['preset']}` run{' (shortened)' if run['shortened'] else ''}",
                     run["peak_rss_gib"], run["targets"]["peak_rss_gib"], run["training_minutes"],
                     run["wall_seconds"]) for run in runs]), ""]
    if large:
        whole = large["large"]
        out += [f"### 5. Large images ({large['model']})", "",
                table(("measurement", "peak RSS GiB", "target GiB", "wall s", "MP/s", "nuclei"), [
                    (f"`predict` on a {large['side']} x {large['side']} image (no TTA; labels, TIFF, ROI, GeoJSON, "
                     "measurements)", whole["peak_rss_gib"], large["targets"]["peak_rss_gib"], whole["seconds"],
                     whole["megapixels_per_second"], whole["nuclei"])]), "",
                table(("image", "floor MP/s (whole image, one call)", "trained tiles MP/s", "x floor",
                       "auto tiles MP/s", "x floor"), [
                    (f"{size} x {size}", value["floor"], value["trained tiles"], value["trained tiles"] / value["floor"],
                     value["auto tiles"], value["auto tiles"] / value["floor"])
                    for size, value in large["speed"].items()]), ""]
    if finetune:
        before = finetune["before"]
        scored = ("test images" if finetune.get("scored_on", "test") == "test"
                  else "test images and training images no run was fine-tuned on")
        out += [f"### 6. Fine-tuning on a few images of cluster {finetune['cluster']} "
                f"(scored on its {finetune['test_images']} {scored})", "",
                table(("model", "training images", "minutes", "Dice", "mAP"),
                      [("starting model", 0, 0, before["mean_dice"], before["mean_map"])]
                      + [("fine-tuned", int(count), run["training_minutes"], run["test"]["mean_dice"],
                          run["test"]["mean_map"]) for count, run in finetune["runs"].items()]), ""]
    if engines:
        rows = []
        for subset, value in engines["subsets"].items():
            label = (f"{value['images']} images" if subset == "small"
                     else f"one image of {value['megapixels']:.1f} MP")
            rows += [(f"{label}, {name}", value[name]["seconds"], value[name]["megapixels_per_second"],
                      value["keras"]["seconds"] / value[name]["seconds"]) for name in ("keras", "onnx")]
        load_s, diff = engines["load_seconds"], engines["differences"]
        out += [f"### 7. Engines (the {engines['model']} model, Keras on TensorFlow against ONNX Runtime; "
                f"{engines['machine']['cpu']}, {engines['machine']['cores']} cores)", "",
                table(("measurement", "median s", "MP/s", "x keras"), rows), "",
                f"Loading: Keras {load_s['keras']:.2f} s, ONNX Runtime {load_s['onnx']:.2f} s. The two engines' "
                f"nucleus maps differ by at most {max(d['max_abs'] for d in diff.values()):.1e}; "
                f"{max(d['flipped_fraction'] for d in diff.values()):.2g} of pixels fall on the other side of 0.5.",
                ""]
    if price:
        rows = []
        for subset, entry in price["subsets"].items():
            floor = entry["floor"]["seconds"]
            rows.append((f"{subset}: floor, one forward pass", entry["floor"]["seconds_per_megapixel"], "-", "-", 1.0))
            rows += [(f"{subset}: {name}", value["seconds_per_megapixel"], value["map"],
                      value["x_plain"] if value["x_plain"] is not None else "-", value["seconds"] / floor)
                     for name, value in entry["settings"].items()]
            peer = (stardist or {}).get("subsets", {}).get(subset)
            if peer and peer["images"] == entry["images"]:
                plain = entry["settings"].get("plain")
                rows.append((f"{subset}: StarDist predict_instances", peer["seconds_per_megapixel"], peer["map"],
                             peer["seconds"] / plain["seconds"] if plain else "-", peer["seconds"] / floor))
        sizes = ", ".join(f"{subset} {entry['images']} images ({entry['megapixels']:.1f} MP)"
                          for subset, entry in price["subsets"].items())
        out += [f"### 8. The price of each default ({price['model']} model on {price['engine']}; {sizes}; "
                f"{price['machine']['cpu']}, {price['machine']['cores']} cores)", "",
                table(("setting", "s/MP", "mAP", "x plain", "x floor"), rows), ""]
        if stardist:
            out += [f"StarDist: its peer model (`bench/peer_stardist.py`, {stardist['machine']['cpu']}, "
                    f"{stardist['machine']['cores']} cores, measured {stardist['machine']['date']}), the network "
                    "and its non-maximum suppression on the same images.", ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

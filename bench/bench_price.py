"""The price of each default: seconds per megapixel and mAP of the ready model with each step switched off.

Every setting segments the same images through ``Model.segment`` (as ``predict`` and ``evaluate`` do, the images
preprocessed beforehand, so reading files is not counted) and is scored with the competition's metric against their
true masks. The floor is one stitched forward pass of the same network over the same pixels, without any
post-processing. Settings run in turn, each over all images, on the engine ``predict`` would choose
(``--engine``); on the CV split (what defaults are chosen on) and the test split.

    python bench/bench_price.py                        # CV and test split, every setting
    python bench/bench_price.py --subsets cv --settings defaults plain
    python bench/bench_price.py --quick                # seconds, a tiny untrained model (numbers mean nothing)
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

# name: (what it is, the fields of Postprocessing it changes from the model's own). Each row switches off or
# cheapens one step of the defaults, or sets the number of test-time views; 'plain' switches off all of them: one
# pass at the image's own size. (The run of 2026-12-06 in bench/results/price.json was made when the defaults had 8
# views: its rows 'defaults' and 'no second zoom' are 8 views; each row's "overrides" says what it changed.)
SETTINGS = {
    "defaults": ("the ready model's defaults (postprocessing.json)", {}),
    "TTA 8 views": ("8 views (all flips and quarter turns)", {"tta": True, "tta_views": 8}),
    "TTA 4 views": ("4 views (the mirrorings)", {"tta": True, "tta_views": 4}),
    "TTA 2 views": ("2 views (the image and its mirror image)", {"tta": True, "tta_views": 2}),
    "no TTA": ("without test-time augmentation", {"tta": False}),
    "TTA 8 views, no second zoom": ("8 views at the automatic zoom alone",
                                    {"tta": True, "tta_views": 8, "extra_zooms": ()}),
    "TTA 4 views, no second zoom": ("4 views at the automatic zoom alone",
                                    {"tta": True, "tta_views": 4, "extra_zooms": ()}),
    "TTA 2 views, no second zoom": ("2 views at the automatic zoom alone",
                                    {"tta": True, "tta_views": 2, "extra_zooms": ()}),
    "no TTA, no second zoom": ("one pass at the automatic zoom", {"tta": False, "extra_zooms": ()}),
    "no flat field": ("the defaults without flattening uneven backgrounds", {"flat_field": False}),
    "plain": ("one pass at scale 1: no TTA, no zoom", {"tta": False, "extra_zooms": (), "scale": 1.0}),
}


def quick_setup(folder: Path):
    """A tiny untrained model (with its ONNX copy where tf2onnx is installed) and a few synthetic images."""
    import keras

    import unet
    from nucleunet import models, training
    from nucleunet.config import TrainConfig

    keras.utils.set_random_seed(0)
    config = dataclasses.replace(TrainConfig.from_preset("smoke"), tile_size=64)
    path = folder / "model.keras"
    unet.save_model(training.build_model(config), path)
    config.save(folder / "config.json")
    models.write_onnx_copy(path)
    rng = np.random.default_rng(0)
    images = []
    for index, shape in enumerate(((64, 64), (96, 80), (130, 70))):
        labels = np.zeros(shape, np.int32)
        for nucleus in range(1, 4):
            row, col = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
            labels[row - 4: row + 4, col - 4: col + 4] = nucleus
        image = (labels > 0) * 0.8 + rng.random(shape) * 0.1
        images.append((f"quick{index}", image.astype(np.float32), labels))
    return path, {"cv": images, "test": images}


def real_setup(model) -> dict:
    """The CV and test images of the model's own split, preprocessed as it was trained."""
    import dsb
    from nucleunet import evaluation

    selection = evaluation.records_of(model.trained, None, None, "cv", also="test", cache_dir=dsb.DEFAULT_CACHE_DIR,
                                      progress=False)
    return {subset: [(record.image_id, record.image, record.labels) for record in records]
            for subset, records in (("cv", selection.records), ("test", selection.also))}


def floor_seconds(model, images) -> float:
    """One stitched pass of the network over every image at its own size, no post-processing."""
    from nucleunet import prediction

    predict_tiles, tile_size, min_overlap = model.predictor
    start = time.perf_counter()
    for _, image, _ in images:
        prediction.predict_maps(predict_tiles, image, tile_size=tile_size, min_overlap=min_overlap)
    return time.perf_counter() - start


def run_setting(model, images) -> tuple[float, list[dict]]:
    from nucleunet.metrics import score_image

    rows, seconds = [], 0.0
    for image_id, image, labels in images:
        start = time.perf_counter()
        found = model.segment(image, preprocessed=True, name=image_id)
        seconds += time.perf_counter() - start
        rows.append({"image_id": image_id, **score_image(labels, found.labels, found.mask).row()})
    return seconds, rows


def main(argv=None) -> int:
    parser = common.base_parser("price", __doc__.splitlines()[0])
    parser.add_argument("--subsets", nargs="+", choices=("cv", "test"), default=["cv", "test"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--engine", choices=("auto", "keras", "onnx"), default="auto")
    args = parser.parse_args(argv)

    import nucleunet
    from nucleunet import models

    with tempfile.TemporaryDirectory(prefix="bench-price-") as scratch:
        if args.quick:
            path, subsets = quick_setup(Path(scratch))
            model = nucleunet.load_model(path, engine=args.engine)
        else:
            model = nucleunet.load_model(models.DEFAULT_MODEL, engine=args.engine)
            subsets = real_setup(model)
        model.predictor  # load the network outside the timing  # noqa: B018
        floor_seconds(model, subsets[args.subsets[0]][:1])  # warm up the engine once
        results = {"benchmark": "price", "quick": args.quick, "machine": common.machine(),
                   "model": model.path.parent.name if not args.quick else "tiny untrained", "engine": model.engine,
                   "subsets": {}}
        table = []
        for subset in args.subsets:
            images = subsets[subset]
            megapixels = sum(image.size for _, image, _ in images) / 1e6
            floor = floor_seconds(model, images)
            entry = {"images": len(images), "megapixels": megapixels,
                     "floor": {"seconds": floor, "seconds_per_megapixel": floor / megapixels}, "settings": {}}
            table.append((f"{subset}: floor (one forward pass, no post-processing)", floor / megapixels, "-", 1.0))
            for name in args.settings:
                what, overrides = SETTINGS[name]
                seconds, rows = run_setting(model.with_settings(**overrides), images)
                mean_map = float(np.mean([row["map"] for row in rows]))
                entry["settings"][name] = {
                    "what": what, "overrides": {key: list(value) if isinstance(value, tuple) else value
                                                for key, value in overrides.items()},
                    "seconds": seconds, "seconds_per_megapixel": seconds / megapixels, "map": mean_map,
                    "dice": float(np.mean([row["dice"] for row in rows])), "per_image": rows}
                table.append((f"{subset}: {name}", seconds / megapixels, mean_map, seconds / floor))
                print(f"{subset} {name}: {seconds:.1f} s, mAP {mean_map:.3f}", flush=True)
            plain = entry["settings"].get("plain")
            for value in entry["settings"].values():
                value["x_plain"] = value["seconds"] / plain["seconds"] if plain else None
            results["subsets"][subset] = entry
    common.print_table(f"Price of the defaults, {results['model']} model on {results['engine']}", table,
                       ("setting", "s/MP", "mAP", "x floor"))
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

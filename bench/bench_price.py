"""The price of each default: seconds per megapixel and mAP of the ready model with each step switched off.

Every setting segments the same images through ``Model.segment`` (as ``predict`` and ``evaluate`` do, the images
preprocessed beforehand, so reading files is not counted) and is scored with the competition's metric against their
true masks. The floor is one stitched forward pass of the same network over the same pixels, without any
post-processing. Settings run in turn, each over all images, on the engine ``predict`` would choose
(``--engine``); on the CV split (what defaults are chosen on) and the test split.

    python bench/bench_price.py                        # CV and test split, every setting
    python bench/bench_price.py --subsets cv --settings defaults plain
    python bench/bench_price.py --subsets cv --settings defaults --model runs/RUN   # a model not yet shipped
    python bench/bench_price.py --quick                # seconds, a tiny untrained model (numbers mean nothing)
    python bench/bench_price.py --leave-cluster-out today --per-cluster 25

With ``--leave-cluster-out RECIPE``: the same settings on kinds of images each model has never seen, mAP only. For
each of the 8 clusters of docs/results/split.csv, the network that ``experiments/leave_cluster_out.py --recipe
RECIPE`` trained without that cluster segments (at most ``--per-cluster`` of) its images, with that run's own
thresholds and the ready model's prediction settings (``LOCO_DEFAULTS``: what the ready model's defaults do to the
image) as its defaults. Reported: the mean mAP over the clusters, by kind, per cluster. Its seconds are kept in the
JSON but are not a price: these networks run on Keras (they have no ONNX copy), and the command may share the
cores with training.
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
# cheapens one step of the defaults, or sets the number of test-time views (at both zooms, or at the first alone);
# 'plain' switches off all of them: one pass at the image's own size; the 'whole-image tiles' rows predict with
# tile_size 'auto', the 'trained tiles' row with the tiles the network was trained on. (The rows that change no
# number of views, 'defaults' and 'no second zoom' among them, have the views of the defaults of their day: 8 in
# bench/results/price.json, 2 at both zooms in price_second_zoom_views.json; likewise the rows that set no tiles have
# the trained tiles until price_tiles_768.json and 'auto' tiles after it; each row's "overrides" says what it
# changed.)
SETTINGS = {
    "defaults": ("the ready model's defaults (postprocessing.json)", {}),
    "TTA 8 views": ("8 views (all flips and quarter turns)", {"tta": True, "tta_views": 8, "tta_extra_zooms": True}),
    "TTA 4 views": ("4 views (the mirrorings)", {"tta": True, "tta_views": 4, "tta_extra_zooms": True}),
    "TTA 2 views": ("2 views (the image and its mirror image)", {"tta": True, "tta_views": 2, "tta_extra_zooms": True}),
    "TTA 8 views, second zoom 1 view": ("8 views at the automatic zoom, the image alone at the second zoom",
                                        {"tta": True, "tta_views": 8, "tta_extra_zooms": False}),
    "TTA 4 views, second zoom 1 view": ("4 views at the automatic zoom, the image alone at the second zoom",
                                        {"tta": True, "tta_views": 4, "tta_extra_zooms": False}),
    "TTA 2 views, second zoom 1 view": ("2 views at the automatic zoom, the image alone at the second zoom",
                                        {"tta": True, "tta_views": 2, "tta_extra_zooms": False}),
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
    "defaults, whole-image tiles": ("the defaults, tile_size 'auto' (the fewest tiles of up to prediction.AUTO_TILE_MAX px: "
                                    "2048 in price_tiles.json, 768 in price_tiles_768.json, 1024 since price_tile_max_1024.json)",
                                    {"tile_size": "auto"}),
    "TTA 4 views, second zoom 1 view, whole-image tiles": (
        "4 views at the automatic zoom, the image alone at the second zoom, tile_size 'auto'",
        {"tta": True, "tta_views": 4, "tta_extra_zooms": False, "tile_size": "auto"}),
    "plain, whole-image tiles": ("one pass at scale 1, tile_size 'auto'",
                                 {"tta": False, "extra_zooms": (), "scale": 1.0, "tile_size": "auto"}),
    "TTA 4 views, second zoom 1 view, trained tiles": (
        "4 views at the automatic zoom, the image alone at the second zoom, the tiles the network was trained on",
        {"tta": True, "tta_views": 4, "tta_extra_zooms": False, "tile_size": None}),
}


# What the ready model's defaults do to an image, given to the networks of the leave-one-cluster-out runs (which were
# scored at 1x, one pass): 4 views of test-time augmentation at the automatic zoom, a second zoom 1.41x larger from
# the image alone, 'auto' tiles, the flat field (models/unet_dsb2018/postprocessing.json). Their thresholds and nucleus
# area stay their own. (bench/results/price_leave_cluster_out_today.json was made when the defaults had 2 views at both
# zooms on the trained tiles.)
LOCO_DEFAULTS = {"tta": True, "tta_views": 4, "tta_extra_zooms": False, "scale": "auto", "extra_zooms": (2 ** 0.5,),
                 "tile_size": "auto", "flat_field": True}
LOCO_SPLIT = common.PROJECT_DIR / "docs" / "results" / "split.csv"
LOCO_RUNS = common.PROJECT_DIR / "runs" / "leave-cluster-out"
# Which clusters hold which kind (experiments/leave_cluster_out.py's KINDS).
FLUORESCENCE_CLUSTERS = (0, 1, 2, 3)


def _as_json(settings: dict) -> dict:
    """Settings as JSON writes them: tuples as lists."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}


def loco_setup(recipe: str, per_cluster: int | None, runs: Path = LOCO_RUNS, split_path: Path = LOCO_SPLIT,
               seed: int = 0, *, cache: bool = True) -> list[tuple[int, object, list]]:
    """(cluster, model with ``LOCO_DEFAULTS``, its held-out images) for every cluster that ``recipe``'s
    leave-one-cluster-out runs hold a finished model for; at most ``per_cluster`` images of each, drawn with
    ``seed``."""
    import dsb
    import nucleunet
    from nucleunet import stratify

    split = stratify.read_split(split_path)
    folds, every = [], None
    for folder in sorted((runs / recipe).glob("cluster*"), key=lambda path: int(path.name[len("cluster"):])):
        found = sorted(folder.glob("*/model.keras"))
        if not found:
            continue
        model = nucleunet.load_model(found[-1].parent, engine="keras").with_settings(**LOCO_DEFAULTS)
        if every is None:  # one reading of the data: every run was trained with the preset's normalization
            every = {record.image_id: record for record in dsb.load_dataset(
                dsb.find_dataset(model.trained.config.data if model.trained.config else None),
                cache_dir=dsb.DEFAULT_CACHE_DIR if cache else None, percentiles=model.normalization,
                progress=False)}
        cluster = int(folder.name[len("cluster"):])
        ids = sorted(split.loc[split["cluster"] == cluster, "image_id"])
        if per_cluster is not None and len(ids) > per_cluster:
            ids = sorted(np.random.default_rng([seed, cluster]).choice(ids, per_cluster, replace=False))
        folds.append((cluster, model, [(i, every[i].image, every[i].labels) for i in ids]))
    if not folds:
        raise SystemExit(f"no finished leave-one-cluster-out runs of {recipe!r} under {runs}")
    return folds


def loco_quick_setup(folder: Path, recipe: str) -> tuple[Path, Path]:
    """``--quick --leave-cluster-out``: a tiny dataset in two clusters, and the tiny untrained model of
    ``quick_setup`` as both clusters' run (runs folder, split file)."""
    import pandas as pd

    from nucleunet.config import TrainConfig
    from nucleunet.postprocessing import Postprocessing

    data = common.write_tiny_dataset(folder / "data", images=6)
    ids = sorted(path.name for path in data.iterdir())
    split_path = folder / "split.csv"
    pd.DataFrame({"image_id": ids, "cluster": [index % 2 for index in range(len(ids))],
                  "subset": "train"}).to_csv(split_path, index=False)
    for cluster in (0, 1):
        run = folder / "runs" / recipe / f"cluster{cluster}" / "run"
        run.mkdir(parents=True)
        quick_setup(run)
        dataclasses.replace(TrainConfig.load(run / "config.json"), data=str(data)).save(run / "config.json")
        Postprocessing(nucleus_area=150.0).save(run / "postprocessing.json")  # the tiny disks' area, roughly
    return folder / "runs", split_path


def loco_main(args) -> int:
    """``--leave-cluster-out``: each setting's mAP on the held-out clusters (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-price-") as scratch:
        if args.quick:
            runs, split_path = loco_quick_setup(Path(scratch), args.leave_cluster_out)
            folds = loco_setup(args.leave_cluster_out, args.per_cluster, runs, split_path, cache=False)
        else:
            folds = loco_setup(args.leave_cluster_out, args.per_cluster)
        return _loco_table(args, folds)


def _loco_table(args, folds) -> int:
    results = {"benchmark": "price", "leave_cluster_out": args.leave_cluster_out, "per_cluster": args.per_cluster,
               "quick": args.quick, "machine": common.machine(), "engine": "keras", "defaults": _as_json(LOCO_DEFAULTS),
               "settings": {}}
    table = []
    for name in args.settings:
        what, overrides = SETTINGS[name]
        clusters, seconds = {}, 0.0
        for cluster, model, images in folds:
            spent, rows = run_setting(model.with_settings(**overrides), images)
            seconds += spent
            clusters[str(cluster)] = {"images": len(rows), "map": float(np.mean([row["map"] for row in rows])),
                                      "per_image": rows}
        maps = {int(c): v["map"] for c, v in clusters.items()}
        fluorescence = [m for c, m in maps.items() if c in FLUORESCENCE_CLUSTERS]
        other = [m for c, m in maps.items() if c not in FLUORESCENCE_CLUSTERS]
        entry = {"what": what, "overrides": _as_json(overrides),
                 "mean_over_clusters": float(np.mean(list(maps.values()))),
                 "fluorescence": float(np.mean(fluorescence)) if fluorescence else None,
                 "stained_or_brightfield": float(np.mean(other)) if other else None,
                 "seconds": seconds, "clusters": clusters}
        results["settings"][name] = entry
        table.append((name, entry["mean_over_clusters"], entry["fluorescence"], entry["stained_or_brightfield"]))
        print(f"{name}: mean over clusters {entry['mean_over_clusters']:.3f} "
              + " ".join(f"c{c} {m:.3f}" for c, m in sorted(maps.items())), flush=True)
    common.print_table(f"Settings on held-out clusters, recipe {args.leave_cluster_out}", table,
                       ("setting", "mean mAP", "fluorescence", "stained/brightfield"))
    common.write_json(args.json, results)
    return 0


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
    parser.add_argument("--engine", choices=("auto", "float32", "keras", "onnx", "int8"), default="auto")
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="the model to price: a .keras file, a folder with model.keras (a run or an export), or "
                             "a ready model's name (default: the ready model unet_dsb2018)")
    parser.add_argument("--leave-cluster-out", metavar="RECIPE",
                        help="mAP of each setting on the held-out clusters, with the networks that "
                             "experiments/leave_cluster_out.py trained for RECIPE (no timing)")
    parser.add_argument("--per-cluster", type=int, metavar="N",
                        help="with --leave-cluster-out: at most N images of each cluster (default: all)")
    args = parser.parse_args(argv)
    if args.model and (args.quick or args.leave_cluster_out):
        parser.error("--model prices one model on its own split: not with --quick (a tiny model of its own) or "
                     "--leave-cluster-out (the recipe's networks)")
    if args.leave_cluster_out:
        if args.json == common.RESULTS_DIR / f"price{'_quick' if args.quick else ''}.json":  # the split's default
            args.json = common.RESULTS_DIR / f"price_leave_cluster_out_{args.leave_cluster_out}.json"
        return loco_main(args)

    import nucleunet
    from nucleunet import models
    from nucleunet.errors import UserError

    with tempfile.TemporaryDirectory(prefix="bench-price-") as scratch:
        if args.quick:
            path, subsets = quick_setup(Path(scratch))
            model = nucleunet.load_model(path, engine=args.engine)
        else:
            try:
                model = nucleunet.load_model(args.model or models.DEFAULT_MODEL, engine=args.engine)
            except UserError as error:
                raise SystemExit(f"bench_price.py: {error}") from None
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
                    "what": what, "overrides": _as_json(overrides),
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

"""Engine benchmark: the ready model's stitched prediction on Keras (TensorFlow) against ONNX Runtime.

Both engines run the same network (``models/unet_dsb2018``: ``model.keras`` and the ``model.onnx`` made from it)
through the same ``prediction.predict_maps`` (tiling, batches, weighted stitching), in this process, alternating,
median of ``--repeats``. Measured on the CV split's images (the many small images a user's folder often holds) and
on one large mosaic cut from them (``--large`` px square, the size of a whole slide region), with the time to load
each engine, and how far the two engines' nucleus maps differ (largest absolute difference; the share of pixels
on the other side of 0.5).

    python bench/bench_engines.py
    python bench/bench_engines.py --quick      # seconds; a tiny model exported on the fly (numbers mean nothing)
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def cv_images(model) -> list[np.ndarray]:
    """The preprocessed CV-split images of the project's data, as ``predict`` preprocesses them."""
    import dsb
    from nucleunet import pipeline, stratify

    records, split, _ = pipeline.load_data(model.config, cache_dir=dsb.DEFAULT_CACHE_DIR, progress=False)
    return [record.image for record in stratify.subset_records(records, split, "cv")]


def mosaic(images: list[np.ndarray], size: int) -> np.ndarray:
    """A ``size`` x ``size`` image filled row by row with the given images (cropped at the edges)."""
    out = np.zeros((size, size), np.float32)
    row = col = height = 0
    for image in (image for _ in range(1000) for image in images):
        if row >= size:
            break
        if col >= size:
            row, col, height = row + height, 0, 0
            continue
        piece = image[: size - row, : size - col]
        out[row: row + piece.shape[0], col: col + piece.shape[1]] = piece
        col, height = col + piece.shape[1], max(height, piece.shape[0])
    return out


def stitched(predict_tiles, images, tile_size: int, min_overlap: int) -> tuple[float, list[np.ndarray]]:
    from nucleunet import prediction

    start = time.perf_counter()
    maps = [prediction.predict_maps(predict_tiles, image, tile_size=tile_size, min_overlap=min_overlap)[..., 0]
            for image in images]
    return time.perf_counter() - start, maps


def quick_model(folder: Path):
    """A tiny untrained U-Net saved with its ONNX copy, for ``--quick``."""
    import keras

    import unet
    from nucleunet import models, training
    from nucleunet.config import TrainConfig

    keras.utils.set_random_seed(0)
    config = dataclasses.replace(TrainConfig.from_preset("smoke"), tile_size=64)
    path = folder / "model.keras"
    unet.save_model(training.build_model(config), path)
    config.save(folder / "config.json")
    if models.write_onnx_copy(path) is None:
        raise SystemExit("--quick needs TensorFlow and tf2onnx to export the tiny model")
    return models.TrainedModel.open(path)


def main(argv=None) -> int:
    parser = common.base_parser("engines", __doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each engine (default 3)")
    parser.add_argument("--large", type=int, default=2048, help="side of the large mosaic in px (default 2048)")
    args = parser.parse_args(argv)

    from nucleunet import models

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
        if args.quick:
            model = quick_model(Path(scratch))
            rng = np.random.default_rng(0)
            small = [rng.random(shape).astype(np.float32) for shape in ((64, 64), (96, 80), (130, 70))]
            args.repeats, args.large = 1, 256
        else:
            model = models.TrainedModel.open(models.ready_model_path())
            small = cv_images(model)
        if model.engine("float32") != "onnx":
            raise SystemExit(f"{model.path} has no usable ONNX copy, or onnxruntime is not installed")
        large = [mosaic(small, args.large)]

        engines, load_seconds = {}, {}
        for name in ("keras", "onnx"):
            load_seconds[name], engines[name] = common.timed(model.predictor, name)
        tile_size, min_overlap = engines["keras"][1], engines["keras"][2]
        for predict_tiles, *_ in engines.values():  # trace / warm up once, outside the timing
            stitched(predict_tiles, small[:1], tile_size, min_overlap)

        sets = {"small": small, "large": large}
        runs = {(name, subset): [] for name in engines for subset in sets}
        maps = {}
        for _ in range(args.repeats):
            for subset, images in sets.items():
                for name, (predict_tiles, *_) in engines.items():
                    seconds, maps[name, subset] = stitched(predict_tiles, images, tile_size, min_overlap)
                    runs[name, subset].append(seconds)

    differences = {}
    for subset in sets:
        keras_maps, onnx_maps = maps["keras", subset], maps["onnx", subset]
        pixels = sum(m.size for m in keras_maps)
        differences[subset] = {
            "max_abs": float(max(np.abs(a - b).max() for a, b in zip(keras_maps, onnx_maps))),
            "flipped_fraction": float(sum(((a > 0.5) != (b > 0.5)).sum() for a, b in zip(keras_maps, onnx_maps))
                                      / pixels),
        }
    results = {"benchmark": "engines", "quick": args.quick, "machine": common.machine(),
               "model": model.path.parent.name,
               "repeats": args.repeats, "tile_size": tile_size, "load_seconds": load_seconds,
               "differences": differences, "subsets": {}}
    rows = []
    for subset, images in sets.items():
        megapixels = sum(image.size for image in images) / 1e6
        seconds = {name: common.median(runs[name, subset]) for name in engines}
        results["subsets"][subset] = {
            "images": len(images), "megapixels": megapixels,
            **{name: {"seconds": seconds[name], "all_seconds": runs[name, subset],
                      "megapixels_per_second": megapixels / seconds[name]} for name in engines},
            "speedup": seconds["keras"] / seconds["onnx"],
        }
        label = f"{len(images)} images" if subset == "small" else f"one {args.large} x {args.large} mosaic"
        rows += [(f"{label}, {name}", len(runs[name, subset]), seconds[name], megapixels / seconds[name],
                  seconds["keras"] / seconds[name]) for name in engines]
    common.print_table(f"Engines, the {results['model']} model, tiles of {tile_size}px", rows,
                       ("measurement", "runs", "median s", "MP/s", "x keras"))
    print(f"load: keras {load_seconds['keras']:.2f} s, onnx {load_seconds['onnx']:.2f} s; "
          + "; ".join(f"{subset}: maps differ by at most {d['max_abs']:.2g}, {d['flipped_fraction']:.2g} of pixels "
                      f"change side of 0.5" for subset, d in differences.items()))
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

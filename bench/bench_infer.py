"""Inference benchmark: megapixels/s of stitched full-image prediction against the raw model on pre-cut tiles.

Ours: ``prediction.predict_maps`` (the nucleus channel) with ``prediction.make_predictor`` (tiling,
``predict_on_batch`` batch by batch, weighted stitching), image by image over the test split. The floor: one
``model.predict`` over all the same tiles, cut beforehand, as one float32 array. Both count the
images' own pixels, measured side by side in this process (alternating, median of ``--repeats``).
TTA (8 flips/rotations) is timed on the first ``--tta-images`` images against the same images without.

    python bench/bench_infer.py                     # an untrained cpu-preset U-Net, saved and reloaded (speed only)
    python bench/bench_infer.py --model runs/RUN/model.keras
    python bench/bench_infer.py --quick
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def load_images(quick: bool, config) -> list[np.ndarray]:
    """Preprocessed test-split images, or tiny random ones."""
    if quick:
        rng = np.random.default_rng(0)
        return [rng.random(shape).astype(np.float32) for shape in ((64, 64), (96, 80), (130, 70))]
    import dsb
    from nucleunet import pipeline, stratify

    records, split, _ = pipeline.load_data(config, cache_dir=dsb.DEFAULT_CACHE_DIR, progress=False)
    return [record.image for record in stratify.subset_records(records, split, "test")]


def stitched(predict_tiles, images, config, *, tta=False) -> float:
    from nucleunet import prediction

    start = time.perf_counter()
    for image in images:
        prediction.predict_maps(predict_tiles, image, tile_size=config.tile_size, min_overlap=config.min_overlap,
                             tta=tta)[..., 0]
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = common.base_parser("infer", __doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a saved model.keras (default: an untrained cpu-preset U-Net)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each, median taken (default 3)")
    parser.add_argument("--tta-images", type=int, default=8, help="images for the TTA timing (default 8)")
    args = parser.parse_args(argv)

    import keras

    import unet
    from nucleunet import prediction, tiling, training
    from nucleunet.config import TrainConfig

    preset = "smoke" if args.quick else "cpu"
    config = TrainConfig.from_preset(preset)
    if args.quick:
        config = dataclasses.replace(config, tile_size=64)
        args.repeats, args.tta_images = 1, 2
    if args.model:
        model = unet.load_model(args.model)
    else:
        # The preset's own U-Net (with its contact channel), saved and reloaded as the evaluate and
        # predict commands load it: uncompiled, so no training-time settings reach inference.
        keras.utils.set_random_seed(0)
        with tempfile.TemporaryDirectory(prefix="bench-infer-") as scratch:
            path = Path(scratch) / "model.keras"
            unet.save_model(training.build_model(config), path)
            model = unet.load_model(path)
    images = load_images(args.quick, config)
    batch_size = max(config.batch_size, 8)
    # The batch size and tile size that models.TrainedModel.predictor uses for a run's model.
    predict_tiles = prediction.make_predictor(model, batch_size)
    tile_size = model.input_shape[1] or config.tile_size
    if tile_size != config.tile_size:
        config = dataclasses.replace(config, tile_size=tile_size)
    tiles = np.concatenate([tiling.make_tiles(image, config.tile_size, config.min_overlap)[0] for image in images])
    tiles = tiles.astype(np.float32)[..., None]
    megapixels = sum(image.size for image in images) / 1e6

    def raw() -> float:
        start = time.perf_counter()
        model.predict(tiles, batch_size=batch_size, verbose=0)
        return time.perf_counter() - start

    model.predict(tiles[:batch_size], batch_size=batch_size, verbose=0)  # trace once, outside the timing
    stitched(predict_tiles, images[:1], config)
    floor_runs, ours_runs = [], []
    for _ in range(args.repeats):
        floor_runs.append(raw())
        ours_runs.append(stitched(predict_tiles, images, config))
    subset = images[: args.tta_images]
    plain_subset = stitched(predict_tiles, subset, config)
    tta_subset = stitched(predict_tiles, subset, config, tta=True)

    floor_seconds, ours_seconds = common.median(floor_runs), common.median(ours_runs)
    results = {
        "benchmark": "infer", "quick": args.quick, "machine": common.machine(), "preset": preset,
        "model": str(args.model) if args.model else f"untrained {preset}-preset U-Net",
        "images": len(images), "tiles": int(len(tiles)), "megapixels": megapixels, "batch_size": batch_size,
        "floor": {"seconds": floor_seconds, "all_seconds": floor_runs, "megapixels_per_second": megapixels / floor_seconds,
                  "tiles_per_second": len(tiles) / floor_seconds},
        "ours": {"seconds": ours_seconds, "all_seconds": ours_runs, "megapixels_per_second": megapixels / ours_seconds},
        "ratio": floor_seconds / ours_seconds,
        "output_channels": int(model.output_shape[-1]),
        "tta": {"images": len(subset), "plain_seconds": plain_subset, "tta_seconds": tta_subset,
                "cost": tta_subset / plain_subset},
        "targets": {"ratio": 0.85},
    }
    results["met"] = {"ratio": results["ratio"] >= 0.85}
    rows = [("floor: model.predict on pre-cut tiles", len(floor_runs), floor_seconds,
             results["floor"]["megapixels_per_second"], 1.0),
            ("ours: predict_maps per image (stitched)", len(ours_runs), ours_seconds,
             results["ours"]["megapixels_per_second"], results["ratio"]),
            (f"ours, no TTA, first {len(subset)} images", 1, plain_subset,
             sum(i.size for i in subset) / 1e6 / plain_subset, "-"),
            (f"ours, TTA (8 transforms), same {len(subset)} images", 1, tta_subset,
             sum(i.size for i in subset) / 1e6 / tta_subset, "-")]
    common.print_table(
        f"Inference, {len(images)} test images ({megapixels:.1f} MP, {len(tiles)} tiles of {config.tile_size}px), "
        f"{results['model']}", rows, ("measurement", "runs", "median s", "MP/s", "x floor"))
    print(f"TTA costs {results['tta']['cost']:.1f}x; target: stitched >= 0.85 x floor "
          f"({'met' if results['met']['ratio'] else 'NOT met'})")
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

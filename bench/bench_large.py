"""Large images: the memory and speed of ``predict`` on a 10,000 x 10,000 image, and tiled prediction against
one pass of the model over the whole image.

1. **Memory.** A gray 8-bit 10,000 x 10,000 image, made by repeating the test split's images, is segmented by
   ``train_and_predicted_masks.py predict`` in a subprocess (no TTA; labels, ROI, GeoJSON and measurements
   written): its peak RSS (``getrusage(RUSAGE_CHILDREN)``) against the 3 GiB target, and its megapixels/s.
2. **Speed against the floor.** On square images up to 2000 x 2000 cut from the same mosaic: the floor is one
   call of the model on the whole image (padded to a multiple of 32: the U-Net is fully convolutional); ours is
   ``prediction.predict_maps`` without TTA, with the tiles the model was trained on and with ``tile_size='auto'``
   (the fewest tiles of at most ``prediction.AUTO_TILE_MAX`` pixels). Alternating, median of ``--repeats``.

``--ramp`` adds a background ramp to the large image (0 at the left edge to half the intensity range at the right,
as the robustness table's 'background' shift), so that ``predict`` flattens it (the flat field), and measures part 1
only (``bench/results/large_ramp.json``). ``--defaults`` runs part 1 at the model's own defaults (its
``postprocessing.json``, test-time augmentation as it says) instead of without test-time augmentation
(``bench/results/large_defaults.json``). ``--engine`` passes predict's ``--engine`` (e.g. ``int8``), part 1 only.
``--blank`` measures only what blank tiles save: a ``--side`` image (2048 unless given) whose right half is empty
(zeros), segmented by ``Model.segment`` at the model's defaults without the flat field (which would make the empty
half uneven), against the same image with a sparse dot every 7 pixels in that half (so that no tile is blank);
alternating, median of ``--repeats`` (``bench/results/large_blank.json``).

    python bench/bench_large.py                          # the ready model in models/ (or --model)
    python bench/bench_large.py --ramp --json bench/results/large_ramp.json
    python bench/bench_large.py --defaults --json bench/results/large_defaults.json
    python bench/bench_large.py --blank --json bench/results/large_blank.json
    python bench/bench_large.py --quick
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

TARGET_GIB = 3.0
TARGET_RATIO = 0.9


def mosaic(side: int, quick: bool) -> np.ndarray:
    """A gray uint8 image of side x side pixels tiled from the test split's images (random data with --quick)."""
    if quick:
        rng = np.random.default_rng(0)
        return (rng.random((side, side)) * 255).astype(np.uint8)
    import dsb
    from nucleunet import pipeline, stratify
    from nucleunet.config import TrainConfig

    records, split, _ = pipeline.load_data(TrainConfig.from_preset("cpu"), cache_dir=dsb.DEFAULT_CACHE_DIR,
                                           progress=False)
    tiles = [(record.image[:256, :256] * 255).astype(np.uint8) for record in stratify.subset_records(
        records, split, "test") if min(record.image.shape) >= 256]
    rows = []
    count = int(np.ceil(side / 256))
    for row in range(count):
        rows.append(np.hstack([tiles[(row * count + col) % len(tiles)] for col in range(count)]))
    return np.vstack(rows)[:side, :side]


def whole_image(model, image: np.ndarray) -> np.ndarray:
    """The floor: the model once on the whole image, reflect-padded to a multiple of 32."""
    height, width = image.shape
    padded = np.pad(image, ((0, -height % 32), (0, -width % 32)), mode="reflect")
    return np.asarray(model.predict_on_batch(padded[None, ..., None]))[0, :height, :width]


def main(argv=None) -> int:
    parser = common.base_parser("large", __doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a saved model.keras (default: the ready model in models/)")
    parser.add_argument("--side", type=int, help="side of the large image (default 10000; 2048 with --blank)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each, median taken (default 3)")
    parser.add_argument("--ramp", action="store_true",
                        help="add a background ramp to the large image (predict flattens it); part 1 only")
    parser.add_argument("--defaults", action="store_true",
                        help="predict at the model's defaults (test-time augmentation as it says); part 1 only")
    parser.add_argument("--engine", choices=("auto", "float32", "keras", "onnx", "int8"), default="auto",
                        help="what predict runs the network on (its --engine; default auto); part 1 only")
    parser.add_argument("--blank", action="store_true",
                        help="only what blank tiles save: an image half empty against half sparse dots")
    args = parser.parse_args(argv)

    import tifffile

    import unet
    from nucleunet import models, prediction

    model_path = args.model or models.ready_model_path()
    side = 1000 if args.quick else args.side or (2048 if args.blank else 10_000)
    if args.quick and args.model is None:
        scratch_model = Path(tempfile.mkdtemp(prefix="bench-large-")) / "model.keras"
        unet.build_unet((None, None, 1), depth=3, base_filters=4, output_channels=2).save(scratch_model)
        model_path = scratch_model
    image = mosaic(side, args.quick)
    if args.ramp:  # 0 at the left edge to half of the 1st-99th percentile range at the right, kept within 8 bits
        low, high = np.percentile(image[::7, ::7], (1, 99))
        ramp = np.linspace(0, 0.5 * (high - low), side, dtype=np.float32)
        image = np.clip(image + ramp, 0, 255).astype(np.uint8)
    if args.blank:
        return blank_halves(args, model_path, image)
    settings = Path(model_path).with_name("postprocessing.json")
    results = {"benchmark": "large", "quick": args.quick, "machine": common.machine(),
               "model": common.portable(str(model_path)),
               "side": side, "ramp": args.ramp, "defaults": args.defaults, "engine": args.engine,
               "targets": {"peak_rss_gib": TARGET_GIB, "ratio": TARGET_RATIO},
               # what predict ran with: the model's settings (with --defaults) and the tiles' and calls' limits
               "postprocessing": json.loads(settings.read_text()) if args.defaults and settings.exists() else None,
               "auto_tile_max": prediction.AUTO_TILE_MAX, "max_batch_pixels": prediction.MAX_BATCH_PIXELS}

    # 1. the whole predict command on the large image
    with tempfile.TemporaryDirectory(prefix="bench-large-") as scratch:
        scratch = Path(scratch)
        tifffile.imwrite(scratch / "large.tif", image, compression="zlib")
        command = [sys.executable, str(common.PROJECT_DIR / "train_and_predicted_masks.py"), "predict",
                   str(model_path), str(scratch / "large.tif"), *([] if args.defaults else ["--no-tta"]),
                   *([] if args.engine == "auto" else ["--engine", args.engine]), "--quiet",
                   "--out", str(scratch / "runs"), "--formats", "labels,tiff,roi,geojson,measurements"]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if finished.returncode:
            print(finished.stdout[-3000:], finished.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"predict failed with exit status {finished.returncode}")
        (run_dir,) = (scratch / "runs").iterdir()
        counts = pd.read_csv(run_dir / "counts.csv")
        engine = json.loads((run_dir / "config.json").read_text())["engine"]  # what 'auto' chose
        nuclei = int(counts["nuclei"].iloc[0])
        flattened = bool(counts["flattened"].iloc[0])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    megapixels_per_second = side**2 / 1e6 / seconds
    results["large"] = {"command": common.portable(" ".join(command[1:]), scratch=scratch), "seconds": seconds,
                        "peak_rss_gib": peak_gib, "engine": engine,
                        "megapixels_per_second": megapixels_per_second, "nuclei": nuclei, "flattened": flattened}
    what = (" with a background ramp" if args.ramp else "") + (" at the model's defaults" if args.defaults else "")
    common.print_table(f"predict on a {side} x {side} image{what}",
                       [("whole command", peak_gib, TARGET_GIB, seconds, megapixels_per_second, nuclei, flattened)],
                       ("measurement", "peak RSS GiB", "target GiB", "wall s", "MP/s", "nuclei", "flattened"))
    if args.ramp or args.defaults or args.engine != "auto":
        results["met"] = {"peak_rss": peak_gib <= TARGET_GIB}
        print(f"target: peak <= {TARGET_GIB} GiB ({'met' if results['met']['peak_rss'] else 'NOT met'})")
        common.write_json(args.json, results)
        return 0

    # 2. tiled prediction against one pass over the whole image
    # Each way its own model instance, as the floor has: a Keras model that has seen several input shapes
    # traces a shape-generic function, which can be slower than one for a single shape.
    trained = models.TrainedModel.open(model_path)
    predict_tiles, trained_on, min_overlap = trained.predictor("keras")  # against the Keras floor below
    predict_auto, _, _ = trained.predictor("keras")
    model = unet.portable(unet.load_model(model_path), dtype=None)
    sizes = (256, 512) if args.quick else (500, 1000, 2000)
    rows, speed = [], {}
    for size in sizes:
        crop = image[:size, :size].astype(np.float32) / 255
        timings = {"floor": [], "trained tiles": [], "auto tiles": []}
        for _ in range(args.repeats):
            timings["floor"].append(common.timed(whole_image, model, crop)[0])
            timings["trained tiles"].append(common.timed(prediction.predict_maps, predict_tiles, crop,
                                                         tile_size=trained_on, min_overlap=min_overlap)[0])
            timings["auto tiles"].append(common.timed(prediction.predict_maps, predict_auto, crop, tile_size="auto",
                                                      min_overlap=min_overlap)[0])
        megapixels = size * size / 1e6
        speed[size] = {name: megapixels / common.median(values) for name, values in timings.items()}
        for name in timings:
            rows.append((f"{size} x {size}: {name}", common.median(timings[name]), speed[size][name],
                         speed[size][name] / speed[size]["floor"]))
    results["speed"] = {str(size): value for size, value in speed.items()}
    results["met"] = {"peak_rss": peak_gib <= TARGET_GIB,
                      "auto_tiles_ratio": all(value["auto tiles"] >= TARGET_RATIO * value["floor"] for value in
                                              speed.values())}
    common.print_table("Tiled prediction against the whole image in one call (no TTA)", rows,
                       ("measurement", "median s", "MP/s", "x floor"))
    print(f"targets: peak <= {TARGET_GIB} GiB ({'met' if results['met']['peak_rss'] else 'NOT met'}); "
          f"auto tiles >= {TARGET_RATIO} x floor ({'met' if results['met']['auto_tiles_ratio'] else 'NOT met'})")
    common.write_json(args.json, results)
    return 0


def blank_halves(args, model_path: Path, image: np.ndarray) -> int:
    """``--blank``: the image with its right half empty against the same with sparse dots there."""
    import nucleunet

    side = image.shape[0]
    empty = image.copy()
    empty[:, side // 2:] = 0
    dotted = empty.copy()
    dotted[::7, side // 2::7] = 1
    model = nucleunet.load_model(model_path).with_settings(flat_field=False)
    model.segment(image[:256, :256])  # load and warm up the engine outside the timing
    seconds, counts = {"half empty": [], "half dotted": []}, {}
    for _ in range(args.repeats):
        for name, picture in (("half empty", empty), ("half dotted", dotted)):
            elapsed, found = common.timed(model.segment, picture)
            seconds[name].append(elapsed)
            counts[name] = found.count
    median = {name: common.median(values) for name, values in seconds.items()}
    results = {"benchmark": "large", "quick": args.quick, "machine": common.machine(), "blank": True,
               "model": common.portable(str(model_path)), "side": side, "engine": model.engine,
               "seconds": seconds, "median_seconds": median, "nuclei": counts,
               "saved": 1 - median["half empty"] / median["half dotted"]}
    common.print_table(f"A {side} x {side} image with its right half empty, at the defaults without the flat field",
                       [(name, median[name], counts[name]) for name in median], ("image", "median s", "nuclei"))
    print(f"blank tiles save {results['saved']:.0%} of the time")
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

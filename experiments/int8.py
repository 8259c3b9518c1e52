"""Does the 8-bit copy of a model give its labels, and how much faster is it? Measured on CV.

Makes the 8-bit copy (``models.write_int8_copy``) in a scratch copy of the model's folder, calibrated on
``models.calibration_tiles`` of its training images (48 crops, seed 0), then scores the model's CV images at its
default settings with its float32 ONNX copy and with the 8-bit copy: mAP against the true masks, the seconds spent in
``Model.segment`` (images read and preprocessed beforehand: the seconds mean something only on cores that nothing else
uses), and how far the 8-bit labels are from the float32 ones (the competition's metric with the float32 labels as the
truth, and the share of pixels whose foreground agrees). Writes ``experiments/results/int8.json``; ``--keep DIR``
copies the 8-bit copy's two files (``model.int8.onnx``, ``int8.json``) into DIR, e.g. the model's own folder.

    python experiments/int8.py
    python experiments/int8.py --keep models/unet_dsb2018
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import common


def segment_all(model, images) -> tuple[float, list]:
    """Seconds in ``Model.segment`` over ``images`` ((image_id, image, labels)), and what it found for each."""
    found, seconds = [], 0.0
    for image_id, image, _ in images:
        start = time.perf_counter()
        found.append(model.segment(image, preprocessed=True, name=image_id))
        seconds += time.perf_counter() - start
    return seconds, found


def main(argv=None) -> int:
    parser = common.model_parser("int8", __doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy model.int8.onnx and int8.json into DIR (the folder of the model they belong to)")
    args = parser.parse_args(argv)

    import dsb
    import nucleunet
    from nucleunet import evaluation, models
    from nucleunet.metrics import score_image

    started = time.perf_counter()
    trained = models.TrainedModel.open(args.model)
    selection = evaluation.records_of(trained, args.data, None, "cv", also="train", cache_dir=dsb.DEFAULT_CACHE_DIR,
                                      progress=False)
    cv = [(record.image_id, record.image, record.labels) for record in selection.records][: 3 if args.quick else None]
    tiles = models.calibration_tiles([record.image for record in selection.also],
                                     count=8 if args.quick else models.INT8_CALIBRATION_CROPS)
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        folder = Path(scratch) / args.model.parent.name
        shutil.copytree(args.model.parent, folder)
        for name in (models.INT8_FILE, models.INT8_RECORD):  # made afresh
            (folder / name).unlink(missing_ok=True)
        made = time.perf_counter()
        models.write_int8_copy(folder / args.model.name, tiles)
        quantize_seconds = time.perf_counter() - made
        engines = {engine: nucleunet.load_model(folder / args.model.name, engine=engine) for engine in ("onnx", "int8")}
        for model in engines.values():
            model.predictor  # load the network outside the timing  # noqa: B018
            segment_all(model, cv[:1])  # and warm it up
        results = {}
        for engine, model in engines.items():
            seconds, found = segment_all(model, cv)
            results[engine] = {"seconds": seconds, "found": found,
                               "map": [score_image(labels, item.labels, item.mask).map for (_, _, labels), item in
                                       zip(cv, found)]}
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in (models.INT8_FILE, models.INT8_RECORD):
                shutil.copy(folder / name, args.keep / name)
        size = (folder / models.INT8_FILE).stat().st_size
    against_float = [score_image(reference.labels, item.labels, item.mask) for reference, item in
                     zip(results["onnx"]["found"], results["int8"]["found"])]
    agreement = [float(((reference.labels > 0) == (item.labels > 0)).mean()) for reference, item in
                 zip(results["onnx"]["found"], results["int8"]["found"])]
    rows = [{"image_id": image_id, "map_float32": float(a), "map_int8": float(b), "int8_against_float32": s.map,
             "foreground_agreement": g}
            for (image_id, _, _), a, b, s, g in zip(cv, results["onnx"]["map"], results["int8"]["map"],
                                                    against_float, agreement)]
    summary = {
        "images": len(cv), "calibration_tiles": int(len(tiles)), "quantize_seconds": round(quantize_seconds, 1),
        "int8_megabytes": round(size / 1e6, 2),
        "float32": {"map": float(np.mean(results["onnx"]["map"])), "seconds": results["onnx"]["seconds"]},
        "int8": {"map": float(np.mean(results["int8"]["map"])), "seconds": results["int8"]["seconds"]},
        "speed_up": results["onnx"]["seconds"] / results["int8"]["seconds"],
        "int8_against_float32": {"mean_map": float(np.mean([s.map for s in against_float])),
                                 "lowest_map": float(min(s.map for s in against_float)),
                                 "mean_foreground_agreement": float(np.mean(agreement)),
                                 "lowest_foreground_agreement": float(min(agreement))}}
    common.print_table(f"8-bit copy against float32, {len(cv)} CV images, {args.model}", [
        ("float32 ONNX", summary["float32"]["seconds"], summary["float32"]["map"]),
        ("int8", summary["int8"]["seconds"], summary["int8"]["map"])], ("engine", "seconds", "mAP"))
    print(f"int8 labels scored against float32's: mAP {summary['int8_against_float32']['mean_map']:.3f} (lowest "
          f"{summary['int8_against_float32']['lowest_map']:.3f}); foreground agreement lowest "
          f"{summary['int8_against_float32']['lowest_foreground_agreement']:.4f}; speed-up "
          f"{summary['speed_up']:.2f}x")
    try:
        shown = str(args.model.resolve().relative_to(common.PROJECT_DIR))
    except ValueError:
        shown = args.model.name
    common.write_json(args.json, {"benchmark": "int8", "quick": args.quick, "model": shown, **summary,
                                  "seconds": round(time.perf_counter() - started, 1), "per_image": rows,
                                  "machine": common.machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

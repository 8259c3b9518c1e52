"""A peer side by side: StarDist trained from scratch on our train split, scored by our metric.

StarDist (Schmidt et al. 2018; ``pip install stardist``) builds on CSBDeep and tf.keras, so it runs in a
virtual environment of its own (``bench/peer/requirements-stardist.txt``):

    python3 -m venv .venv-stardist
    .venv-stardist/bin/pip install -r bench/peer/requirements-stardist.txt
    TF_USE_LEGACY_KERAS=1 .venv-stardist/bin/python bench/peer_stardist.py --minutes 15

Same data as ours: the images of our saved split (``--split``), preprocessed by ``imaging.preprocess``
(gray, dark-on-light inverted, stretched), trained on the train images only within ``--minutes`` of
training, its probability and NMS thresholds chosen on CV by StarDist's own ``optimize_thresholds``,
then scored on the test split and on every shift of ``robustness.SHIFTS`` with ``metrics.score_image``.
The trained model is kept in ``--model-dir`` (with its thresholds). Writes ``bench/results/peer_stardist.json``.

Its speed beside ours (``bench/bench_price.py``): ``--speed`` loads the kept model and times
``predict_instances`` (the network and StarDist's own non-maximum suppression, whole images, default settings)
on every CV and test image, after one warm-up image, and scores them; writes
``bench/results/peer_stardist_speed.json``:

    TF_USE_LEGACY_KERAS=1 .venv-stardist/bin/python bench/peer_stardist.py --speed --split docs/results/split.csv
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # StarDist needs tf.keras 2 (the tf-keras package)

import dsb  # noqa: E402
from nucleunet import (
    imaging,  # noqa: E402
    metrics,  # noqa: E402
    robustness,  # noqa: E402
    stratify,  # noqa: E402
)

import common  # noqa: E402


def time_budget_callback(minutes: float):
    from csbdeep.utils.tf import keras_import

    Callback = keras_import("callbacks", "Callback")

    class TimeBudget(Callback):
        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - self.start >= minutes * 60:
                self.model.stop_training = True

    return TimeBudget()


def augment(x, y):
    """Flips and 90-degree turns, as our training uses."""
    k = np.random.randint(8)
    x, y = np.rot90(x, k % 4), np.rot90(y, k % 4)
    if k >= 4:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def score(model, images_and_labels, thresholds) -> dict:
    rows = []
    for image, labels in images_and_labels:
        predicted, _ = model.predict_instances(image, **thresholds, show_tile_progress=False)
        result = metrics.score_image(labels, predicted)
        rows.append({"dice": result.dice, "map": result.map, "ap50": result.ap50})
    return {key: float(np.mean([row[key] for row in rows])) for key in ("dice", "map", "ap50")} | {"images": len(rows)}


def speed(model, subsets: dict, thresholds: dict) -> dict:
    """Seconds per megapixel of ``predict_instances`` over each subset's images (a warm-up image first), and the
    mAP of what it found."""
    first = next(iter(subsets.values()))[0]
    model.predict_instances(first.image, **thresholds, show_tile_progress=False)
    timed = {}
    for name, records in subsets.items():
        seconds, maps = 0.0, []
        for record in records:
            start = time.perf_counter()
            predicted, _ = model.predict_instances(record.image, **thresholds, show_tile_progress=False)
            seconds += time.perf_counter() - start
            maps.append(metrics.score_image(record.labels, predicted).map)
        megapixels = sum(record.image.size for record in records) / 1e6
        timed[name] = {"images": len(records), "megapixels": megapixels, "seconds": seconds,
                       "seconds_per_megapixel": seconds / megapixels, "map": float(np.mean(maps))}
        print(f"{name}: {len(records)} images, {megapixels:.2f} MP, {seconds:.1f} s "
              f"({seconds / megapixels:.2f} s/MP), mAP {timed[name]['map']:.3f}", flush=True)
    return timed


def main(argv=None) -> int:
    speed_only = "--speed" in (sys.argv[1:] if argv is None else argv)
    parser = common.base_parser("peer_stardist_speed" if speed_only else "peer_stardist", __doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder or zip (default: dsb.find_dataset())")
    parser.add_argument("--split", type=Path, default=dsb.DEFAULT_SPLIT_PATH, help="the saved split to use")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path,
                        help="where the trained model is kept, with --speed read from (default: runs/peer_stardist; "
                             "with --quick, a temporary folder)")
    parser.add_argument("--speed", action="store_true",
                        help="time the kept model's predict_instances on the CV and test images (no training)")
    args = parser.parse_args(argv)

    from stardist.models import Config2D, StarDist2D

    np.random.seed(args.seed)
    source = dsb.find_dataset(args.data)
    records = dsb.load_dataset(source, progress=False)
    split = stratify.read_split(args.split, stratify.image_statistics(records))
    subsets = {name: stratify.subset_records(records, split, name) for name in ("train", "cv", "test")}
    if args.quick:
        subsets = {name: chosen[:4] for name, chosen in subsets.items()}
    model_dir = args.model_dir or (Path(os.environ.get("TMPDIR", "/tmp")) / f"stardist-peer-{os.getpid()}"
                                   if args.quick else Path("runs") / "peer_stardist")
    if args.speed:
        if not (model_dir / "peer_thresholds.json").is_file():
            parser.error(f"no model trained by this script in {model_dir}: train one first (without --speed)")
        model = StarDist2D(None, name=model_dir.name, basedir=str(model_dir.parent))
        thresholds = json.loads((model_dir / "peer_thresholds.json").read_text())
        results = {"benchmark": "peer_stardist_speed", "quick": args.quick, "machine": common.machine(),
                   "thresholds": thresholds, "threads": "TensorFlow's default (every core)",
                   "subsets": speed(model, {name: subsets[name] for name in ("cv", "test")}, thresholds)}
        common.write_json(args.json, results)
        return 0
    x_train = [record.image for record in subsets["train"]]
    y_train = [record.labels for record in subsets["train"]]
    x_cv = [record.image for record in subsets["cv"]]
    y_cv = [record.labels for record in subsets["cv"]]

    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(128, 128) if args.quick else (256, 256),
                      train_batch_size=4, train_tensorboard=False, use_gpu=False)
    model = StarDist2D(config, name=model_dir.name, basedir=str(model_dir.parent))
    model.prepare_for_training()
    model.callbacks.append(time_budget_callback(0.2 if args.quick else args.minutes))
    started = time.monotonic()
    epochs, steps = (1, 2) if args.quick else (1000, 50)  # the time budget stops it
    model.train(x_train, y_train, validation_data=(x_cv, y_cv), augmenter=augment, epochs=epochs,
                steps_per_epoch=steps)
    trained_minutes = (time.monotonic() - started) / 60
    model.optimize_thresholds(x_cv, y_cv)
    thresholds = {"prob_thresh": float(model.thresholds.prob), "nms_thresh": float(model.thresholds.nms)}
    (model_dir / "peer_thresholds.json").write_text(json.dumps(thresholds))

    test_ids = [record.image_id for record in subsets["test"]]
    test = [(record.image, record.labels) for record in subsets["test"]]
    results = {"benchmark": "peer_stardist", "quick": args.quick, "machine": common.machine(),
               "config": {"n_rays": 32, "grid": [2, 2], "patch": list(config.train_patch_size),
                          "batch": config.train_batch_size},
               "trained_minutes": trained_minutes, "thresholds": thresholds, "test": score(model, test, thresholds)}
    raw = dsb.read_raw_images(source, test_ids)
    shifted = {}
    for shift in robustness.SHIFTS:
        pairs = []
        for image_id, raw_image, labels in raw:
            image, shifted_labels = robustness.perturb(raw_image, labels, shift, seed=robustness.image_seed(image_id))
            pairs.append((imaging.preprocess(image), shifted_labels))
        shifted[shift] = score(model, pairs, thresholds)
        print(f"{shift:>12}: mAP {shifted[shift]['map']:.3f}  Dice {shifted[shift]['dice']:.3f}", flush=True)
    results["robustness"] = shifted
    common.print_table("StarDist on our test split", [(name, value["images"], value["dice"], value["map"])
                                                     for name, value in shifted.items()],
                       ("shift", "images", "Dice", "mAP"))
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

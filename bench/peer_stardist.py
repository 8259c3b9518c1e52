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
Writes ``bench/results/peer_stardist.json``.
"""

from __future__ import annotations

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


def main(argv=None) -> int:
    parser = common.base_parser("peer_stardist", __doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder or zip (default: dsb.find_dataset())")
    parser.add_argument("--split", type=Path, default=dsb.DEFAULT_SPLIT_PATH, help="the saved split to use")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from stardist.models import Config2D, StarDist2D

    np.random.seed(args.seed)
    source = dsb.find_dataset(args.data)
    records = dsb.load_dataset(source, progress=False)
    split = stratify.read_split(args.split, stratify.image_statistics(records))
    subsets = {name: stratify.subset_records(records, split, name) for name in ("train", "cv", "test")}
    if args.quick:
        subsets = {name: chosen[:4] for name, chosen in subsets.items()}
    x_train = [record.image for record in subsets["train"]]
    y_train = [record.labels for record in subsets["train"]]
    x_cv = [record.image for record in subsets["cv"]]
    y_cv = [record.labels for record in subsets["cv"]]

    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(128, 128) if args.quick else (256, 256),
                      train_batch_size=4, train_tensorboard=False, use_gpu=False)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"stardist-peer-{os.getpid()}"
    model = StarDist2D(config, name="peer", basedir=str(scratch))
    model.prepare_for_training()
    model.callbacks.append(time_budget_callback(0.2 if args.quick else args.minutes))
    started = time.monotonic()
    epochs, steps = (1, 2) if args.quick else (1000, 50)  # the time budget stops it
    model.train(x_train, y_train, validation_data=(x_cv, y_cv), augmenter=augment, epochs=epochs,
                steps_per_epoch=steps)
    trained_minutes = (time.monotonic() - started) / 60
    model.optimize_thresholds(x_cv, y_cv)
    thresholds = {"prob_thresh": model.thresholds.prob, "nms_thresh": model.thresholds.nms}

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

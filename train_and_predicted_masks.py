"""Train the nuclei U-Net on DSB2018, evaluate it on the held-out test split, plot predicted masks.

    python train_and_predicted_masks.py                      # preset picked by the hardware
    python train_and_predicted_masks.py --preset cpu --seed 1
    python train_and_predicted_masks.py --evaluate runs/<run>/model.keras

Every invocation writes one run folder under ``--out`` (default ``runs/``): ``config.json``,
``split.csv``, ``model.keras`` (best by validation Dice), ``history.csv``, ``logs/`` (TensorBoard),
``metrics.json`` and ``figures/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) hides the messages that matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dsb  # noqa: E402 - after the environment is set
import segment  # noqa: E402

log = logging.getLogger("train")

DEFAULT_RUNS_DIR = dsb.PROJECT_DIR / "runs"


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; saved as ``config.json`` beside the model.

    Attributes
    ----------
    preset : str
        The preset the other values started from.
    data : str or None
        Dataset folder or zip (None: found by ``dsb.find_dataset``).
    split : str
        The split CSV: made on first use, reused afterwards.
    epochs, steps_per_epoch, batch_size : int
        Training length; an epoch is ``steps_per_epoch`` batches of randomly drawn training tiles.
    learning_rate : float
        Adam's learning rate.
    minutes : float or None
        Training time budget: training stops (after validating) once it would be exceeded.
    seed : int
        Seeds clustering and split (on first use), weights, tile sampling and augmentation.
    depth, base_filters, batch_norm, dropout
        The U-Net (see ``unet.build_unet``).
    loss : str
        'bce' (binary cross-entropy, as the reference) or 'bce_dice'.
    tile_size, min_overlap : int
        Tiles cut from the images for training and for full-image prediction.
    threshold : float
        Probability above which a pixel is called nucleus.
    figures_per_cluster : int
        Test images drawn per cluster in the figures.
    """

    preset: str
    data: str | None = None
    split: str = str(dsb.DEFAULT_SPLIT_PATH)
    epochs: int = 3
    steps_per_epoch: int = 3500
    batch_size: int = 20
    learning_rate: float = 1e-4
    minutes: float | None = None
    seed: int = 0
    depth: int = 5
    base_filters: int = 64
    batch_norm: bool = False
    dropout: float = 0.0
    loss: str = "bce"
    tile_size: int = dsb.TILE_SIZE
    min_overlap: int = 32
    threshold: float = 0.5
    figures_per_cluster: int = 2

    def __post_init__(self):
        positive = ("epochs", "steps_per_epoch", "batch_size", "depth", "base_filters", "tile_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0 <= self.min_overlap < self.tile_size:
            raise ValueError(f"min_overlap must be in [0, tile_size), got {self.min_overlap}")
        if self.tile_size % 2 ** (self.depth - 1):
            raise ValueError(f"tile_size {self.tile_size} must be divisible by 2**(depth-1) = {2 ** (self.depth - 1)}")
        if self.figures_per_cluster < 0:
            raise ValueError(f"figures_per_cluster must be non-negative, got {self.figures_per_cluster}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict (e.g. a loaded ``config.json``); unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LOSSES = ("bce", "bce_dice")

PRESETS: dict[str, dict] = {
    # The reference write-up: a 64..1024 U-Net, BCE, batch 20, 3 x 3500 steps. A GPU job.
    "seed": dict(epochs=3, steps_per_epoch=3500, batch_size=20, learning_rate=1e-4,
                 depth=5, base_filters=64, batch_norm=False, loss="bce"),
    # Sized for about 14 minutes of training on 2 CPU cores (the epoch count is a ceiling).
    "cpu": dict(epochs=100, steps_per_epoch=60, batch_size=8, learning_rate=1e-3, minutes=14.0,
                depth=5, base_filters=16, batch_norm=True, loss="bce_dice"),
    # Seconds: checks that everything runs end to end; its model is not meant to be good.
    "smoke": dict(epochs=1, steps_per_epoch=2, batch_size=2, learning_rate=1e-3,
                  depth=3, base_filters=4, batch_norm=True, loss="bce_dice", figures_per_cluster=1),
}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Train a U-Net on the DSB2018 nuclei (stage1_train), evaluate it on the held-out test "
            "split (pixel Dice per image, mean, per cluster) and draw predicted-mask figures. "
            "Writes one run folder under --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mode = parser.add_argument_group("what to do")
    mode.add_argument("--preset", choices=sorted(PRESETS),
                      help="settings to start from: 'seed' = the reference (GPU), 'cpu' = ~14 min on "
                           "2 cores, 'smoke' = a seconds-long check. Default: 'seed' if a GPU is found, else 'cpu'")
    mode.add_argument("--evaluate", metavar="MODEL", type=Path,
                      help="evaluate a saved model.keras on the test split instead of training")

    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path,
                      help="DSB-layout folder or zip (default: $DSB_DATA, datasets/, the team mirror)")
    data.add_argument("--split", type=Path,
                      help="split CSV, created on first use and reused (default: datasets/split.csv, "
                           "or the evaluated model's own split.csv)")
    data.add_argument("--cache-dir", type=Path, default=dsb.DEFAULT_CACHE_DIR,
                      help="cache of decoded images")
    data.add_argument("--no-cache", action="store_true", help="decode the PNGs, neither read nor write the cache")

    train = parser.add_argument_group("training (override the preset)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--steps-per-epoch", type=int, help="batches per epoch")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float, help="Adam's learning rate")
    train.add_argument("--minutes", type=float, help="training time budget in minutes (stops after validating)")
    train.add_argument("--seed", type=int, default=0, help="seed for split (first use), weights, sampling, augmentation")
    train.add_argument("--depth", type=int, help="U-Net levels, bottleneck included")
    train.add_argument("--base-filters", type=int, help="filters of the first U-Net level")
    train.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                       help="batch normalization after each convolution")
    train.add_argument("--dropout", type=float, help="dropout at the two deepest levels")
    train.add_argument("--loss", choices=LOSSES, help="training loss")
    train.add_argument("--threshold", type=float, help="probability threshold for the masks")

    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR, help="folder for run folders")
    output.add_argument("--figures-per-cluster", type=int, help="test images per cluster in the figures")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


_OVERRIDES = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "minutes", "depth",
              "base_filters", "batch_norm", "dropout", "loss", "threshold", "figures_per_cluster")


def config_from_args(args: argparse.Namespace, preset: str) -> TrainConfig:
    """The one place where command-line options become a ``TrainConfig``."""
    values = dict(PRESETS[preset], preset=preset, seed=args.seed)
    values.update({name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None})
    if args.data is not None:
        values["data"] = str(args.data)
    values["split"] = str(args.split if args.split is not None else dsb.DEFAULT_SPLIT_PATH)
    return TrainConfig.from_dict(values)


def detect_accelerator() -> str | None:
    """Name of the first GPU the Keras backend sees, or None."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return gpus[0].name if gpus else None
        if backend == "jax":
            import jax

            gpus = [device for device in jax.devices() if device.platform != "cpu"]
            return str(gpus[0]) if gpus else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except (ImportError, RuntimeError):
        return None
    return None


def choose_preset(requested: str | None) -> str:
    if requested is not None:
        return requested
    accelerator = detect_accelerator()
    if accelerator:
        log.info("no --preset given: found GPU %s, using preset 'seed' (the reference, 3 x 3500 steps)", accelerator)
        return "seed"
    log.info("no --preset given: no GPU found, using preset 'cpu' (about %.0f minutes of training)",
             PRESETS["cpu"]["minutes"])
    return "cpu"


def new_run_dir(root: Path, name: str) -> Path:
    """A fresh folder ``root/<timestamp>-<name>``; never reuses one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = Path(root) / (f"{stamp}-{name}" if attempt == 0 else f"{stamp}-{name}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {root}")


def write_json(path: Path, value) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


# --------------------------------------------------------------------------------------------
# Data for training
# --------------------------------------------------------------------------------------------

def load_data(config: TrainConfig, *, cache_dir: Path | None, progress: bool):
    """Records, their statistics, and the (reused or new) split with clusters."""
    source = dsb.find_dataset(config.data)
    log.info("data: %s", source)
    records = dsb.load_dataset(source, cache_dir=cache_dir, progress=progress)
    stats = dsb.image_statistics(records)
    split = dsb.load_or_make_split(stats, config.split, seed=config.seed)
    counts = split["subset"].value_counts()
    log.info("%d images (%d nuclei): train %d, cv %d, test %d; split %s", len(records),
             int(stats["nuclei"].sum()), counts.get("train", 0), counts.get("cv", 0), counts.get("test", 0),
             config.split)
    return records, split


def subset_records(records, split, subset: str):
    wanted = set(split.loc[split["subset"] == subset, "image_id"])
    return [record for record in records if record.image_id in wanted]


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the first two axes: ``k`` in 0..7."""
    array = np.rot90(array, k % 4, axes=(0, 1))
    return array[:, ::-1] if k >= 4 else array


def make_training_sequence(images, masks, config: TrainConfig):
    """A ``keras.utils.PyDataset`` of augmented batches drawn at random from the training tiles.

    Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so runs are reproducible
    whatever the order Keras asks for batches in.
    """
    import keras

    class TileBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def __len__(self):
            return config.steps_per_epoch

        def __getitem__(self, index):
            rng = np.random.default_rng([config.seed, self.epoch, index])
            chosen = rng.integers(0, len(images), config.batch_size)
            turns = rng.integers(0, 8, config.batch_size)
            x = np.stack([dihedral(images[i], k) for i, k in zip(chosen, turns)]).astype(np.float32)
            y = np.stack([dihedral(masks[i], k) for i, k in zip(chosen, turns)]).astype(np.float32)
            return x[..., None], y[..., None]

        def on_epoch_end(self):
            self.epoch += 1

    return TileBatches()


def make_time_budget_callback(minutes: float):
    """Stops training when the elapsed time plus one more validation would pass the budget."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = minutes * 60.0
            self.validation_seconds = 0.0
            self.stopped = False

        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_test_begin(self, logs=None):
            self.test_start = time.monotonic()

        def on_test_end(self, logs=None):
            self.validation_seconds = time.monotonic() - self.test_start

        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - self.start + self.validation_seconds >= self.seconds:
                self.model.stop_training = True
                self.stopped = True

    return TimeBudget()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def train(config: TrainConfig, run_dir: Path, records, split, *, progress: bool) -> Path:
    """Fit the U-Net on the train split, validating on CV; returns the path of the best checkpoint."""
    import keras

    import unet

    keras.utils.set_random_seed(config.seed)
    train_images, train_masks, _ = dsb.tiles_for_records(
        subset_records(records, split, "train"), config.tile_size, config.min_overlap)
    cv_images, cv_masks, _ = dsb.tiles_for_records(
        subset_records(records, split, "cv"), config.tile_size, config.min_overlap)
    if len(train_images) == 0 or len(cv_images) == 0:
        raise ValueError("the split has no training or no CV images; the dataset is too small")
    log.info("tiles %dx%d: train %d, cv %d", config.tile_size, config.tile_size, len(train_images), len(cv_images))

    model = unet.build_unet(
        (config.tile_size, config.tile_size, 1), depth=config.depth, base_filters=config.base_filters,
        batch_norm=config.batch_norm, dropout=config.dropout,
    )
    loss = unet.bce_dice_loss if config.loss == "bce_dice" else keras.losses.BinaryCrossentropy()
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                  metrics=[unet.DiceCoefficient()])
    log.info("U-Net: depth %d, %d..%d filters, %s parameters", config.depth, config.base_filters,
             config.base_filters * 2 ** (config.depth - 1), f"{model.count_params():,}")

    checkpoint = run_dir / "model.keras"
    callbacks = [
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_dice", mode="max", save_best_only=True),
        keras.callbacks.CSVLogger(run_dir / "history.csv"),
        keras.callbacks.TerminateOnNaN(),
    ]
    if _tensorflow_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_dir / "logs"))
    budget = None
    if config.minutes is not None:
        budget = make_time_budget_callback(config.minutes)
        callbacks.append(budget)

    started = time.monotonic()
    model.fit(
        make_training_sequence(train_images, train_masks, config),
        validation_data=(cv_images[..., None].astype(np.float32), cv_masks[..., None].astype(np.float32)),
        validation_batch_size=max(config.batch_size, 8),
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=1 if progress else 2,
    )
    minutes = (time.monotonic() - started) / 60
    log.info("trained for %.1f minutes%s", minutes,
             " (stopped by the time budget)" if budget is not None and budget.stopped else "")
    write_json(run_dir / "training.json", {"minutes": round(minutes, 2),
                                          "stopped_by_time_budget": bool(budget and budget.stopped)})
    if not checkpoint.exists():
        raise RuntimeError("no checkpoint was written: validation Dice was never computed (NaN loss?)")
    return checkpoint


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Evaluation and figures
# --------------------------------------------------------------------------------------------

def evaluate(model_path: Path, config: TrainConfig, run_dir: Path, records, split, *, progress: bool) -> dict:
    """Predict every test-split image at full size; pixel Dice per image, mean, per cluster; figures."""
    from tqdm.auto import tqdm

    model = load_model(model_path)
    batch_size = max(config.batch_size, 8)

    def predict_tiles(tiles):
        return model.predict(tiles, batch_size=batch_size, verbose=0)

    clusters = dict(zip(split["image_id"], split["cluster"]))
    test = subset_records(records, split, "test")
    rows, predictions = [], {}
    for record in tqdm(test, desc="predict test images", unit="img", disable=not progress):
        probability = segment.predict_probability(
            predict_tiles, record.image, tile_size=config.tile_size, min_overlap=config.min_overlap)
        predicted = probability > config.threshold
        predictions[record.image_id] = predicted
        rows.append({
            "image_id": record.image_id, "cluster": int(clusters[record.image_id]),
            "height": record.image.shape[0], "width": record.image.shape[1],
            "nuclei": int(record.labels.max(initial=0)),
            "dice": segment.pixel_dice(record.mask, predicted),
        })
    metrics = summarize(rows)
    metrics["model"] = str(model_path)
    metrics["threshold"] = config.threshold
    write_json(run_dir / "metrics.json", metrics)
    print(format_metrics(metrics))
    figures = draw_figures(test, predictions, clusters, run_dir / "figures", config)
    log.info("wrote %d figures to %s", len(figures), run_dir / "figures")
    return metrics


def load_model(path: Path):
    import keras

    import unet  # noqa: F401 - registers the custom objects

    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ValueError(f"{path} is not a readable Keras model: {error}") from error


def summarize(rows: list[dict]) -> dict:
    """Mean pixel Dice overall and per cluster, plus the per-image rows."""
    import pandas as pd

    table = pd.DataFrame(rows)
    per_cluster = {
        str(cluster): {"images": int(len(group)), "mean_dice": float(group["dice"].mean())}
        for cluster, group in table.groupby("cluster")
    }
    return {
        "summary": {"images": int(len(table)), "mean_dice": float(table["dice"].mean()),
                    "median_dice": float(table["dice"].median())},
        "per_cluster": per_cluster,
        "per_image": rows,
    }


def format_metrics(metrics: dict) -> str:
    lines = ["", "Test split, pixel Dice of full images:", f"{'cluster':>8} {'images':>7} {'mean Dice':>10}"]
    for cluster, values in metrics["per_cluster"].items():
        lines.append(f"{cluster:>8} {values['images']:>7} {values['mean_dice']:>10.3f}")
    summary = metrics["summary"]
    lines.append(f"{'all':>8} {summary['images']:>7} {summary['mean_dice']:>10.3f}")
    return "\n".join(lines) + "\n"


FALSE_POSITIVE = (1.0, 0.2, 0.2)   # predicted, not true: red
FALSE_NEGATIVE = (0.2, 0.5, 1.0)   # true, missed: blue
TRUE_POSITIVE = (0.85, 0.85, 0.85)


def error_image(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """RGB picture of agreement: true positives light gray, false positives red, false negatives blue.

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    picture = np.zeros(truth.shape + (3,), np.float32)
    picture[truth & predicted] = TRUE_POSITIVE
    picture[~truth & predicted] = FALSE_POSITIVE
    picture[truth & ~predicted] = FALSE_NEGATIVE
    return picture


def draw_figures(records, predictions: dict, clusters: dict, folder: Path, config: TrainConfig) -> list[Path]:
    """One PNG per cluster: rows of image / true mask / predicted mask / errors for sampled test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    by_cluster: dict[int, list] = {}
    for record in records:
        by_cluster.setdefault(int(clusters[record.image_id]), []).append(record)
    written = []
    for cluster, members in sorted(by_cluster.items()):
        count = min(config.figures_per_cluster, len(members))
        if count == 0:
            continue
        chosen = [members[i] for i in sorted(rng.choice(len(members), count, replace=False))]
        figure, axes = plt.subplots(count, 4, figsize=(16, 4 * count), squeeze=False)
        for row, record in zip(axes, chosen):
            predicted = predictions[record.image_id]
            dice = segment.pixel_dice(record.mask, predicted)
            panels = [
                (record.image, f"{record.image_id[:12]} ({record.image.shape[0]}x{record.image.shape[1]})"),
                (record.mask, f"true mask ({int(record.labels.max(initial=0))} nuclei)"),
                (predicted, f"predicted mask (Dice {dice:.3f})"),
                (error_image(record.mask, predicted), "errors: red = false positive, blue = missed"),
            ]
            for axis, (picture, title) in zip(row, panels):
                axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axis.set_title(title, fontsize=10)
                axis.axis("off")
        figure.suptitle(f"cluster {cluster}: test images", fontsize=13)
        figure.tight_layout()
        path = folder / f"cluster_{cluster}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Path:
    progress = not args.quiet
    cache_dir = None if args.no_cache else args.cache_dir
    if args.evaluate is not None:
        return run_evaluation(args, cache_dir=cache_dir, progress=progress)
    preset = choose_preset(args.preset)
    config = config_from_args(args, preset)
    run_dir = new_run_dir(args.out, preset)
    write_json(run_dir / "config.json", config.to_dict())
    log.info("run folder: %s", run_dir)
    records, split = load_data(config, cache_dir=cache_dir, progress=progress)
    dsb.save_csv(split, run_dir / "split.csv")
    checkpoint = train(config, run_dir, records, split, progress=progress)
    evaluate(checkpoint, config, run_dir, records, split, progress=progress)
    return run_dir


def run_evaluation(args: argparse.Namespace, *, cache_dir: Path | None, progress: bool) -> Path:
    """``--evaluate MODEL``: the model's own config and split when it sits in a run folder."""
    model_path = Path(args.evaluate)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    saved = model_path.parent / "config.json"
    if saved.exists():
        values = json.loads(saved.read_text())
        values["split"] = str(model_path.parent / "split.csv")
        config = TrainConfig.from_dict(values)
    else:
        config = config_from_args(args, args.preset or "cpu")
    overrides = {"data": str(args.data) if args.data is not None else None,
                 "split": str(args.split) if args.split is not None else None,
                 "threshold": args.threshold, "figures_per_cluster": args.figures_per_cluster}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    run_dir = new_run_dir(args.out, "evaluate")
    write_json(run_dir / "config.json", {**config.to_dict(), "evaluated_model": str(model_path)})
    log.info("run folder: %s", run_dir)
    records, split = load_data(config, cache_dir=cache_dir, progress=progress)
    dsb.save_csv(split, run_dir / "split.csv")
    evaluate(model_path, config, run_dir, records, split, progress=progress)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run_dir = run(args)
    except (ValueError, FileNotFoundError, dsb.DatasetChangedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    outputs = sorted(path.name + ("/" if path.is_dir() else "") for path in run_dir.iterdir())
    print(f"Outputs are in {run_dir}/: {', '.join(outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

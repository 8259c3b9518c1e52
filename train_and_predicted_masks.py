"""Train the nuclei U-Net on DSB2018, evaluate it on the held-out test split, plot predicted masks.

    python train_and_predicted_masks.py                      # preset picked by the hardware
    python train_and_predicted_masks.py --preset cpu --seed 1
    python train_and_predicted_masks.py --evaluate runs/<run>/model.keras
    python train_and_predicted_masks.py export --model runs/<run>/model.keras --format savedmodel

Every invocation writes one run folder under ``--out`` (default ``runs/``): ``config.json``,
``split.csv``, ``model.keras`` (best by validation Dice), ``history.csv``, ``logs/`` (TensorBoard),
``metrics.json`` and ``figures/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    lr_schedule : str
        'constant' (the reference) or 'cosine': the learning rate decays from ``learning_rate`` to 0 over
        ``epochs * steps_per_epoch`` steps (a function of the step, not of the clock, so runs reproduce).
    sampling : str
        How training tiles are drawn: 'tile' (uniformly over all tiles, so large images weigh more) or
        'image' (an image uniformly, then one of its tiles, so small images and rare clusters weigh more).
    jit_compile : bool
        Compile the training step with XLA (TensorFlow backend; faster on CPU).
    contacts : bool
        A second output channel learns where nuclei touch (``dsb.contact_map``); post-processing then
        seeds one nucleus per contact-free part of the foreground (see ``segment.probability_to_labels``).
    tile_size, min_overlap : int
        Tiles cut from the images for training and for full-image prediction.
    threshold, min_size, marker_height, contact_threshold
        Post-processing (see ``segment.probability_to_labels``): foreground probability threshold,
        largest speck dropped, distance-watershed marker height (None: connected components, or the
        contact channel where the model has one), contact probability above which a pixel is no seed.
    tta : bool
        Test-time augmentation (8 flips/rotations) when predicting full images.
    figures_per_cluster : int
        Test images drawn per cluster in the figures.
    distribute : str
        'none', 'mirrored' (the GPUs of one machine: ``tf.distribute.MirroredStrategy``, or
        ``keras.distribution.DataParallel`` on JAX) or 'multiworker' (machines listed in ``TF_CONFIG``:
        ``tf.distribute.MultiWorkerMirroredStrategy``). ``batch_size`` is the global batch.
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
    lr_schedule: str = "constant"
    sampling: str = "tile"
    jit_compile: bool = False
    contacts: bool = False
    tile_size: int = dsb.TILE_SIZE
    min_overlap: int = 32
    threshold: float = segment.DEFAULT_THRESHOLD
    min_size: int = segment.DEFAULT_MIN_SIZE
    marker_height: float | None = segment.DEFAULT_MARKER_HEIGHT
    contact_threshold: float = segment.DEFAULT_CONTACT_THRESHOLD
    tta: bool = False
    figures_per_cluster: int = 2
    distribute: str = "none"

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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {sorted(SAMPLINGS)}, got {self.sampling!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.contact_threshold < 1.0:
            raise ValueError(f"contact_threshold must be in (0, 1), got {self.contact_threshold}")
        if not 0 <= self.min_overlap < self.tile_size:
            raise ValueError(f"min_overlap must be in [0, tile_size), got {self.min_overlap}")
        if self.tile_size % 2 ** (self.depth - 1):
            raise ValueError(f"tile_size {self.tile_size} must be divisible by 2**(depth-1) = {2 ** (self.depth - 1)}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be non-negative, got {self.min_size}")
        if self.marker_height is not None and not self.marker_height > 0:
            raise ValueError(f"marker_height must be positive or None, got {self.marker_height}")
        if self.figures_per_cluster < 0:
            raise ValueError(f"figures_per_cluster must be non-negative, got {self.figures_per_cluster}")
        if self.distribute not in DISTRIBUTE_MODES:
            raise ValueError(f"distribute must be one of {list(DISTRIBUTE_MODES)}, got {self.distribute!r}")
        if self.distribute == "multiworker" and self.minutes is not None:
            # Each worker would read its own clock and stop at another step, leaving the others waiting.
            raise ValueError("minutes (a time budget) cannot be used with distribute='multiworker': the workers "
                             "would stop at different steps; pass --minutes 0 and set --epochs instead")

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
LR_SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("tile", "image")
DISTRIBUTE_MODES = ("none", "mirrored", "multiworker")

PRESETS: dict[str, dict] = {
    # The reference write-up: a 64..1024 U-Net, BCE, batch 20, 3 x 3500 steps. A GPU job.
    "seed": dict(epochs=3, steps_per_epoch=3500, batch_size=20, learning_rate=1e-4,
                 depth=5, base_filters=64, batch_norm=False, loss="bce"),
    # Sized for about 14 minutes of training on 2 CPU cores: 5 epochs of 60 steps with XLA, the learning rate
    # decaying to 0 over them (the time budget only stops a slower machine early). The contact channel splits
    # touching nuclei; the two thresholds were chosen on the CV split, as was test-time augmentation (CV mAP 0.473
    # without, 0.490 with, at about 4.5x the prediction time; README, "Results").
    "cpu": dict(epochs=5, steps_per_epoch=60, batch_size=8, learning_rate=1e-3, lr_schedule="cosine", minutes=14.0,
                jit_compile=True, depth=5, base_filters=16, batch_norm=True, loss="bce_dice", contacts=True,
                threshold=0.6, contact_threshold=0.2, tta=True),
    # Seconds: checks that everything runs end to end; its model is not meant to be good.
    "smoke": dict(epochs=1, steps_per_epoch=2, batch_size=2, learning_rate=1e-3, lr_schedule="cosine",
                  depth=3, base_filters=4, batch_norm=True, loss="bce_dice", contacts=True, figures_per_cluster=1),
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
        epilog="Examples:\n"
               "  python train_and_predicted_masks.py --preset cpu --seed 1\n"
               "  python train_and_predicted_masks.py --evaluate runs/RUN/model.keras --tta\n"
               "  python train_and_predicted_masks.py --evaluate runs/RUN/model.keras --tune\n"
               "  python train_and_predicted_masks.py --predict runs/RUN/model.keras --input my_images/\n"
               "  python train_and_predicted_masks.py export --model runs/RUN/model.keras --format savedmodel "
               "(see export --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_argument_group("what to do")
    mode.add_argument("--preset", choices=sorted(PRESETS),
                      help="settings to start from: 'seed' = the reference (GPU), 'cpu' = ~14 min on "
                           "2 cores, 'smoke' = a seconds-long check. Default: 'seed' if a GPU is found, else 'cpu'")
    exclusive = mode.add_mutually_exclusive_group()
    exclusive.add_argument("--evaluate", metavar="MODEL", type=Path,
                           help="instead of training, evaluate a saved model.keras on --subset of --data "
                                "(any DSB-layout folder or zip with masks)")
    exclusive.add_argument("--predict", metavar="MODEL", type=Path,
                           help="instead of training, segment the images in --input with a saved model.keras")
    exclusive.add_argument("--resume", metavar="RUN_DIR", type=Path,
                           help="continue a killed or interrupted training run from the end of its last finished "
                                "epoch, with its own config, split and remaining time budget")
    mode.add_argument("--input", type=Path,
                      help="with --predict: a folder of images (PNG, TIFF, JPEG; gray, RGB or RGBA; 8 or 16 bit), "
                           "plain files or the DSB layout")
    mode.add_argument("--subset", choices=("test", "cv", "train", "all"),
                      help="with --evaluate: which images (default test; 'all' = every image of --data, "
                           "no split needed)")
    mode.add_argument("--tune", action="store_true",
                      help="with --evaluate: grid-search the post-processing on the CV split and write tuning.csv")

    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path,
                      help="DSB-layout folder or zip (default: $DSB_DATA, datasets/, the team mirror)")
    data.add_argument("--split", type=Path,
                      help="split CSV, created on first use and reused (default: datasets/split.csv, "
                           "or the evaluated model's own split.csv)")
    data.add_argument("--cache-dir", type=Path, default=dsb.DEFAULT_CACHE_DIR,
                      help="cache of decoded images (default: datasets/cache)")
    data.add_argument("--no-cache", action="store_true", help="decode the PNGs, neither read nor write the cache")

    train = parser.add_argument_group("training (override the preset)")
    train.add_argument("--epochs", type=int, help="number of epochs (with --minutes, a ceiling)")
    train.add_argument("--steps-per-epoch", type=int, help="batches per epoch; CV is evaluated after each")
    train.add_argument("--batch-size", type=int, help="tiles per batch")
    train.add_argument("--learning-rate", type=float, help="Adam's learning rate")
    train.add_argument("--minutes", type=float,
                       help="training time budget in minutes (stops after validating); 0 = no budget")
    train.add_argument("--seed", type=int, default=0,
                       help="seed for split (first use), weights, sampling, augmentation (default: 0)")
    train.add_argument("--depth", type=int, help="U-Net levels, bottleneck included")
    train.add_argument("--base-filters", type=int, help="filters of the first U-Net level")
    train.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                       help="batch normalization after each convolution")
    train.add_argument("--dropout", type=float, help="dropout at the two deepest levels")
    train.add_argument("--loss", choices=LOSSES, help="training loss")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                       help="'constant' learning rate, or 'cosine' decay to 0 over epochs x steps-per-epoch")
    train.add_argument("--sampling", choices=SAMPLINGS,
                       help="draw training tiles uniformly ('tile') or an image first, then one of its tiles ('image')")
    train.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the training step with XLA (TensorFlow backend)")
    train.add_argument("--contacts", action=argparse.BooleanOptionalAction, default=None,
                       help="a second output channel learns where nuclei touch, to split them")
    train.add_argument("--distribute", choices=DISTRIBUTE_MODES,
                       help="'mirrored': every GPU of this machine (tf.distribute.MirroredStrategy; "
                            "keras.distribution.DataParallel on JAX); 'multiworker': the machines in TF_CONFIG "
                            "(tf.distribute.MultiWorkerMirroredStrategy). --batch-size is the global batch, "
                            "split across replicas (default: none)")

    post = parser.add_argument_group("post-processing (default: the training run's, else the CV-chosen defaults)")
    post.add_argument("--threshold", type=float, help=f"probability threshold for the masks "
                                                      f"[{segment.DEFAULT_THRESHOLD}]")
    post.add_argument("--min-size", type=int, help=f"drop nuclei of this many pixels or fewer [{segment.DEFAULT_MIN_SIZE}]")
    post.add_argument("--marker-height", type=float,
                      help=f"split touching nuclei by a watershed with markers this many pixels of distance high "
                           f"(e.g. 2); 0 = no splitting, connected components "
                           f"[{segment.DEFAULT_MARKER_HEIGHT or 0}]; models with a contact channel split by it "
                           f"unless a marker height is given")
    post.add_argument("--contact-threshold", type=float,
                      help=f"with a contact channel: pixels of higher contact probability seed no nucleus "
                           f"[{segment.DEFAULT_CONTACT_THRESHOLD}]")
    post.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                      help="test-time augmentation: average the 8 flips/rotations (8x the model's work; "
                           "on in the cpu preset; --no-tta for speed)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR,
                        help="folder in which each invocation makes its run folder (default: runs/)")
    output.add_argument("--figures-per-cluster", type=int, help="test images per cluster in the figures")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


_OVERRIDES = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "minutes", "depth",
              "base_filters", "batch_norm", "dropout", "loss", "lr_schedule", "sampling", "jit_compile",
              "contacts", "contact_threshold", "threshold", "min_size", "tta", "figures_per_cluster")


def config_from_args(args: argparse.Namespace, preset: str) -> TrainConfig:
    """The one place where command-line options become a ``TrainConfig``."""
    values = dict(PRESETS[preset], preset=preset, seed=args.seed)
    values.update({name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None})
    if args.data is not None:
        values["data"] = str(args.data)
    values["split"] = str(args.split if args.split is not None else dsb.DEFAULT_SPLIT_PATH)
    if args.marker_height is not None:
        values["marker_height"] = None if args.marker_height <= 0 else args.marker_height
    if args.minutes == 0:
        values["minutes"] = None
    if args.distribute is not None:
        values["distribute"] = args.distribute
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
    """One of the 8 flips/rotations of the first two axes: ``k`` in 0..7 (``segment.dihedral_tiles`` of one tile)."""
    return segment.dihedral_tiles(array[None], k)[0]


def make_training_sequence(images, masks, config: TrainConfig, owners=None):
    """A ``keras.utils.PyDataset`` of augmented batches drawn at random from the training tiles.

    ``owners`` (one id per tile) is needed for ``config.sampling == 'image'``: an image is drawn
    uniformly, then one of its tiles.

    Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so runs are reproducible
    whatever the order Keras asks for batches in. Its ``epoch`` is set by the callback that
    ``epoch_setter`` returns (Keras' own ``on_epoch_end`` calls do not count epochs exactly).
    """
    import keras

    groups = None
    if config.sampling == "image":
        if owners is None or len(owners) != len(images):
            raise ValueError("sampling='image' needs the owner image of every tile")
        _, inverse = np.unique(np.asarray(owners, dtype=str), return_inverse=True)
        groups = [np.flatnonzero(inverse == group) for group in range(inverse.max() + 1)]

    def draw(rng):
        if groups is None:
            return rng.integers(0, len(images), config.batch_size)
        picked = rng.integers(0, len(groups), config.batch_size)
        return np.array([groups[g][rng.integers(0, len(groups[g]))] for g in picked])

    class TileBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def __len__(self):
            return config.steps_per_epoch

        def __getitem__(self, index):
            rng = np.random.default_rng([config.seed, self.epoch, index])
            chosen = draw(rng)
            turns = rng.integers(0, 8, config.batch_size)
            x = np.stack([dihedral(images[i], k) for i, k in zip(chosen, turns)]).astype(np.float32)
            y = np.stack([dihedral(masks[i], k) for i, k in zip(chosen, turns)])
            return x[..., None], target_channels(y, config)

    return TileBatches()


def make_validation_sequence(images, masks, batch_size: int, config: TrainConfig):
    """A ``keras.utils.PyDataset`` of the CV tiles in order, cast to float32 one batch at a time.

    The stored tiles stay compact (float16 images, uint8 targets); a float32 copy of the whole CV set
    (and the second copy a ``tf.data`` pipeline would make of it) is never built.
    """
    import keras

    class ValidationBatches(keras.utils.PyDataset):
        def __len__(self):
            return math.ceil(len(images) / batch_size)

        def __getitem__(self, index):
            chosen = slice(index * batch_size, (index + 1) * batch_size)
            return images[chosen, ..., None].astype(np.float32), target_channels(masks[chosen], config)

    return ValidationBatches()


def target_channels(masks: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Stored target tiles (uint8: bit 0 nucleus, bit 1 contact) as the model's float32 targets (N, T, T, C)."""
    masks = np.asarray(masks)
    channels = [masks & 1] + ([(masks >> 1) & 1] if config.contacts else [])
    return np.stack(channels, axis=-1).astype(np.float32)


def epoch_setter(sequence):
    """A callback that tells ``sequence`` which epoch Keras is in, before its first batch."""
    import keras

    class SetEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            sequence.epoch = epoch

    return SetEpoch()


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


def make_throughput_callback(batch_size: int):
    """Logs each epoch's training speed: steps/s and tiles/s from the end of its first step to its last.

    The first step (graph tracing, compilation) and the validation after the last are left out,
    so the figure compares setups (devices, workers, backends) on the training steps alone.
    """
    import keras

    class Throughput(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.steps, self.first_end, self.last_end = 0, None, None

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            self.last_end = time.monotonic()
            if self.steps == 1:
                self.first_end = self.last_end

        def on_epoch_end(self, epoch, logs=None):
            if self.steps > 1 and self.last_end > self.first_end:
                rate = (self.steps - 1) / (self.last_end - self.first_end)
                log.info("epoch %d: %.2f training steps/s = %.1f tiles/s (steps 2-%d, global batch %d)",
                         epoch + 1, rate, rate * batch_size, self.steps, batch_size)

    return Throughput()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def prepare_training_data(records, split, config: TrainConfig) -> dict:
    """Tiles of the train and CV images: the only data ``train`` lets the model see.

    Test-split images are never tiled here. Returns a dict with ``train_images``, ``train_masks``,
    ``cv_images``, ``cv_masks`` (see ``dsb.tiles_for_records``) and ``train_ids``, ``cv_ids``: the
    image id of every tile.
    """
    data = {}
    for subset in ("train", "cv"):
        chosen = subset_records(records, split, subset)
        images, masks, owner = dsb.tiles_for_records(chosen, config.tile_size, config.min_overlap,
                                                     contacts=config.contacts)
        data[f"{subset}_images"], data[f"{subset}_masks"] = images, masks
        data[f"{subset}_ids"] = np.array([chosen[index].image_id for index in owner], dtype=object)
    if len(data["train_images"]) == 0 or len(data["cv_images"]) == 0:
        raise ValueError("the split has no training or no CV images; the dataset is too small")
    return data


def shardable_validation(images, masks, batch_size: int):
    """CV tiles and batch size that the active Keras distribution can split evenly over its devices.

    JAX's ``keras.distribution.DataParallel`` cannot shard a batch whose size its device count does
    not divide, so under it the batch size is rounded up to a multiple of the device count and the
    last ``len(images) % devices`` tiles are left out of validation (logged). Without a Keras
    distribution (``tf.distribute`` splits uneven batches itself) everything is returned unchanged.
    """
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return images, masks, batch_size
    mesh = distribution.device_mesh
    devices = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    kept = len(images) - len(images) % devices
    if kept < len(images):
        log.warning("validating on %d of %d CV tiles: the %d devices need equal shares", kept, len(images), devices)
    return images[:kept], masks[:kept], math.ceil(batch_size / devices) * devices


def make_checkpoint_callbacks(run_dir: Path, best: float, elapsed_seconds: float):
    """Save the best model by ``val_dice`` and, after every epoch, the state to resume from.

    Every file is written under a temporary name and renamed, so a kill at any moment leaves
    either the old or the new file, never half of one. Epochs whose loss is NaN save nothing.
    """
    import keras

    class Checkpoints(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = best

        def on_train_begin(self, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if not np.isfinite(logs.get("loss", np.nan)):
                return
            value = logs.get("val_dice")
            if value is not None and np.isfinite(value) and value > self.best:
                self.best = float(value)
                save_model_atomically(self.model, run_dir / "model.keras")
            save_model_atomically(self.model, run_dir / "last.keras")
            write_json(run_dir / "state.json", {
                "epoch": epoch, "best_val_dice": self.best,
                "training_seconds": elapsed_seconds + time.monotonic() - self.started,
            })

    return Checkpoints()


def save_model_atomically(model, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.partial.keras")
    model.save(temporary)
    os.replace(temporary, path)


def train(config: TrainConfig, run_dir: Path, data: dict, *, progress: bool, resume: bool = False) -> Path:
    """Fit the U-Net on the train tiles, validating on the CV tiles; returns the path of the best checkpoint.

    ``data`` comes from ``prepare_training_data``. With ``resume``, training continues from
    ``run_dir/last.keras`` and ``state.json`` (the end of the last finished epoch), with the time
    budget that was left.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    log.info("tiles %dx%d: train %d, cv %d", config.tile_size, config.tile_size,
             len(data["train_images"]), len(data["cv_images"]))

    state = {"epoch": -1, "best_val_dice": -np.inf, "training_seconds": 0.0}
    if resume and (run_dir / "state.json").exists():
        state = json.loads((run_dir / "state.json").read_text())
        model = load_model(run_dir / "last.keras", compile=True)
        truncate_history(run_dir / "history.csv", state["epoch"])
        log.info("resuming after epoch %d (best CV Dice so far %.4f, %.1f minutes trained)",
                 state["epoch"] + 1, state["best_val_dice"], state["training_seconds"] / 60)
    else:
        if resume:
            log.info("no finished epoch to resume from: starting this run's training from the beginning")
        model = build_model(config)
    log.info("U-Net: depth %d, %d..%d filters, %s parameters", config.depth, config.base_filters,
             config.base_filters * 2 ** (config.depth - 1), f"{model.count_params():,}")

    initial_epoch = state["epoch"] + 1
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=initial_epoch > 0),
        make_checkpoint_callbacks(run_dir, state["best_val_dice"], state["training_seconds"]),
    ]
    if _tensorflow_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_dir / "logs"))
    budget = None
    if config.minutes is not None:
        budget = make_time_budget_callback(max(config.minutes - state["training_seconds"] / 60, 1e-3))
        callbacks.append(budget)

    sequence = make_training_sequence(data["train_images"], data["train_masks"], config, data["train_ids"])
    callbacks.append(epoch_setter(sequence))
    callbacks.append(make_throughput_callback(config.batch_size))
    cv_images, cv_masks, validation_batch_size = shardable_validation(data["cv_images"], data["cv_masks"],
                                                                      max(config.batch_size, 8))
    started = time.monotonic()
    history = model.fit(
        sequence,
        validation_data=make_validation_sequence(cv_images, cv_masks, validation_batch_size, config),
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=1 if progress else 2,
    )
    minutes = state["training_seconds"] / 60 + (time.monotonic() - started) / 60
    log.info("trained for %.1f minutes%s", minutes,
             " (stopped by the time budget)" if budget is not None and budget.stopped else "")
    losses = history.history.get("loss", [])
    diverged = bool(losses) and not np.isfinite(losses[-1])
    write_json(run_dir / "training.json", {"minutes": round(minutes, 2),
                                          "stopped_by_time_budget": bool(budget and budget.stopped),
                                          "stopped_by_nan_loss": diverged})
    checkpoint = run_dir / "model.keras"
    if diverged:
        epoch = initial_epoch + len(losses) - 1
        if not checkpoint.exists():
            raise ValueError(f"training stopped: the loss became NaN in epoch {epoch + 1}, before any model was "
                             f"saved; try a lower --learning-rate")
        log.error("training stopped: the loss became NaN in epoch %d; evaluating the best model saved before it "
                  "(CV Dice %.4f)", epoch + 1, json.loads((run_dir / "state.json").read_text())["best_val_dice"])
    if not checkpoint.exists():
        raise ValueError("no model was saved: the CV Dice was never computed")
    return checkpoint


def learning_rate_schedule(config: TrainConfig):
    """Adam's learning rate: a number, or a schedule of the step (saved with the model, so resumable)."""
    import keras

    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                      decay_steps=config.epochs * config.steps_per_epoch)
    return config.learning_rate


def build_model(config: TrainConfig):
    """The U-Net of ``config``, compiled with its loss, Adam and the Dice metric, ready to ``fit``."""
    import keras

    import unet

    model = unet.build_unet(
        (config.tile_size, config.tile_size, 1), depth=config.depth, base_filters=config.base_filters,
        batch_norm=config.batch_norm, dropout=config.dropout, output_channels=2 if config.contacts else 1,
        # Per-replica statistics would differ between workers and come from as little as one tile.
        synchronized_batch_norm=config.distribute != "none",
    )
    loss = unet.bce_dice_loss if config.loss == "bce_dice" else keras.losses.BinaryCrossentropy()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(config)), loss=loss,
                  metrics=[unet.DiceCoefficient()],
                  jit_compile=effective_jit_compile(config))
    return model


def effective_jit_compile(config: TrainConfig):
    """``model.compile``'s ``jit_compile``: XLA where the config asks for it on TensorFlow without
    ``tf.distribute`` (whose CPU collectives XLA cannot compile); JAX always compiles; torch stays eager."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return "auto"
    if config.jit_compile and config.distribute != "none":
        log.info("XLA (jit_compile) is off under --distribute %s", config.distribute)
        return False
    return config.jit_compile


def truncate_history(path: Path, last_epoch: int) -> None:
    """Drop history rows after ``last_epoch``: an epoch logged but not saved before a kill is redone."""
    import pandas as pd

    if path.exists() and path.stat().st_size:
        table = pd.read_csv(path)
        dsb.save_csv(table[table["epoch"] <= last_epoch], path)


def _tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Distribution: several GPUs, several machines
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distribution:
    """How one training run is spread over devices.

    Attributes
    ----------
    is_chief : bool
        Whether this process writes the run folder (always, except for non-chief workers).
    scope : callable
        Returns the context in which the model is built, compiled and fitted.
    """

    is_chief: bool
    scope: Callable[[], contextlib.AbstractContextManager]


def read_tf_config() -> dict:
    """The ``TF_CONFIG`` of a multi-worker run, checked: ``{"cluster": {...}, "task": {"type", "index"}}``."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("--distribute multiworker needs TF_CONFIG, the cluster and this worker's task, e.g. "
                         "{\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
                         "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        members = cluster[task["type"]]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must hold a cluster and this process's task in it: {error!r} in {text}") from None
    if task["type"] not in ("chief", "worker") or not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG: task {task} is not a chief or worker of the cluster {cluster}")
    return tf_config


def is_chief_task(tf_config: dict) -> bool:
    """The chief writes the run folder: task type 'chief', or worker 0 when the cluster names no chief."""
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def multi_worker_strategy():
    """A ``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3 gives it.

    With two or more workers, Keras 3.15's ``fit`` fails in two places (keras-team/keras#20585):
    it reduces the first (x, y) batch as a pair, which this strategy does not accept ("Attempt to
    convert a value (PerReplica...)"), and it averages each step's scalar logs (loss, Dice) over
    ``axis=0``, which scalars do not have. Here a pair is reduced member by member and a scalar
    over the replicas only.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super()

            def reduce_member(member):
                scalar = axis is not None and len(member.shape) == 0
                return parent.reduce(reduce_op, member, None if scalar else axis)

            return tf.nest.map_structure(reduce_member, value)

    return MultiWorkerMirroredStrategy()


def start_distribution(config: TrainConfig) -> Distribution:
    """Set up ``config.distribute`` on the Keras backend in use; a bad combination raises ``ValueError``.

    Must run before anything else in the process touches TensorFlow: a multi-worker strategy
    configures the runtime's collective operations when it is created.
    """
    if config.distribute == "none":
        return Distribution(True, contextlib.nullcontext)
    import keras

    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # strategies log every all-reduce at INFO

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if config.distribute == "mirrored":
            # Every GPU; without one, every logical CPU device (one, unless the process configured more).
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
            is_chief = True
        else:
            if not Path(config.split).is_file():
                # A split made separately on each machine could differ and put test images into training.
                raise ValueError(f"--distribute multiworker needs the same existing split file on every worker; "
                                 f"{config.split} does not exist (copy the chief's, or pass --split)")
            is_chief = is_chief_task(read_tf_config())
            strategy = multi_worker_strategy()
        replicas, scope = strategy.num_replicas_in_sync, strategy.scope
        name = type(strategy).__name__
    elif backend == "jax" and config.distribute == "mirrored":
        devices = keras.distribution.list_devices()
        data_parallel = keras.distribution.DataParallel(devices=devices)
        replicas, scope, is_chief, name = len(devices), data_parallel.scope, True, "keras.distribution.DataParallel"
    else:
        raise ValueError(f"--distribute {config.distribute} is not available on the {backend} backend "
                         f"(multiworker: TensorFlow only; mirrored: TensorFlow or JAX)")
    if config.batch_size % replicas:
        raise ValueError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                         f"{replicas} replicas")
    log.info("%s: %d replicas, global batch %d = %d per replica%s", name, replicas, config.batch_size,
             config.batch_size // replicas, "" if is_chief else "; this worker is not the chief and keeps no files")
    return Distribution(is_chief, scope)


def run_as_worker(config: TrainConfig, distribution: Distribution, *, cache_dir: Path | None, progress: bool) -> None:
    """Train as a non-chief worker: in step with the chief, in a scratch folder removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="unet-worker-"))
    try:
        records, split = load_data(config, cache_dir=cache_dir, progress=progress)
        data = prepare_training_data(records, split, config)
        del records
        with distribution.scope():
            train(config, scratch, data, progress=progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Evaluation, tuning, prediction
# --------------------------------------------------------------------------------------------

def load_model(path: Path, *, compile: bool = False):
    import keras

    import unet  # noqa: F401 - registers the custom objects the model file names

    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ValueError(f"{path} is not a readable Keras model: {error}") from error
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 1 or tuple(model.output_shape)[-1] not in (1, 2):
        raise ValueError(f"{path}: expected a model from (batch, H, W, 1) to (batch, H, W, 1) (nuclei) or "
                         f"(batch, H, W, 2) (nuclei, contacts), got {shape} -> {model.output_shape}")
    return model


def make_predictor(model, config: TrainConfig):
    """``segment.PredictTiles`` for a Keras model, and the tile size the model takes."""
    batch_size = max(config.batch_size, 8)
    tile_size = model.input_shape[1] or config.tile_size

    def predict_tiles(tiles):
        # predict_on_batch per batch, not model.predict per image: predict's per-call set-up cost
        # 28 % of stitched inference (bench/bench_infer.py).
        return np.concatenate([np.asarray(model.predict_on_batch(tiles[start:start + batch_size]))
                               for start in range(0, len(tiles), batch_size)])

    return predict_tiles, tile_size


def predict_record(predict_tiles, tile_size: int, image: np.ndarray, config: TrainConfig):
    """Probability, binary mask and instance labels of one preprocessed image."""
    maps = segment.predict_maps(predict_tiles, image, tile_size=tile_size, min_overlap=config.min_overlap,
                                tta=config.tta)
    probability = maps[..., 0]
    labels = maps_to_labels(maps, threshold=config.threshold, min_size=config.min_size,
                            marker_height=config.marker_height, contact_threshold=config.contact_threshold)
    return probability, probability > config.threshold, labels


def maps_to_labels(maps: np.ndarray, *, threshold, min_size, marker_height, contact_threshold) -> np.ndarray:
    """Instances from ``segment.predict_maps``: split by the contact channel if there is one and no
    marker height is asked for, else as ``segment.probability_to_labels`` without contacts."""
    contact = maps[..., 1] if maps.shape[-1] > 1 and marker_height is None else None
    return segment.probability_to_labels(maps[..., 0], threshold=threshold, min_size=min_size,
                                         marker_height=marker_height, contact=contact,
                                         contact_threshold=contact_threshold)


def evaluate(model_path: Path, config: TrainConfig, run_dir: Path, records, clusters: dict, *,
             progress: bool, title: str = "test split") -> dict:
    """Predict every record at full size; pixel Dice and the DSB score per image, overall, per cluster."""
    from tqdm.auto import tqdm

    model = load_model(model_path)
    predict_tiles, tile_size = make_predictor(model, config)
    rows, predictions = [], {}
    for record in tqdm(records, desc="predict images", unit="img", disable=not progress):
        _, mask, labels = predict_record(predict_tiles, tile_size, record.image, config)
        predictions[record.image_id] = (mask, labels)
        score = segment.average_precision(record.labels, labels)
        rows.append({
            "image_id": record.image_id, "cluster": int(clusters.get(record.image_id, -1)),
            "height": record.image.shape[0], "width": record.image.shape[1],
            "dice": segment.pixel_dice(record.mask, mask), "map": score["map"], "ap50": score["ap50"],
            "f1_50": score["f1_50"], "true_nuclei": score["true"], "predicted_nuclei": score["predicted"],
        })
    metrics = summarize(rows)
    metrics["model"] = str(model_path)
    metrics["postprocessing"] = {name: getattr(config, name) for name in POSTPROCESSING}
    write_json(run_dir / "metrics.json", metrics)
    print(format_metrics(metrics, title))
    figures = draw_figures(records, predictions, clusters, run_dir / "figures", config)
    log.info("wrote %d figures to %s", len(figures), run_dir / "figures")
    return metrics


POSTPROCESSING = ("threshold", "min_size", "marker_height", "contact_threshold", "tta")
SCORES = ("dice", "map", "ap50", "f1_50")


def summarize(rows: list[dict]) -> dict:
    """Mean scores overall and per cluster, plus the per-image rows."""
    import pandas as pd

    table = pd.DataFrame(rows)

    def means(frame):
        return {"images": int(len(frame)), **{f"mean_{name}": float(frame[name].mean()) for name in SCORES}}

    return {
        "summary": {**means(table), "median_dice": float(table["dice"].median())},
        "per_cluster": {str(cluster): means(group) for cluster, group in table.groupby("cluster")},
        "per_image": rows,
    }


def format_metrics(metrics: dict, title: str = "test split") -> str:
    header = f"{'cluster':>8} {'images':>7} {'Dice':>7} {'mAP':>7} {'AP@0.5':>7} {'F1@0.5':>7}"
    lines = ["", f"{title}: pixel Dice and DSB2018 score (mAP over IoU 0.50..0.95) of full images", header]

    def line(name, values):
        return (f"{name:>8} {values['images']:>7} {values['mean_dice']:>7.3f} {values['mean_map']:>7.3f} "
                f"{values['mean_ap50']:>7.3f} {values['mean_f1_50']:>7.3f}")

    lines += [line(cluster, values) for cluster, values in metrics["per_cluster"].items()]
    lines.append(line("all", metrics["summary"]))
    return "\n".join(lines) + "\n"


def tune(model_path: Path, config: TrainConfig, run_dir: Path, records, *, progress: bool) -> list[dict]:
    """Grid search of the post-processing on ``records`` (the CV split): mean DSB score per setting."""
    import pandas as pd
    from tqdm.auto import tqdm

    model = load_model(model_path)
    predict_tiles, tile_size = make_predictor(model, config)
    all_maps = []
    for record in tqdm(records, desc="predict images", unit="img", disable=not progress):
        all_maps.append(segment.predict_maps(predict_tiles, record.image, tile_size=tile_size,
                                             min_overlap=config.min_overlap, tta=config.tta))
    # Splitting: by the contact channel (at each contact threshold) if the model has one, else none or
    # a distance watershed of each marker height.
    has_contacts = all_maps[0].shape[-1] > 1
    splits = [(None, c) for c in (TUNE_CONTACT_THRESHOLDS if has_contacts else (None,))]
    splits += [(h, None) for h in TUNE_MARKER_HEIGHTS if h is not None]
    grid = [(t, h, c, m) for t in TUNE_THRESHOLDS for h, c in splits for m in TUNE_MIN_SIZES]
    rows = []
    for threshold, height, contact_threshold, min_size in tqdm(grid, desc="post-processing grid",
                                                                disable=not progress):
        scores = [segment.average_precision(record.labels, maps_to_labels(
            maps, threshold=threshold, min_size=min_size, marker_height=height,
            contact_threshold=contact_threshold or segment.DEFAULT_CONTACT_THRESHOLD))["map"]
            for record, maps in zip(records, all_maps)]
        rows.append({"threshold": threshold, "marker_height": height, "contact_threshold": contact_threshold,
                     "min_size": min_size, "mean_map": float(np.mean(scores))})
    table = pd.DataFrame(rows).sort_values("mean_map", ascending=False)
    dsb.save_csv(table, run_dir / "tuning.csv")
    print(f"\nPost-processing on {len(records)} images (tta={config.tta}), best first:")
    print(table.head(10).to_string(index=False))
    return table.to_dict("records")


TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNE_MARKER_HEIGHTS = (None, 1.0, 2.0, 3.0, 5.0)
TUNE_MIN_SIZES = (0, 15, 30)
TUNE_CONTACT_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)


def predict_folder(model_path: Path, config: TrainConfig, folder: Path, run_dir: Path, *, progress: bool) -> dict:
    """Segment every image of ``folder``: mask, 16-bit labels and overlay PNGs, submission.csv, counts."""
    import pandas as pd
    import skimage.io
    from tqdm.auto import tqdm

    images = dsb.find_images(folder)
    model = load_model(model_path)
    predict_tiles, tile_size = make_predictor(model, config)
    for sub in ("masks", "labels", "overlays"):
        (run_dir / sub).mkdir()
    rows, counts, skipped = [], [], {}
    for image_id, path in tqdm(images, desc="segment images", unit="img", disable=not progress):
        try:
            raw, nonfinite = dsb.replace_nonfinite(dsb.read_image(path), name=str(path))
            image = dsb.preprocess(raw)
        except ValueError as error:  # one bad file must not cost the others: skip it, report at the end
            skipped[image_id] = str(error) if str(path) in str(error) else f"{path}: {error}"
            continue
        if nonfinite:
            log.warning("%s: %d pixel values are NaN or infinite; replaced by the median of the others",
                        path, nonfinite)
        _, mask, labels = predict_record(predict_tiles, tile_size, image, config)
        skimage.io.imsave(run_dir / "masks" / f"{image_id}.png", (mask * 255).astype(np.uint8), check_contrast=False)
        skimage.io.imsave(run_dir / "labels" / f"{image_id}.png", labels.astype(np.uint16), check_contrast=False)
        skimage.io.imsave(run_dir / "overlays" / f"{image_id}.png", overlay(image, labels), check_contrast=False)
        rows += segment.submission_rows(image_id, labels)
        areas = np.bincount(labels.ravel())[1:]
        counts.append({"image_id": image_id, "height": image.shape[0], "width": image.shape[1],
                       "nuclei": int(labels.max()), "median_area": float(np.median(areas)) if len(areas) else 0.0,
                       "foreground_fraction": float(mask.mean()), "nonfinite_pixels": nonfinite})
    for image_id, reason in skipped.items():
        log.warning("skipped %s: %s", image_id, reason)
    if not counts:
        raise ValueError(f"no image in {folder} could be read ({len(skipped)} skipped)")
    segment.write_submission(run_dir / "submission.csv", rows)
    table = pd.DataFrame(counts)
    dsb.save_csv(table, run_dir / "counts.csv")
    if skipped:
        write_json(run_dir / "skipped.json", skipped)
    print(f"\nSegmented {len(table)} images: {int(table['nuclei'].sum())} nuclei in all, per image "
          f"min {table['nuclei'].min()}, median {table['nuclei'].median():.0f}, max {table['nuclei'].max()}")
    print(table.to_string(index=False, max_rows=20))
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s), listed in skipped.json: {', '.join(sorted(skipped))}")
    return {"images": len(table), "nuclei": int(table["nuclei"].sum()), "skipped": len(skipped)}


FALSE_POSITIVE = (1.0, 0.2, 0.2)   # predicted, not true: red
FALSE_NEGATIVE = (0.2, 0.5, 1.0)   # true, missed: blue
TRUE_POSITIVE = (0.85, 0.85, 0.85)
MATCHED = (0.2, 0.9, 0.2)          # predicted nucleus matched at IoU > 0.5: green


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


def match_image(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The image with outlines: predicted nuclei green if matched at IoU 0.5, red if not; missed true ones blue.

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    import skimage.segmentation

    matched_pred, matched_true = segment.match_objects(truth, predicted)
    picture = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    missed = np.isin(truth, np.flatnonzero(~matched_true) + 1)
    picture[skimage.segmentation.find_boundaries(np.where(missed, truth, 0), mode="inner")] = FALSE_NEGATIVE
    colours = np.array([(0, 0, 0)] + [MATCHED if m else FALSE_POSITIVE for m in matched_pred], np.float32)
    outline = skimage.segmentation.find_boundaries(predicted, mode="inner")
    picture[outline] = colours[predicted[outline]]
    return picture


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image in gray with each nucleus outlined in its own colour: ndarray (H, W, 3), uint8."""
    import skimage.color
    import skimage.segmentation

    picture = np.repeat(image[..., None], 3, axis=-1)
    outline = skimage.segmentation.find_boundaries(labels, mode="inner")
    coloured = skimage.color.label2rgb(labels, bg_label=0)
    picture[outline] = coloured[outline]
    return (np.clip(picture, 0, 1) * 255).astype(np.uint8)


def draw_figures(records, predictions: dict, clusters: dict, folder: Path, config: TrainConfig) -> list[Path]:
    """One PNG per cluster: for sampled images, image / true / predicted mask / pixel errors / nuclei matched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    by_cluster: dict[int, list] = {}
    for record in records:
        by_cluster.setdefault(int(clusters.get(record.image_id, -1)), []).append(record)
    written = []
    for cluster, members in sorted(by_cluster.items()):
        count = min(config.figures_per_cluster, len(members))
        if count == 0:
            continue
        chosen = [members[i] for i in sorted(rng.choice(len(members), count, replace=False))]
        figure, axes = plt.subplots(count, 5, figsize=(20, 4 * count), squeeze=False)
        for row, record in zip(axes, chosen):
            mask, labels = predictions[record.image_id]
            score = segment.average_precision(record.labels, labels)
            panels = [
                (record.image, f"{record.image_id[:12]} ({record.image.shape[0]}x{record.image.shape[1]})"),
                (record.mask, f"true mask ({int(record.labels.max(initial=0))} nuclei)"),
                (mask, f"predicted mask (Dice {segment.pixel_dice(record.mask, mask):.3f})"),
                (error_image(record.mask, mask), "pixels: red = false positive, blue = missed"),
                (match_image(record.image, record.labels, labels),
                 f"mAP {score['map']:.3f}, {score['predicted']} nuclei: green ok, red false, blue missed"),
            ]
            for axis, (picture, text) in zip(row, panels):
                axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axis.set_title(text, fontsize=9)
                axis.axis("off")
        name = f"cluster {cluster}" if cluster >= 0 else "images outside the training clusters"
        figure.suptitle(f"{name}: predicted masks", fontsize=13)
        figure.tight_layout()
        path = folder / (f"cluster_{cluster}.png" if cluster >= 0 else "unclustered.png")
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------
# Export for serving
# --------------------------------------------------------------------------------------------

EXPORT_FORMATS = {"savedmodel": "tf_saved_model"}  # our name -> Keras' model.export format


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_and_predicted_masks.py export",
        description="Export a trained model for other tools: a TensorFlow SavedModel that TF Serving and "
                    "tf.saved_model.load read. Its 'serve' endpoint maps tiles (batch, H, W, 1) float32 in [0, 1], "
                    "preprocessed as in dsb.preprocess, to nucleus probabilities of the same shape.",
    )
    parser.add_argument("--model", type=Path, required=True, help="a saved model, e.g. runs/RUN/model.keras")
    parser.add_argument("--format", default="savedmodel",
                        help=f"export format: {', '.join(EXPORT_FORMATS)} (default: savedmodel)")
    parser.add_argument("--out", type=Path,
                        help="folder to create; never overwritten (default: export_savedmodel/1 beside the model: "
                             "'1' is the model version folder TF Serving expects)")
    return parser


def export_model(model_path: Path, export_format: str = "savedmodel", out: Path | None = None) -> Path:
    """Export ``model_path`` to a new folder ``out`` (default ``<model folder>/export_savedmodel/1``).

    The export is written under a temporary name and renamed, and an existing ``out`` is an
    error: an export is never overwritten or left half-written.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {export_format!r}: choose from {', '.join(EXPORT_FORMATS)}")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    out = Path(out) if out is not None else Path(model_path).parent / "export_savedmodel" / "1"
    if out.exists():
        raise FileExistsError(f"{out} already exists: an export is never overwritten; pass another --out")
    if not _tensorflow_available():
        raise ValueError("export --format savedmodel needs TensorFlow installed (a SavedModel is TensorFlow's format)")
    model = load_model(model_path)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.export(str(partial), format=EXPORT_FORMATS[export_format], verbose=False)
    os.replace(partial, out)
    return out


def export_main(argv: list[str]) -> int:
    """``export --model M [--format savedmodel] [--out DIR]``: errors as one line and exit code 2."""
    args = build_export_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        out = export_model(args.model, args.format, args.out)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"Exported {args.model} as a {args.format} to {out}/ (endpoint 'serve')")
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> Path | None:
    progress = not args.quiet
    cache_dir = None if args.no_cache else args.cache_dir
    if args.evaluate is not None or args.predict is not None:
        return run_saved_model(args, cache_dir=cache_dir, progress=progress)
    if args.resume is not None:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file() or not (run_dir / "split.csv").is_file():
            raise ValueError(f"{run_dir} is not a training run folder (no config.json and split.csv)")
        config = dataclasses.replace(TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())),
                                     split=str(run_dir / "split.csv"))
        if config.distribute == "multiworker":
            raise ValueError("--resume of a multi-worker run is not supported: every worker would need the run's "
                             "last.keras; start a new run")
        distribution = start_distribution(config)
        log.info("resuming run folder: %s", run_dir)
    else:
        preset = choose_preset(args.preset)
        config = config_from_args(args, preset)
        distribution = start_distribution(config)  # before the run folder: a bad combination leaves none
        if not distribution.is_chief:
            return run_as_worker(config, distribution, cache_dir=cache_dir, progress=progress)
        run_dir = new_run_dir(args.out, preset)
        write_json(run_dir / "config.json", config.to_dict())
        log.info("run folder: %s", run_dir)
    records, split = load_data(config, cache_dir=cache_dir, progress=progress)
    if args.resume is None:
        dsb.save_csv(split, run_dir / "split.csv")
        write_json(run_dir / "clusters.json", dsb.fit_cluster_model(dsb.image_statistics(records), split))
    # Only the tiles and the test images are needed from here on: the other decoded images go before
    # training starts (images loaded from the cache are views of one array, hence the copies).
    test_records = [dataclasses.replace(record, image=record.image.copy())
                    for record in subset_records(records, split, "test")]
    data = prepare_training_data(records, split, config)
    del records
    with distribution.scope():
        checkpoint = train(config, run_dir, data, progress=progress, resume=args.resume is not None)
    del data
    clusters = dict(zip(split["image_id"], split["cluster"]))
    evaluate(checkpoint, config, run_dir, test_records, clusters, progress=progress)
    return run_dir


def saved_config(model_path: Path, args: argparse.Namespace) -> TrainConfig:
    """The config of the run a model comes from (if it sits in one), with post-processing overrides."""
    saved = model_path.parent / "config.json"
    if saved.exists():
        config = TrainConfig.from_dict(json.loads(saved.read_text()))
        if (model_path.parent / "split.csv").exists():
            config = dataclasses.replace(config, split=str(model_path.parent / "split.csv"))
    else:
        config = config_from_args(args, args.preset or "cpu")
    overrides = {"data": str(args.data) if args.data is not None else None,
                 "split": str(args.split) if args.split is not None else None,
                 **{name: getattr(args, name) for name in ("threshold", "min_size", "contact_threshold", "tta",
                                                            "figures_per_cluster")}}
    if args.marker_height is not None:
        overrides["marker_height"] = None if args.marker_height <= 0 else args.marker_height
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def run_saved_model(args: argparse.Namespace, *, cache_dir: Path | None, progress: bool) -> Path:
    """``--evaluate`` / ``--predict``: a saved model, with its run's config and split when it has one."""
    model_path = Path(args.evaluate or args.predict)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    config = saved_config(model_path, args)
    if args.predict is not None:
        if args.input is None:
            raise ValueError("--predict needs --input FOLDER (the images to segment)")
        run_dir = new_run_dir(args.out, "predict")
        write_json(run_dir / "config.json", {**config.to_dict(), "model": str(model_path), "input": str(args.input)})
        log.info("run folder: %s", run_dir)
        predict_folder(model_path, config, Path(args.input), run_dir, progress=progress)
        return run_dir

    subset = args.subset or ("cv" if args.tune else "test")
    if args.tune and subset == "test":
        raise ValueError("--tune chooses settings and must not look at the test split; use --subset cv")
    run_dir = new_run_dir(args.out, "tune" if args.tune else "evaluate")
    write_json(run_dir / "config.json", {**config.to_dict(), "model": str(model_path), "subset": subset})
    log.info("run folder: %s", run_dir)
    source = dsb.find_dataset(config.data)
    records = dsb.load_dataset(source, cache_dir=cache_dir, progress=progress)
    stats = dsb.image_statistics(records)
    clusters = model_clusters(model_path, config, stats)
    if subset == "all":
        chosen = records
    else:
        split = dsb.load_or_make_split(stats, config.split, seed=config.seed)
        chosen = subset_records(records, split, subset)
    log.info("%s: %d images from %s", subset, len(chosen), source)
    if args.tune:
        tune(model_path, config, run_dir, chosen, progress=progress)
    else:
        evaluate(model_path, config, run_dir, chosen, clusters, progress=progress,
                 title=f"{subset} {'images' if subset == 'all' else 'split'} of {source.name}")
    return run_dir


def model_clusters(model_path: Path, config: TrainConfig, stats) -> dict:
    """Cluster of each image: from the run's split if listed there, else the nearest training cluster."""
    import pandas as pd

    clusters = {}
    split_path = Path(config.split)
    if split_path.exists():
        split = pd.read_csv(split_path, dtype={"image_id": str})
        clusters = dict(zip(split["image_id"], split["cluster"].astype(int)))
    unknown = stats.loc[[image_id for image_id in stats.index if image_id not in clusters]]
    model_file = model_path.parent / "clusters.json"
    if len(unknown) and model_file.exists():
        assigned = dsb.assign_clusters(unknown, json.loads(model_file.read_text()))
        clusters.update(zip(unknown.index, (int(c) for c in assigned)))
    return clusters


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run_dir = run(args)
    except (ValueError, OSError) as error:  # bad input, missing or unwritable files: one line, no traceback
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if run_dir is None:
        print("This worker's part of the training is done; the chief wrote the run folder.")
        return 0
    outputs = sorted(path.name + ("/" if path.is_dir() else "") for path in run_dir.iterdir())
    print(f"Outputs are in {run_dir}/: {', '.join(outputs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

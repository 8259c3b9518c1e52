"""Training the U-Net: tiles in, best model out, with checkpoints, logs, a time budget and resume.

    tiles = prepare_training_data(records, split, config)   # train and CV tiles only, never test
    checkpoint = train(config, run_dir, tiles)               # run_dir/model.keras, best by CV Dice

Batches come from ``TileBatches``, a ``keras.utils.PyDataset`` whose batch ``i`` of epoch ``e``
depends only on ``(seed, e, i)``; ``model.fit`` runs with Keras callbacks for the CSV history,
TensorBoard, NaN, the time budget and the checkpoints that ``resume`` continues from.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

import unet
from nucleunet import augment, hardware, prediction, runs, stratify, tiling
from nucleunet.config import TrainConfig
from nucleunet.errors import UserError

log = logging.getLogger("training")


# --------------------------------------------------------------------------------------------
# Presets and the model
# --------------------------------------------------------------------------------------------

def learning_rate_schedule(config: TrainConfig):
    """Adam's learning rate: a number, or a schedule of the step (saved with the model, so resumable)."""
    if config.lr_schedule == "cosine":
        total = config.epochs * config.steps_per_epoch
        if config.warmup_steps:  # from 0 up to the learning rate, then the cosine over the remaining steps
            return keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps=max(total - config.warmup_steps, 1), warmup_target=config.learning_rate,
                warmup_steps=config.warmup_steps)
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    return config.learning_rate


def build_model(config: TrainConfig) -> keras.Model:
    """The U-Net of ``config``, compiled with its loss, Adam and the Dice metric, ready to ``fit``.

    Its layers compute in the current Keras dtype policy (``mixed_precision``).
    """
    model = _new_model(config) if config.init is None else _initial_model(config)
    loss = unet.bce_dice_loss if config.loss == "bce_dice" else keras.losses.BinaryCrossentropy()
    if config.contact_weight != 1.0:
        loss = unet.ContactWeightedLoss(config.contact_weight)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(config)), loss=loss,
                  metrics=[unet.DiceCoefficient()], jit_compile=effective_jit_compile(config))
    return model


def _new_model(config: TrainConfig) -> keras.Model:
    # Training crops of another size than the tiles need a model that takes any size.
    side = config.tile_size if config.sampling != "crop" or config.crop_size == config.tile_size else None
    return unet.build_unet(
        (side, side, 1), depth=config.depth, base_filters=config.base_filters,
        batch_norm=config.batch_norm, dropout=config.dropout, output_channels=2 if config.contacts else 1,
        # Per-replica statistics would differ between workers and come from as little as one tile.
        synchronized_batch_norm=config.distribute != "none",
    )


def _initial_model(config: TrainConfig) -> keras.Model:
    """The network and weights of ``config.init``, taking any size, computing in the current dtype policy."""
    model = unet.portable(unet.load_model(config.init), dtype=keras.mixed_precision.global_policy().name)
    channels = model.output_shape[-1]
    if channels != (2 if config.contacts else 1):
        raise UserError(f"{config.init} has {channels} output channel(s), but the run's contacts={config.contacts} "
                        f"needs {2 if config.contacts else 1}")
    return model


def effective_jit_compile(config: TrainConfig):
    """``model.compile``'s ``jit_compile``: XLA where the config asks for it on TensorFlow without
    ``tf.distribute`` (whose CPU collectives XLA cannot compile); JAX always compiles; torch stays eager."""
    if keras.backend.backend() != "tensorflow":
        return "auto"
    jit_compile = hardware.choose_jit_compile(config.jit_compile)
    if jit_compile and config.distribute != "none":
        log.info("XLA (jit_compile) is off under --distribute %s", config.distribute)
        return False
    return jit_compile


# --------------------------------------------------------------------------------------------
# Tiles and batches
# --------------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """What training lets the model see of a split: its train and CV images, never a test image.

    Tiles: images float16 in [0, 1], targets uint8 (bit 0 nucleus, bit 1 contact), both of shape
    (N, tile, tile); ``*_ids`` holds the image id of every tile. With ``sampling='crop'`` the train
    tiles are empty and ``whole`` holds every training image instead, as (image id, image float16
    (H, W), labels uint16 or int32 (H, W)), for ``CropBatches``. CV is always validated on its tiles.
    """

    train_images: np.ndarray
    train_masks: np.ndarray
    train_ids: np.ndarray
    cv_images: np.ndarray
    cv_masks: np.ndarray
    cv_ids: np.ndarray
    whole: list = field(default_factory=list)


def prepare_training_data(records: list, split: pd.DataFrame, config: TrainConfig) -> TrainingData:
    """Tiles of the train and CV images (``tiling.tiles_for_records``), or with ``sampling='crop'`` the
    whole training images and the CV tiles; test images are never used here."""
    parts, whole = {}, []
    for subset in ("train", "cv"):
        chosen = stratify.subset_records(records, split, subset)
        if subset == "train" and config.sampling == "crop":
            whole = _whole_images(chosen)
            empty = np.zeros((0, config.tile_size, config.tile_size))
            parts[subset] = (empty.astype(np.float16), empty.astype(np.uint8), np.zeros(0, dtype=object))
            continue
        images, masks, owner = tiling.tiles_for_records(chosen, config.tile_size, config.min_overlap,
                                                     contacts=config.contacts, contact_radius=config.contact_radius)
        parts[subset] = (images, masks, np.array([chosen[index].image_id for index in owner], dtype=object))
    if (len(parts["train"][0]) == 0 and not whole) or len(parts["cv"][0]) == 0:
        raise UserError("the split has no training or no CV images; the dataset is too small")
    return TrainingData(*parts["train"], *parts["cv"], whole=whole)


def _whole_images(records: list) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(image id, image float16, labels) of records, non-finite pixels handled as ``tiling.tiles_for_records`` does."""
    whole = []
    for record in records:
        image = tiling.finite_image(record)
        if image is None:
            continue
        dtype = np.uint16 if record.labels.max(initial=0) < 2**16 else np.int32
        whole.append((record.image_id, image.astype(np.float16), record.labels.astype(dtype)))
    return whole


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the first two axes: ``k`` in 0..7 (``prediction.dihedral_tiles`` of one tile)."""
    return prediction.dihedral_tiles(array[None], k)[0]


def target_channels(masks: np.ndarray, contacts: bool) -> np.ndarray:
    """Stored target tiles (uint8: bit 0 nucleus, bit 1 contact) as the model's float32 targets (N, T, T, C)."""
    masks = np.asarray(masks)
    channels = [masks & 1] + ([(masks >> 1) & 1] if contacts else [])
    return np.stack(channels, axis=-1).astype(np.float32)


class TileBatches(keras.utils.PyDataset):
    """Augmented batches drawn at random from the training tiles, ``config.steps_per_epoch`` per epoch.

    Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so runs are reproducible whatever
    the order Keras asks for batches in. ``epoch`` is set by ``SetEpoch`` before each epoch (Keras'
    own ``on_epoch_end`` calls do not count epochs exactly).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, config: TrainConfig):
        super().__init__()
        self.images, self.masks, self.config = images, masks, config
        self.epoch = 0

    def __len__(self) -> int:
        return self.config.steps_per_epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        chosen = rng.integers(0, len(self.images), self.config.batch_size)
        turns = rng.integers(0, 8, self.config.batch_size)
        x = np.stack([dihedral(self.images[i], k) for i, k in zip(chosen, turns)]).astype(np.float32)
        y = np.stack([dihedral(self.masks[i], k) for i, k in zip(chosen, turns)])
        return x[..., None], target_channels(y, self.config.contacts)


class CropBatches(keras.utils.PyDataset):
    """Batches of crops cut from whole training images at random places, scales, turns and intensities.

    An image is drawn with a chance proportional to its area (as drawing tiles uniformly does), then a
    ``config.crop_size`` crop of it zoomed by a log-uniform ``config.scale_range`` factor, turned by one
    of the 8 flips/rotations and changed in intensity (``augment``); the targets are made from the
    crop's labels after zooming. Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, as for
    ``TileBatches``.
    """

    def __init__(self, whole: list, config: TrainConfig):
        super().__init__()
        if not whole:
            raise ValueError("CropBatches needs at least one training image")
        self.images = [image for _, image, _ in whole]
        self.labels = [labels for _, _, labels in whole]
        areas = np.array([image.size for image in self.images], np.float64)
        self.chances = areas / areas.sum()
        self.config, self.augmentation = config, config.augmentation
        self.log_scales = np.log(self.augmentation.scale)
        self.epoch = 0

    def __len__(self) -> int:
        return self.config.steps_per_epoch

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        size, images, targets = self.config.crop_size, [], []
        for _ in range(self.config.batch_size):
            which = rng.choice(len(self.images), p=self.chances)
            scale = float(np.exp(rng.uniform(*self.log_scales)))
            crop, labels = augment.random_crop(self.images[which], self.labels[which], size, scale, rng)
            turn = int(rng.integers(0, 8))
            crop, labels = dihedral(crop, turn), dihedral(labels, turn)
            images.append(augment.change_intensities(crop, self.augmentation, rng))
            targets.append(augment.crop_targets(np.ascontiguousarray(labels), self.config.contacts,
                                                   self.config.contact_radius))
        return np.stack(images)[..., None], np.stack(targets)


def training_batches(data: TrainingData, config: TrainConfig) -> TileBatches | CropBatches:
    """The training feed that ``config.sampling`` asks for."""
    if config.sampling == "crop":
        return CropBatches(data.whole, config)
    return TileBatches(data.train_images, data.train_masks, config)


class ValidationBatches(keras.utils.PyDataset):
    """The CV tiles in order, cast to float32 one batch at a time.

    The stored tiles stay compact (float16 images, uint8 targets); a float32 copy of the whole CV
    set (and the second copy a ``tf.data`` pipeline would make of it) is never built.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, batch_size: int, contacts: bool):
        super().__init__()
        self.images, self.masks, self.batch_size, self.contacts = images, masks, batch_size, contacts

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        chosen = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.images[chosen, ..., None].astype(np.float32), target_channels(self.masks[chosen], self.contacts)


def shardable_validation(images: np.ndarray, masks: np.ndarray, batch_size: int):
    """CV tiles and batch size that the active Keras distribution can split evenly over its devices.

    JAX's ``keras.distribution.DataParallel`` cannot shard a batch whose size its device count does
    not divide, so under it the batch size is rounded up to a multiple of the device count and the
    last ``len(images) % devices`` tiles are left out of validation (logged). Without a Keras
    distribution (``tf.distribute`` splits uneven batches itself) everything is returned unchanged.
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return images, masks, batch_size
    mesh = distribution.device_mesh
    devices = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    kept = len(images) - len(images) % devices
    if kept < len(images):
        log.warning("validating on %d of %d CV tiles: the %d devices need equal shares", kept, len(images), devices)
    return images[:kept], masks[:kept], math.ceil(batch_size / devices) * devices


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------

class SetEpoch(keras.callbacks.Callback):
    """Tells a ``TileBatches`` or ``CropBatches`` which epoch Keras is in, before its first batch."""

    def __init__(self, sequence: TileBatches | CropBatches):
        super().__init__()
        self.sequence = sequence

    def on_epoch_begin(self, epoch, logs=None):
        self.sequence.epoch = epoch


class TimeBudget(keras.callbacks.Callback):
    """Stops training when the elapsed time plus one more validation would pass ``minutes``."""

    def __init__(self, minutes: float):
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


class Throughput(keras.callbacks.Callback):
    """Logs each epoch's training speed: steps/s and tiles/s from the end of its first step to its last.

    The first step (graph tracing, compilation) and the validation after the last are left out, so
    the figure compares setups (devices, workers, backends) on the training steps alone. The last
    epoch's figures stay in ``steps_per_second`` and ``tiles_per_second``.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.steps_per_second = self.tiles_per_second = None

    def on_epoch_begin(self, epoch, logs=None):
        self.steps, self.first_end, self.last_end = 0, None, None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.last_end = time.monotonic()
        if self.steps == 1:
            self.first_end = self.last_end

    def on_epoch_end(self, epoch, logs=None):
        if self.steps > 1 and self.last_end > self.first_end:
            self.steps_per_second = (self.steps - 1) / (self.last_end - self.first_end)
            self.tiles_per_second = self.steps_per_second * self.batch_size
            log.info("epoch %d: %.2f training steps/s = %.1f tiles/s (steps 2-%d, global batch %d)", epoch + 1,
                     self.steps_per_second, self.tiles_per_second, self.steps, self.batch_size)


STATE = "state.json"
CHECKPOINTS = "checkpoints"


def new_state(run_dir: Path) -> None:
    """Mark ``run_dir`` as an unfinished training run, before its first epoch: what ``resume`` accepts."""
    runs.write_json(Path(run_dir) / STATE, {"finished": False, "epoch": -1, "last": None, "best": None,
                                            "best_val_dice": None, "training_seconds": 0.0,
                                            "resumed_after_epochs": []})


def read_state(run_dir: Path) -> dict | None:
    """The run's ``state.json``: the last complete epoch and the checkpoints that hold it; None without one."""
    path = Path(run_dir) / STATE
    return runs.read_json(path) if path.is_file() else None


def finish_state(run_dir: Path) -> None:
    """Mark the training run in ``run_dir`` finished: ``resume`` refuses it from then on."""
    runs.write_json(Path(run_dir) / STATE, {**read_state(run_dir), "finished": True})


def settle_checkpoints(run_dir: Path, state: dict, *, copy_best: bool = True) -> None:
    """Make the files agree with ``state``: the checkpoints it does not name go (an older epoch's, or one whose epoch
    was never recorded because the run was killed), and with ``copy_best`` ``model.keras`` becomes a copy of the best
    one (after a kill, it may be a copy of an older best)."""
    run_dir = Path(run_dir)
    kept = {state.get("last"), state.get("best")}
    for path in (run_dir / CHECKPOINTS).glob("*.keras"):
        if path.name not in kept:
            path.unlink()
    if copy_best and state.get("best"):
        with runs.atomic_path(run_dir / "model.keras") as temporary:
            shutil.copyfile(run_dir / CHECKPOINTS / state["best"], temporary)


class Checkpoints(keras.callbacks.Callback):
    """After every epoch, the model as ``checkpoints/epoch-NNNN.keras``; then ``state.json``, which names that last
    complete epoch and its checkpoint and the best one by ``val_dice``; then ``model.keras``, a copy of the best.

    ``state.json`` is the one record of where training is: a run killed before it is written is resumed from the
    epoch before (``settle_checkpoints`` removes the unnamed checkpoint and puts ``model.keras`` right). Every
    file is written atomically (``runs.atomic_path``). Epochs whose loss is NaN save nothing.
    """

    def __init__(self, run_dir: Path, state: dict, resumed_after_epochs: list[int] = ()):
        super().__init__()
        self.run_dir = Path(run_dir)
        best = state.get("best_val_dice")
        self.best = -np.inf if best is None else float(best)
        self.best_file, self.elapsed_seconds = state.get("best"), state.get("training_seconds", 0.0)
        self.resumed_after_epochs = list(resumed_after_epochs)  # in state.json: a killed resume stays on record

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not np.isfinite(logs.get("loss", np.nan)):
            return
        last = self.run_dir / CHECKPOINTS / f"epoch-{epoch + 1:04d}.keras"
        unet.save_model(self.model, last)
        value = logs.get("val_dice")
        improved = value is not None and np.isfinite(value) and value > self.best
        if improved:
            self.best, self.best_file = float(value), last.name
        state = {"finished": False, "epoch": epoch, "last": last.name, "best": self.best_file,
                 "best_val_dice": self.best if np.isfinite(self.best) else None,
                 "training_seconds": self.elapsed_seconds + time.monotonic() - self.started,
                 "resumed_after_epochs": self.resumed_after_epochs}
        runs.write_json(self.run_dir / STATE, state)  # the epoch is complete from here on
        settle_checkpoints(self.run_dir, state, copy_best=improved)


# --------------------------------------------------------------------------------------------
# Fit and resume
# --------------------------------------------------------------------------------------------

def train(config: TrainConfig, run_dir: Path, tiles: TrainingData, *, progress: bool, resume: bool = False,
          replicas: int = 1) -> Path:
    """Fit the U-Net on the training data, validating on the CV tiles; returns the path of the best checkpoint.

    With ``resume``, training continues from the checkpoint that ``state.json`` names (the end of the last finished
    epoch), with the time budget that was left. Writes ``history.csv``,
    ``training.json`` (minutes trained, why training stopped, the last epoch's tiles/s, the
    ``replicas`` of a distributed run, the CV tiles validated on, the precision and XLA setting used,
    the epochs after which it was resumed; for a fine-tuning run, ``starting_model``: the CV loss and Dice
    of the model it started from) and, on TensorFlow, TensorBoard ``logs/``. The model
    computes in ``config.precision`` (``hardware.choose_precision``) while it trains; the Keras dtype policy is
    restored afterwards.

    Raises
    ------
    UserError
        The loss became NaN before any model was saved, or no CV Dice was ever computed.
    """
    precision = hardware.choose_precision(config.precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _fit(config, Path(run_dir), tiles, progress=progress, resume=resume, replicas=replicas,
                    precision=precision)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _fit(config: TrainConfig, run_dir: Path, tiles: TrainingData, *, progress: bool, resume: bool, replicas: int,
         precision: str) -> Path:
    keras.utils.set_random_seed(config.seed)
    if config.sampling == "crop":
        log.info("training crops %dx%d from %d whole images; CV tiles %dx%d: %d", config.crop_size,
                 config.crop_size, len(tiles.whole), config.tile_size, config.tile_size, len(tiles.cv_images))
    else:
        log.info("tiles %dx%d: train %d, cv %d", config.tile_size, config.tile_size,
                 len(tiles.train_images), len(tiles.cv_images))

    state = (read_state(run_dir) if resume else None) or {"epoch": -1, "training_seconds": 0.0}
    if resume and state.get("last"):
        runs.remove_partial_files(run_dir)  # what the killed run was writing
        settle_checkpoints(run_dir, state)
        model = unet.load_model(run_dir / CHECKPOINTS / state["last"], compile=True)
        truncate_history(run_dir / "history.csv", state["epoch"])
        log.info("resuming after epoch %d (best CV Dice so far %.4f, %.1f minutes trained)",
                 state["epoch"] + 1, state["best_val_dice"] or np.nan, state["training_seconds"] / 60)
    else:
        if resume:
            log.info("no finished epoch to resume from: starting this run's training from the beginning")
        model = build_model(config)
    log.info("U-Net: depth %d, %d..%d filters, %s parameters", config.depth, config.base_filters,
             config.base_filters * 2 ** (config.depth - 1), f"{model.count_params():,}")

    initial_epoch = state["epoch"] + 1
    resumed = state.get("resumed_after_epochs")
    if resumed is None and initial_epoch > 0 and (run_dir / "training.json").exists():  # a state.json without it
        resumed = runs.read_json(run_dir / "training.json").get("resumed_after_epochs", [])
    resumed = (resumed or []) + ([initial_epoch] if initial_epoch > 0 else [])
    sequence = training_batches(tiles, config)
    throughput, budget = Throughput(config.batch_size), None
    if config.minutes is not None:
        budget = TimeBudget(max(config.minutes - state["training_seconds"] / 60, 1e-3))
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=initial_epoch > 0),
        Checkpoints(run_dir, state, resumed),
        *([keras.callbacks.TensorBoard(log_dir=run_dir / "logs")] if unet.tensorflow_available() else []),
        *([budget] if budget is not None else []),
        SetEpoch(sequence),
        throughput,
    ]
    cv_images, cv_masks, validation_batch_size = shardable_validation(tiles.cv_images, tiles.cv_masks,
                                                                      max(config.batch_size, 8))
    validation = ValidationBatches(cv_images, cv_masks, validation_batch_size, config.contacts)
    starting = {}
    if initial_epoch > 0 and (run_dir / "training.json").exists():
        starting = runs.read_json(run_dir / "training.json").get("starting_model", {})
    elif config.init:  # what fine-tuning improves on: the model it starts from, scored as each epoch is
        scores = model.evaluate(validation, verbose=0, return_dict=True)
        starting = {"val_loss": float(scores["loss"]), "val_dice": float(scores.get("dice", np.nan))}
        log.info("the model it starts from, on the CV tiles: loss %.4f, Dice %.4f", starting["val_loss"],
                 starting["val_dice"])
    started = time.monotonic()
    history = model.fit(
        sequence,
        validation_data=validation,
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
    runs.write_json(run_dir / "training.json", {
        "minutes": round(minutes, 2), "stopped_by_time_budget": bool(budget and budget.stopped),
        "stopped_by_nan_loss": diverged, "tiles_per_second": throughput.tiles_per_second, "replicas": replicas,
        "validation_tiles": len(cv_images), "precision": precision, "jit_compile": model.jit_compile,
        "resumed_after_epochs": resumed,
        **({"starting_model": starting} if starting else {})})
    checkpoint = run_dir / "model.keras"
    if diverged:
        epoch = initial_epoch + len(losses) - 1
        if not checkpoint.exists():
            raise UserError(f"training stopped: the loss became NaN in epoch {epoch + 1}, before any model was "
                            f"saved; try a lower --learning-rate")
        log.error("training stopped: the loss became NaN in epoch %d; evaluating the best model saved before it "
                  "(CV Dice %.4f)", epoch + 1, read_state(run_dir)["best_val_dice"])
    if not checkpoint.exists():
        raise UserError("no model was saved: the CV Dice was never computed")
    return checkpoint


def truncate_history(path: Path, last_epoch: int) -> None:
    """Drop history rows after ``last_epoch``: an epoch logged but not saved before a kill is redone."""
    if path.exists() and path.stat().st_size:
        table = pd.read_csv(path)
        runs.write_csv(table[table["epoch"] <= last_epoch], path)

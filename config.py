"""The configuration of a training run: one frozen dataclass, the presets, saved as ``config.json``.

Nothing here imports Keras, so the command line can check its options before any backend starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import runs
import segment
from dsb import DEFAULT_SPLIT_PATH
from errors import UserError
from tiling import MIN_OVERLAP, TILE_SIZE

LOSSES = ("bce", "bce_dice")
LR_SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("tile", "image")
DISTRIBUTE_MODES = ("none", "mirrored", "multiworker")

_POSTPROCESSING = segment.Postprocessing()  # the defaults, chosen on CV (see its docstring)


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
        Compile the training step with XLA (TensorFlow backend).
    contacts : bool
        A second output channel learns where nuclei touch (``tiling.contact_map``); post-processing then
        seeds one nucleus per contact-free part of the foreground (see ``segment.probability_to_labels``).
    tile_size, min_overlap : int
        Tiles cut from the images for training and for full-image prediction.
    threshold, min_size, marker_height, contact_threshold, tta
        The post-processing this run starts with (``segment.Postprocessing``); ``tune`` may choose others.
    figures_per_cluster : int
        Test images drawn per cluster in the figures.
    distribute : str
        'none', 'mirrored' (the GPUs of one machine: ``tf.distribute.MirroredStrategy``, or
        ``keras.distribution.DataParallel`` on JAX) or 'multiworker' (machines listed in ``TF_CONFIG``:
        ``tf.distribute.MultiWorkerMirroredStrategy``). ``batch_size`` is the global batch.
    """

    preset: str
    data: str | None = None
    split: str = str(DEFAULT_SPLIT_PATH)
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
    tile_size: int = TILE_SIZE
    min_overlap: int = MIN_OVERLAP
    threshold: float = _POSTPROCESSING.threshold
    min_size: int = _POSTPROCESSING.min_size
    marker_height: float | None = _POSTPROCESSING.marker_height
    contact_threshold: float = _POSTPROCESSING.contact_threshold
    tta: bool = _POSTPROCESSING.tta
    figures_per_cluster: int = 2
    distribute: str = "none"

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "batch_size", "depth", "base_filters", "tile_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.minutes is not None and not self.minutes > 0:
            raise UserError(f"minutes must be positive, got {self.minutes}")
        for name, allowed in (("loss", LOSSES), ("lr_schedule", LR_SCHEDULES), ("sampling", SAMPLINGS),
                              ("distribute", DISTRIBUTE_MODES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.min_overlap < self.tile_size:
            raise UserError(f"min_overlap must be in [0, tile_size), got {self.min_overlap}")
        if self.tile_size % 2 ** (self.depth - 1):
            raise UserError(f"tile_size {self.tile_size} must be divisible by 2**(depth-1) = {2 ** (self.depth - 1)}")
        if self.figures_per_cluster < 0:
            raise UserError(f"figures_per_cluster must be non-negative, got {self.figures_per_cluster}")
        segment.Postprocessing.from_dict(self.to_dict())  # checks the post-processing fields
        if self.distribute == "multiworker" and self.minutes is not None:
            # Each worker would read its own clock and stop at another step, leaving the others waiting.
            raise UserError("minutes (a time budget) cannot be used with distribute='multiworker': the workers "
                            "would stop at different steps; pass --minutes 0 and set --epochs instead")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The preset's values, then ``overrides`` (None values are ignored)."""
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}: choose from {', '.join(sorted(PRESETS))}")
        values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_dict({**values, "preset": preset})

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (e.g. a loaded ``config.json``); unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a run's ``config.json``."""
        return cls.from_dict(runs.read_json(path))

    def save(self, path: str | os.PathLike) -> None:
        runs.write_json(path, self.to_dict())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def postprocessing(self) -> segment.Postprocessing:
        """The post-processing this run starts with."""
        return segment.Postprocessing.from_dict(self.to_dict())


PRESETS: dict[str, dict] = {
    # The reference write-up: a 64..1024 U-Net, BCE, batch 20, 3 x 3500 steps. A GPU job.
    "seed": dict(epochs=3, steps_per_epoch=3500, batch_size=20, learning_rate=1e-4,
                 depth=5, base_filters=64, batch_norm=False, loss="bce"),
    # Sized for about 10-14 minutes of training on 2 CPU cores: 5 epochs of 60 steps with XLA, the learning rate
    # decaying to 0 over them (the time budget only stops a slower machine early). The contact channel splits
    # touching nuclei; the two thresholds and test-time augmentation were chosen on the CV split (docs/results.md).
    "cpu": dict(epochs=5, steps_per_epoch=60, batch_size=8, learning_rate=1e-3, lr_schedule="cosine", minutes=14.0,
                jit_compile=True, depth=5, base_filters=16, batch_norm=True, loss="bce_dice", contacts=True,
                threshold=0.6, contact_threshold=0.2, tta=True),
    # Seconds: checks that everything runs end to end; its model is not meant to be good.
    "smoke": dict(epochs=1, steps_per_epoch=2, batch_size=2, learning_rate=1e-3, lr_schedule="cosine",
                  depth=3, base_filters=4, batch_norm=True, loss="bce_dice", contacts=True, figures_per_cluster=1),
}

"""The configuration of a training run: one frozen dataclass, the presets, saved as ``config.json``.

A leaf: nothing here imports Keras or segments, so the command line can check its options before any backend
starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from nucleunet import augment, runs
from nucleunet.errors import UserError
from nucleunet.imaging import DEFAULT_PERCENTILES
from nucleunet.tiling import CONTACT_RADIUS, MIN_OVERLAP, TILE_SIZE

log = logging.getLogger("nucleunet.config")

LOSSES = ("bce", "bce_dice")
LR_SCHEDULES = ("constant", "cosine")
SAMPLINGS = ("tile", "crop")
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
JIT_CHOICES = (True, False, "auto")
RANGE_FIELDS = ("scale_range", "gamma_range", "contrast_range", "normalization")  # pairs, stored as JSON lists
DISTRIBUTE_MODES = ("none", "mirrored", "multiworker")
# Where a training run keeps its split unless told otherwise, relative to the folder it runs in.
DEFAULT_SPLIT = "datasets/split.csv"
# Keys that earlier versions wrote into config.json and that their decision rules rejected (docs/results.md): a saved
# config that has them still loads. Its value must be one that meant "off".
REMOVED_KEYS = {"min_size_relative": None, "colour_variants": 0, "cores": False, "cytoplasm": 0.0, "touch_crops": 0.0,
                "acquisition": 0.0, "distance": False, "texture": 0.0}


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
    contact_weight : float
        With ``loss='bce_dice'`` and ``contacts``: the cross-entropy of the pixels where nuclei touch (the contact
        target) counts this many times (``unet.ContactWeightedLoss``); 1: as every other pixel.
    lr_schedule : str
        'constant' (the reference) or 'cosine': the learning rate decays from ``learning_rate`` to 0 over
        ``epochs * steps_per_epoch`` steps (a function of the step, not of the clock, so runs reproduce).
    sampling : str
        How training examples are drawn: 'tile' (uniformly over the overlapping tiles of the training
        images, so large images weigh more) or 'crop' (an image with a chance proportional to its area,
        then a ``crop_size`` crop at a random place, scale and intensity: ``augment.py``).
    crop_size : int
        Side of the training crops with ``sampling='crop'`` (the U-Net is fully convolutional: it predicts
        ``tile_size`` tiles all the same).
    scale_range, gamma_range, contrast_range, noise, blur
        With ``sampling='crop'``: how much the crops vary (``augment.Augmentation``).
    warmup_steps : int
        Steps over which the learning rate rises linearly from 0 to ``learning_rate`` (cosine schedule only).
    precision : str
        'float32', 'mixed_bfloat16' (compute in bfloat16, weights in float32; fast only where the CPU has
        bfloat16 instructions or on a GPU), or 'auto' (mixed bfloat16 on CPUs with AVX512_BF16 or AMX,
        else float32; ``training.json`` records the choice).
    jit_compile : bool or 'auto'
        Compile the training step with XLA (TensorFlow backend); 'auto' decides by the CPU as measured
        on this project's machines (``hardware.choose_jit_compile``; recorded in ``training.json``).
    contacts : bool
        A second output channel learns where nuclei touch (``tiling.contact_map``); post-processing then
        seeds one nucleus per contact-free part of the foreground (see ``postprocessing.probability_to_labels``).
    contact_radius : int
        The contact target: pixels within this many pixels (chessboard distance) of two nuclei.
    tile_size, min_overlap : int
        Tiles cut from the images for training and for full-image prediction.
    normalization : (float, float)
        The percentiles of each image's intensities stretched to 0 and 1 (``imaging.preprocess``; 0 is
        the minimum), for training and for every image the model predicts.
    threshold, min_size, marker_height, contact_threshold, tta
        The post-processing this run starts with (``postprocessing.Postprocessing``; its other fields take their
        defaults); ``tune`` may choose others.
    figures_per_cluster : int
        Test images drawn per cluster in the figures.
    distribute : str
        'none', 'mirrored' (the GPUs of one machine: ``tf.distribute.MirroredStrategy``, or
        ``keras.distribution.DataParallel`` on JAX) or 'multiworker' (machines listed in ``TF_CONFIG``:
        ``tf.distribute.MultiWorkerMirroredStrategy``). ``batch_size`` is the global batch.
    init : str or None
        A saved model to start from (fine-tuning): its network and weights are trained further, and the
        architecture fields above should be its own (``ARCHITECTURE``).
    """

    preset: str
    data: str | None = None
    split: str = DEFAULT_SPLIT
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
    contact_weight: float = 1.0
    lr_schedule: str = "constant"
    sampling: str = "tile"
    crop_size: int = TILE_SIZE
    scale_range: tuple[float, float] = (1.0, 1.0)
    gamma_range: tuple[float, float] = (1.0, 1.0)
    contrast_range: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    blur: float = 0.0
    warmup_steps: int = 0
    precision: str = "float32"
    jit_compile: bool | str = False
    contacts: bool = False
    contact_radius: int = CONTACT_RADIUS
    tile_size: int = TILE_SIZE
    min_overlap: int = MIN_OVERLAP
    normalization: tuple[float, float] = DEFAULT_PERCENTILES
    threshold: float = 0.5  # the post-processing's defaults (postprocessing.Postprocessing)
    min_size: int = 30
    marker_height: float | None = None
    contact_threshold: float = 0.2
    tta: bool = False
    figures_per_cluster: int = 2
    distribute: str = "none"
    init: str | None = None

    def __post_init__(self):
        for name in RANGE_FIELDS:  # JSON gives lists; the frozen dataclass compares tuples
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        for name in ("epochs", "steps_per_epoch", "batch_size", "depth", "base_filters", "tile_size", "crop_size",
                     "contact_radius"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.minutes is not None and not self.minutes > 0:
            raise UserError(f"minutes must be positive, got {self.minutes}")
        for name, allowed in (("loss", LOSSES), ("lr_schedule", LR_SCHEDULES), ("sampling", SAMPLINGS),
                              ("distribute", DISTRIBUTE_MODES), ("precision", PRECISIONS),
                              ("jit_compile", JIT_CHOICES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.min_overlap < self.tile_size:
            raise UserError(f"min_overlap must be in [0, tile_size), got {self.min_overlap}")
        for name in ("tile_size", "crop_size"):
            if getattr(self, name) % 2 ** (self.depth - 1):
                raise UserError(f"{name} {getattr(self, name)} must be divisible by 2**(depth-1) = "
                                f"{2 ** (self.depth - 1)}")
        low, high = self.normalization
        if not 0 <= low < high <= 100:
            raise UserError(f"normalization must be two percentiles 0 <= low < high <= 100, got {self.normalization}")
        if self.warmup_steps < 0:
            raise UserError(f"warmup_steps must be non-negative, got {self.warmup_steps}")
        if not self.contact_weight >= 1.0:
            raise UserError(f"contact_weight must be at least 1, got {self.contact_weight}")
        if self.contact_weight != 1.0 and not (self.contacts and self.loss == "bce_dice"):
            raise UserError("contact_weight weighs the contact channel's pixels: it needs contacts and loss='bce_dice'")
        self.augmentation  # noqa: B018 - checks the ranges (augment.Augmentation raises ValueError)
        if self.figures_per_cluster < 0:
            raise UserError(f"figures_per_cluster must be non-negative, got {self.figures_per_cluster}")
        for name in ("threshold", "contact_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_size < 0:
            raise UserError(f"min_size must be non-negative, got {self.min_size}")
        if self.marker_height is not None and not self.marker_height > 0:
            raise UserError(f"marker_height must be positive or None, got {self.marker_height}")
        if self.distribute == "multiworker" and self.minutes is not None:
            # Each worker would read its own clock and stop at another step, leaving the others waiting.
            raise UserError("minutes (a time budget) cannot be used with distribute='multiworker': the workers "
                            "would stop at different steps; pass --minutes 0 and set --epochs instead")

    @classmethod
    def from_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The preset's values, then ``overrides`` (None values are ignored)."""
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}: choose from {', '.join(sorted(PRESETS))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        values = without_orphan_contact_weight({**PRESETS[preset], **given}, given)
        length = values.pop("length", None)  # by precision: hardware.for_this_machine chooses; here the float32 one
        if length is not None and "epochs" not in overrides:
            values["epochs"], values["steps_per_epoch"] = length["float32"]
        return cls.from_dict({**values, "preset": preset})

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "the configuration") -> TrainConfig:
        """Build from a dict (e.g. a loaded ``config.json``); unknown keys are an error, but for the removed keys
        of ``REMOVED_KEYS`` (ignored; with one warning that names ``source`` where one was not off)."""
        changed = sorted(key for key, off in REMOVED_KEYS.items() if key in values and values[key] != off)
        if changed:
            log.warning("%s: ignoring %s, removed from this version (docs/results.md says why)", source,
                        ", ".join(changed))
        values = {key: value for key, value in values.items() if key not in REMOVED_KEYS}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a run's ``config.json``."""
        return cls.from_dict(runs.read_json(path), source=str(path))

    def save(self, path: str | os.PathLike) -> None:
        runs.write_json(path, self.to_dict())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def augmentation(self) -> augment.Augmentation:
        """How the training crops vary (with ``sampling='crop'``)."""
        try:
            return augment.Augmentation(scale=self.scale_range, gamma=self.gamma_range, contrast=self.contrast_range,
                                        noise=self.noise, blur=self.blur)
        except ValueError as error:
            raise UserError(str(error)) from None


# The formats ``unet.export_model`` writes besides .keras: our name -> Keras' model.export format.
EXPORT_FORMATS = {"savedmodel": "tf_saved_model"}

# The post-processing fields a run starts with (postprocessing.Postprocessing's of the same names).
POSTPROCESSING_FIELDS = ("threshold", "min_size", "marker_height", "contact_threshold", "tta")

# The fields that describe the network and what it sees: a fine-tuning run takes them from the model it starts from.
def without_orphan_contact_weight(values: dict, given: dict) -> dict:
    """A preset's ``values`` merged with the options ``given``, without the preset's ``contact_weight`` where the
    options switched off what it weighs (the contact channel, or the BCE + Dice loss) and did not give a weight of
    their own: ``train --preset cpu --no-contacts`` trains without contacts instead of refusing. A weight given with
    them is kept, and refused by ``TrainConfig``."""
    if "contact_weight" in given or (values.get("contacts") and values.get("loss") == "bce_dice"):
        return values
    return {key: value for key, value in values.items() if key != "contact_weight"}


ARCHITECTURE = ("depth", "base_filters", "batch_norm", "dropout", "contacts", "contact_radius", "tile_size",
                "min_overlap", "normalization", "loss", "contact_weight", "threshold", "min_size", "marker_height",
                "contact_threshold", "tta")

PRESETS: dict[str, dict] = {
    # The reference write-up: a 64..1024 U-Net, BCE, batch 20, 3 x 3500 steps. A GPU job.
    "seed": dict(epochs=3, steps_per_epoch=3500, batch_size=20, learning_rate=1e-4,
                 depth=5, base_filters=64, batch_norm=False, loss="bce"),
    # At most 14 minutes of training on 2 CPU cores: random crops at scales 0.5-2x, gamma 0.5-2, contrast 0.6-1.4,
    # blur and noise (recipe C of docs/results.md, chosen on the CV split's robustness table), the learning rate
    # decaying to 0 over the run. Its length follows the precision this machine computes fast: 8 x 100 steps in
    # mixed bfloat16 (CPUs with AVX512_BF16 or AMX), 6 x 60 in float32; the time budget only stops a slower machine
    # early. The contact channel splits touching nuclei; the thresholds are the best mean CV mAP of three seeds'
    # `tune` (docs/results/cpu-preset), with test-time augmentation. The contact pixels' cross-entropy counts 5 times
    # (contact_weight, since 2026-12-06: +0.016 mAP on kinds of images never seen in training, mean of two seeds of
    # the leave-one-cluster-out measure; docs/results.md, "Recipes tried on it").
    "cpu": dict(epochs=6, steps_per_epoch=60, length={"mixed_bfloat16": (8, 100), "float32": (6, 60)}, batch_size=8,
                learning_rate=1e-3, lr_schedule="cosine", minutes=14.0, precision="auto", jit_compile="auto",
                depth=5, base_filters=16, batch_norm=True, loss="bce_dice", contacts=True, sampling="crop",
                scale_range=(0.5, 2.0), gamma_range=(0.5, 2.0), contrast_range=(0.6, 1.4), noise=0.1, blur=2.0,
                contact_weight=5.0, threshold=0.5, contact_threshold=0.5, tta=True),
    # The ready model in models/unet_dsb2018: the cpu preset's network trained 4000 steps (about an hour on 2 CPU cores
    # with bfloat16) on random crops at scales 0.5-2x, gamma 0.5-2, contrast 0.6-1.4, blur and noise, so that it
    # meets nuclei of other sizes and intensities than the training images'. These ranges were chosen on the CV
    # split's robustness table (docs/results.md); its post-processing is tuned on CV after training. Contact weight
    # 5 as the cpu preset's since 2026-12-06 (the shipped model was trained before, with 1; a model trained with 5
    # scored 0.003 lower on CV and was not shipped: docs/results.md, "The ready preset trained with it").
    "ready": dict(epochs=40, steps_per_epoch=100, batch_size=8, learning_rate=1e-3, lr_schedule="cosine", minutes=None,
                  precision="auto", jit_compile="auto", depth=5, base_filters=16, batch_norm=True, loss="bce_dice",
                  contacts=True, sampling="crop", scale_range=(0.5, 2.0), gamma_range=(0.5, 2.0),
                  contrast_range=(0.6, 1.4), noise=0.1, blur=2.0, contact_weight=5.0, threshold=0.6,
                  contact_threshold=0.2, tta=True),
    # Fine-tuning a model (train --init MODEL) on a few of your own annotated images: minutes, not hours. The
    # network and post-processing come from that model; random crops at many scales and intensities stretch the
    # few images.
    "finetune": dict(epochs=4, steps_per_epoch=50, batch_size=8, learning_rate=3e-4, lr_schedule="cosine",
                     warmup_steps=20, minutes=10.0, sampling="crop", scale_range=(0.7, 1.4), gamma_range=(0.7, 1.4),
                     contrast_range=(0.8, 1.25), noise=0.03, blur=1.0, precision="auto", jit_compile="auto"),
    # Seconds: checks that everything runs end to end; its model is not meant to be good.
    "smoke": dict(epochs=1, steps_per_epoch=2, batch_size=2, learning_rate=1e-3, lr_schedule="cosine",
                  depth=3, base_filters=4, batch_norm=True, loss="bce_dice", contacts=True, figures_per_cluster=1),
}

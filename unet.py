"""The U-Net of Ronneberger et al. (2015) for nuclei masks: build, save, load, export; its Dice metric and loss.

Backend-neutral Keras 3: everything here is ``keras.layers`` and ``keras.ops``, so the same code
runs on TensorFlow (the default), JAX and PyTorch. Only the SavedModel export needs TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers, ops

from nucleunet import runs
from nucleunet.config import EXPORT_FORMATS
from nucleunet.errors import MissingPathError, UserError


def build_unet(
    input_shape: tuple = (None, None, 1),
    *,
    depth: int = 5,
    base_filters: int = 64,
    batch_norm: bool = False,
    dropout: float = 0.0,
    output_channels: int = 1,
    name: str = "unet",
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Build a U-Net with a sigmoid output.

    Parameters
    ----------
    input_shape : (H, W, C)
        H and W may be None (any size divisible by ``2 ** (depth - 1)``).
    depth : int
        Number of resolution levels, the bottleneck included: 5 gives 4 poolings, and with
        ``base_filters=64`` the reference's 64, 128, 256, 512, 1024 filters.
    base_filters : int
        Filters of the first level; each level below doubles them.
    batch_norm : bool
        Batch normalization after every 3x3 convolution.
    dropout : float in [0, 1)
        Dropout rate at the two deepest levels (0: none).
    output_channels : int
        Sigmoid channels of the output (1: nucleus probability).
    synchronized_batch_norm : bool
        Batch statistics over the global batch of all replicas of a ``tf.distribute`` strategy, not
        each replica's share (``SynchronizedBatchNormalization``).

    Returns
    -------
    keras.Model mapping (batch, H, W, C) float32 to (batch, H, W, output_channels) in [0, 1].
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if base_filters < 1:
        raise ValueError(f"base_filters must be at least 1, got {base_filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    divisor = 2 ** (depth - 1)
    for size in input_shape[:2]:
        if size is not None and size % divisor:
            raise ValueError(f"input size {input_shape[:2]} must be divisible by {divisor} for depth {depth}")

    batch_normalization = SynchronizedBatchNormalization if synchronized_batch_norm else layers.BatchNormalization

    def conv_block(x, filters, level):
        for index in (1, 2):
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=not batch_norm,
                kernel_initializer="he_normal", name=f"{level}_conv{index}",
            )(x)
            if batch_norm:
                # Momentum 0.9, not Keras' 0.99: short CPU runs (a few hundred steps) otherwise
                # validate with moving statistics that lag far behind the weights.
                x = batch_normalization(momentum=0.9, name=f"{level}_bn{index}")(x)
            x = layers.Activation("relu", name=f"{level}_relu{index}")(x)
        return x

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, base_filters * 2**level, f"down{level}")
        if dropout and level >= depth - 2:
            x = layers.Dropout(dropout, name=f"down{level}_dropout")(x)
        if level < depth - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}_transpose")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = conv_block(x, filters, f"up{level}")
    outputs = layers.Conv2D(output_channels, 1, activation="sigmoid", name="mask", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="unet")
class SynchronizedBatchNormalization(layers.BatchNormalization):
    """Batch normalization with statistics over every replica of a ``tf.distribute`` strategy.

    Keras' ``synchronized=True`` exists on the TensorFlow backend only, and a model saved with it
    refuses to load on JAX or PyTorch. This layer is saved without the flag and sets it on
    TensorFlow only; elsewhere, and outside a strategy, it is plain batch normalization.
    """

    def __init__(self, **kwargs):
        kwargs.pop("synchronized", None)
        super().__init__(synchronized=keras.backend.backend() == "tensorflow", **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["synchronized"]
        return config


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice of each channel over the whole batch: ``(2 sum(t p) + s) / (sum(t) + sum(p) + s)``.

    Returns a vector with one value per channel (the last axis).
    """
    y_true = ops.cast(y_true, y_pred.dtype)
    axes = tuple(range(len(y_pred.shape) - 1))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    return (2.0 * intersection + smooth) / (ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) + smooth)


@keras.saving.register_keras_serializable(package="unet")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus ``1 - soft Dice`` of every channel.

    The Dice terms counter the background's majority: without them the rare contact channel of a
    contact-aware U-Net would learn to say "no contact" everywhere.

    Returns
    -------
    ndarray, shape (batch,), float32: each sample's mean BCE plus the batch's ``1 - soft Dice`` summed
    over channels. Keras averages it over the batch. Per-sample values, not their mean: under
    ``tf.distribute`` Keras divides a loss by the number of replicas only when it is not already a
    scalar, and a scalar loss would multiply the gradient by the replica count.
    """
    bce = keras.losses.binary_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred)
    per_sample_bce = ops.mean(ops.reshape(bce, (ops.shape(bce)[0], -1)), axis=1)
    return per_sample_bce + ops.sum(1.0 - soft_dice(y_true, y_pred))


@keras.saving.register_keras_serializable(package="unet")
class ContactWeightedLoss(keras.losses.Loss):
    """``bce_dice_loss`` with the cross-entropy of the pixels where nuclei touch weighted ``weight`` times.

    Those pixels are the second target channel (the contact band, ``tiling.contact_map``): the gaps between touching
    nuclei and the nuclei's edges beside them, few pixels that decide whether two nuclei come out as one. Every
    channel's cross-entropy there counts ``weight`` times (as the U-Net paper weighs the pixels between cells); the
    Dice terms are ``bce_dice_loss``'s. With ``weight`` 1 it is ``bce_dice_loss``.
    """

    def __init__(self, weight: float = 5.0, name: str = "contact_weighted_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        if y_true.shape[-1] is not None and y_true.shape[-1] < 2:
            raise ValueError("ContactWeightedLoss needs the contact channel (a contact-aware U-Net, contacts=True)")
        probability = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        bce = -(y_true * ops.log(probability) + (1.0 - y_true) * ops.log(1.0 - probability))
        weights = 1.0 + (self.weight - 1.0) * y_true[..., 1:2]
        per_sample = ops.mean(ops.reshape(weights * bce, (ops.shape(bce)[0], -1)), axis=1)
        return per_sample + ops.sum(1.0 - soft_dice(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@keras.saving.register_keras_serializable(package="unet")
class DiceCoefficient(keras.metrics.Metric):
    """Pixel Dice of the thresholded nucleus channel (the first), accumulated over every batch of an epoch.

    ``2 |T & P| / (|T| + |P|)`` over all pixels seen, so a validation score does not depend on
    how the tiles fall into batches. Both empty counts as 1.
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(ops.greater(ops.cast(y_true[..., 0], "float32"), 0.5), "float32")
        predicted = ops.cast(ops.greater(ops.cast(y_pred[..., 0], "float32"), self.threshold), "float32")
        self.intersection.assign_add(ops.sum(truth * predicted))
        self.total.assign_add(ops.sum(truth) + ops.sum(predicted))

    def result(self):
        return ops.where(ops.equal(self.total, 0.0), 1.0, 2.0 * self.intersection / ops.maximum(self.total, 1.0))

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


# --------------------------------------------------------------------------------------------
# Saving, loading, exporting
# --------------------------------------------------------------------------------------------

def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """``model.save`` under a temporary name, renamed: a kill never leaves half a model file."""
    with runs.atomic_path(path) as temporary:
        model.save(temporary)


def load_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """Load a saved U-Net (its custom layers, loss and metric are registered by this module).

    Raises
    ------
    UserError
        The file is missing, is not a Keras model, or does not map one-channel images to one
        (nuclei) or two (nuclei, contacts) probability channels.
    """
    if not Path(path).is_file():
        raise MissingPathError(f"model file not found: {path}")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a file that is not a model
        raise UserError(f"{path} is not a readable Keras model: {error}") from error
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 1 or tuple(model.output_shape)[-1] not in (1, 2):
        raise UserError(f"{path}: expected a model from (batch, H, W, 1) to (batch, H, W, 1) (nuclei) or "
                        f"(batch, H, W, 2) (nuclei, contacts), got {shape} -> {model.output_shape}")
    return model


def portable(model: keras.Model, *, dtype: str | None = "float32") -> keras.Model:
    """The same network and weights, taking images of any size (H and W None), computing in ``dtype``
    (float32: the same on every CPU and backend; None keeps each layer's own), without optimizer state.

    A model trained on fixed-size tiles predicts larger tiles with this copy (fewer tile borders,
    less overlap), and a model trained in mixed bfloat16 predicts in float32 where the CPU has no
    bfloat16 instructions.
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_shape"]
            layer["config"]["batch_shape"] = (shape[0], None, None, *shape[3:])
        elif dtype is not None and layer["config"].get("dtype") is not None:
            layer["config"]["dtype"] = dtype if layer["config"].get("name") != "mask" else "float32"
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def average_models(members: list[keras.Model], *, name: str = "average") -> keras.Model:
    """One model whose output is the mean of the ``members``' outputs (an ensemble of networks trained apart,
    e.g. with different seeds), taking images of any size.

    The members' layers are copied into one flat model (names prefixed ``member0_``, ``member1_``, ...), with
    their weights, so the result saves, loads, exports and fine-tunes as a single U-Net does. It costs the
    members' time and memory together.

    Raises
    ------
    UserError
        Fewer than two members, or members that differ in input or output channels.
    """
    if len(members) < 2:
        raise UserError(f"an average needs at least two models, got {len(members)}")
    channels = {(tuple(member.input_shape)[-1], tuple(member.output_shape)[-1]) for member in members}
    if len(channels) != 1:
        raise UserError("the models to average must map the same input channels to the same output channels, got "
                        + ", ".join(f"{inputs} -> {outputs}" for inputs, outputs in sorted(channels)))
    inputs = keras.Input(shape=(None, None, tuple(members[0].input_shape)[-1]), name="image")
    outputs = []
    for index, member in enumerate(members):
        def renamed(layer, prefix=f"member{index}_"):
            config = layer.get_config()
            config["name"] = prefix + layer.name
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(member, input_tensors=inputs, clone_function=renamed)
        copy.set_weights(member.get_weights())
        outputs.append(copy.output)
    return keras.Model(inputs, layers.Average(name="mask", dtype="float32")(outputs), name=name)




def export_model(model: keras.Model | str | os.PathLike, out: str | os.PathLike,
                 export_format: str = "savedmodel") -> Path:
    """Export a model (or a saved model's path) to the new folder ``out`` for serving.

    A TensorFlow SavedModel (TF Serving, ``tf.saved_model.load``): its ``serve`` endpoint maps
    tiles (batch, H, W, 1) float32 in [0, 1], preprocessed as ``imaging.preprocess`` does, to the
    model's probabilities (batch, H, W, C): nuclei, and contacts for a contact model. Written under a
    temporary name and renamed; an existing ``out`` is an error, never overwritten.
    """
    if export_format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {export_format!r}: choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists: an export is never overwritten")
    if not tensorflow_available():
        raise UserError("export --format savedmodel needs TensorFlow installed (a SavedModel is TensorFlow's format)")
    if not isinstance(model, keras.Model):
        model = load_model(model)
    with runs.atomic_path(out) as temporary:
        model.export(str(temporary), format=EXPORT_FORMATS[export_format], verbose=False)
    return out


def export_onnx(model: keras.Model, path: str | os.PathLike) -> Path:
    """The network as an ONNX file (float32, any image size), for ONNX Runtime (``nucleunet.models``: the faster
    engine where it is installed): tiles (batch, H, W, 1) float32 in [0, 1] to probabilities (batch, H, W, C).
    Needs TensorFlow and tf2onnx; written atomically."""
    if not tensorflow_available():
        raise UserError("an ONNX export needs TensorFlow (tf2onnx converts the TensorFlow graph)")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as error:
        raise UserError(f"an ONNX export needs tf2onnx installed ({error})") from None
    network = portable(model, dtype="float32")
    signature = (tf.TensorSpec((None, None, None, 1), tf.float32, name="tiles"),)
    with runs.atomic_path(path) as temporary:
        tf2onnx.convert.from_keras(network, input_signature=signature, opset=17, output_path=str(temporary))
    return Path(path)


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (the JAX and PyTorch backends run without it)."""
    try:
        import tensorflow  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True

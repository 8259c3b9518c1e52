"""One training run over several devices: the GPUs of one machine, or several machines.

``tf.distribute`` on TensorFlow (``MirroredStrategy``, ``MultiWorkerMirroredStrategy`` with the
cluster in ``TF_CONFIG``) and ``keras.distribution.DataParallel`` on JAX; never a home-made scheme.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from nucleunet.config import TrainConfig
from nucleunet.errors import UserError

try:
    import tensorflow as tf
except ImportError:  # the JAX and PyTorch backends run without TensorFlow; only keras.distribution is there
    tf = None

log = logging.getLogger("distribute")


@dataclass(frozen=True)
class Distribution:
    """How one training run is spread over devices.

    Attributes
    ----------
    is_chief : bool
        Whether this process writes the run folder (always, except for non-chief workers).
    scope : callable
        Returns the context in which the model is built, compiled and fitted.
    replicas : int
        Model replicas that share each global batch.
    """

    is_chief: bool
    scope: Callable[[], contextlib.AbstractContextManager]
    replicas: int = 1


NO_DISTRIBUTION = Distribution(True, contextlib.nullcontext)


def read_tf_config() -> dict:
    """The ``TF_CONFIG`` of a multi-worker run, checked: ``{"cluster": {...}, "task": {"type", "index"}}``."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserError("--distribute multiworker needs TF_CONFIG, the cluster and this worker's task, e.g. "
                        "{\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
                        "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        members = cluster[task["type"]]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"TF_CONFIG must hold a cluster and this process's task in it: {error!r} in {text}") from None
    if task["type"] not in ("chief", "worker") or not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG: task {task} is not a chief or worker of the cluster {cluster}")
    return tf_config


def is_chief_task(tf_config: dict) -> bool:
    """The chief writes the run folder: task type 'chief', or worker 0 when the cluster names no chief."""
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


if tf is not None:
    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """A ``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3 gives it.

        With two or more workers, Keras 3.15's ``fit`` fails in two places (keras-team/keras#20585):
        it reduces the first (x, y) batch as a pair, which this strategy does not accept ("Attempt to
        convert a value (PerReplica...)"), and it averages each step's scalar logs (loss, Dice) over
        ``axis=0``, which scalars do not have. Here a pair is reduced member by member and a scalar
        over the replicas only.
        """

        def reduce(self, reduce_op, value, axis):
            parent = super()

            def reduce_member(member):
                scalar = axis is not None and len(member.shape) == 0
                return parent.reduce(reduce_op, member, None if scalar else axis)

            return tf.nest.map_structure(reduce_member, value)


def start_distribution(config: TrainConfig) -> Distribution:
    """Set up ``config.distribute`` on the Keras backend in use; a bad combination raises ``UserError``.

    Must run before anything else in the process touches TensorFlow: a multi-worker strategy
    configures the runtime's collective operations when it is created.
    """
    if config.distribute == "none":
        return NO_DISTRIBUTION
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # strategies log every all-reduce at INFO
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if config.distribute == "mirrored":
            # Every GPU; without one, every logical CPU device (one, unless the process configured more).
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
            is_chief = True
        else:
            if not Path(config.split).is_file():
                # A split made separately on each machine could differ and put test images into training.
                raise UserError(f"--distribute multiworker needs the same existing split file on every worker; "
                                f"{config.split} does not exist (copy the chief's, or pass --split)")
            is_chief = is_chief_task(read_tf_config())
            strategy = KerasMultiWorkerMirroredStrategy()
        replicas, scope = strategy.num_replicas_in_sync, strategy.scope
        name = type(strategy).__name__
    elif backend == "jax" and config.distribute == "mirrored":
        devices = keras.distribution.list_devices()
        data_parallel = keras.distribution.DataParallel(devices=devices)
        replicas, scope, is_chief, name = len(devices), data_parallel.scope, True, "keras.distribution.DataParallel"
    else:
        raise UserError(f"--distribute {config.distribute} is not available on the {backend} backend "
                        f"(multiworker: TensorFlow only; mirrored: TensorFlow or JAX)")
    if config.batch_size % replicas:
        raise UserError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                        f"{replicas} replicas")
    log.info("%s: %d replicas, global batch %d = %d per replica%s", name, replicas, config.batch_size,
             config.batch_size // replicas, "" if is_chief else "; this worker is not the chief and keeps no files")
    return Distribution(is_chief, scope, replicas)

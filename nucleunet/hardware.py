"""The machine a run is on: its GPU, its CPU's instructions, and the settings they decide (preset, precision, XLA).

Detected, never assumed: CPUs differ between machines (AVX2 only, or AVX-512 with bfloat16), and the choices made
for this one are recorded in the run's ``config.json`` and ``training.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nucleunet.config import PRESETS

log = logging.getLogger("nucleunet.hardware")


def detect_accelerator() -> str | None:
    """Name of the first GPU the Keras backend sees, or None."""
    import keras  # here, not above: cpu_flags serves prediction, which may run without Keras

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
    """``requested``, or 'seed' when the backend sees a GPU and 'cpu' otherwise (logged with the reason)."""
    if requested is not None:
        return requested
    accelerator = detect_accelerator()
    if accelerator:
        log.info("no --preset given: found GPU %s, using preset 'seed' (the reference, 3 x 3500 steps)", accelerator)
        return "seed"
    log.info("no --preset given: no GPU found, using preset 'cpu' (at most %.0f minutes of training)",
             PRESETS["cpu"]["minutes"])
    return "cpu"


def cpu_flags() -> set[str]:
    """The instruction-set flags of this machine's CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_bfloat16_instructions() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512_BF16 or AMX): only then is mixed bfloat16 fast."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def for_this_machine(values: dict) -> dict:
    """A preset's 'auto' settings made concrete for this machine, so that ``config.json`` records what ran.

    ``precision`` and ``jit_compile`` as ``choose_precision`` and ``choose_jit_compile`` say; a preset's
    ``length`` ({precision: (epochs, steps_per_epoch)}) gives the training length for the precision chosen:
    a CPU that computes bfloat16 does about twice the steps in the same minutes.
    """
    values = dict(values)
    if values.get("precision") == "auto":
        values["precision"] = choose_precision("auto")
    if values.get("jit_compile") == "auto":
        values["jit_compile"] = choose_jit_compile("auto")
    length = values.pop("length", None)
    if length is not None:
        values["epochs"], values["steps_per_epoch"] = length[values.get("precision", "float32")]
    return values


def choose_precision(requested: str) -> str:
    """'float32' or 'mixed_bfloat16': as ``requested``, or for 'auto' mixed bfloat16 where a GPU is in use
    or the CPU has bfloat16 instructions (``has_bfloat16_instructions``), else float32."""
    if requested != "auto":
        return requested
    return "mixed_bfloat16" if detect_accelerator() or has_bfloat16_instructions() else "float32"


def choose_jit_compile(requested: bool | str) -> bool:
    """XLA for the training step: as ``requested``, or for 'auto' by the CPU: on where it lacks AVX-512.

    Measured on this project's 2-core machines (``bench/RESULTS.md``): on an AVX2-only AMD EPYC, XLA made
    the ``cpu`` preset's step 1.64x faster; on AVX-512 CPUs, TensorFlow's own oneDNN kernels were faster.
    """
    if requested != "auto":
        return bool(requested)
    return "avx512f" not in cpu_flags()

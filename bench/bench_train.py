"""Training benchmark: tiles/s of the real training path against plain ``model.fit`` on in-memory tiles.

Ours: ``training.TileBatches`` (random tiles, dihedral augmentation, float16/uint8 storage cast per
batch) + the callbacks ``training.train()`` uses. The floor: ``model.fit`` on the same number of tiles already
in memory as one float32 array, no augmentation, no callbacks but the timer. Both are the ``cpu``
preset's model exactly as ``train()`` builds and compiles it (``build_model``: its outputs, loss and
XLA setting), measured side by side in this process, alternating floor and ours for ``--rounds``
rounds so that a busy spell of the shared machine hits both; the rate is the median step time
after the first steps of each round (tracing). Also: the U-Net's convolution FLOPs, the achieved
GFLOP/s, the machine's float32 matmul peak (NumPy and TensorFlow), and variants of the floor (XLA
switched the other way, bfloat16, batch size).

    python bench/bench_train.py --steps 20
    python bench/bench_train.py --quick
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

VARIANTS = ("xla", "bf16", "batch16")
DEFAULT_VARIANTS = ("xla", "batch16")


def matmul_peak(size: int, repeats: int = 3) -> dict:
    """Best-of float32 matmul GFLOP/s of NumPy (its BLAS) and TensorFlow, and TF bfloat16 for reference."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), np.float32), rng.random((size, size), np.float32)
    flops = 2.0 * size**3

    def best(run):
        run()  # warm-up: thread pools, allocations
        return flops / min(common.timed(run)[0] for _ in range(repeats)) / 1e9

    ta, tb = tf.constant(a), tf.constant(b)
    ha, hb = tf.cast(ta, tf.bfloat16), tf.cast(tb, tf.bfloat16)
    return {
        "size": size,
        "numpy_float32_gflops": best(lambda: a @ b),
        "tf_float32_gflops": best(lambda: tf.linalg.matmul(ta, tb).numpy()),
        "tf_bfloat16_gflops": best(lambda: tf.linalg.matmul(ha, hb).numpy()),
    }


def forward_flops(model) -> float:
    """Multiply-adds x 2 of every convolution of ``model`` for one input (the rest is negligible)."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, channels_in = layer.input.shape
            total += 2.0 * height * width * channels_in * layer.filters * math.prod(layer.kernel_size)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            channels_in = layer.input.shape[-1]
            total += 2.0 * height * width * channels_in * layer.filters * math.prod(layer.kernel_size)
    return total


def step_timer():
    """A callback recording the wall time of every training step (end to end, data feeding included)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def step_seconds(self, skip: int) -> list[float]:
            return np.diff(self.ends)[skip:].tolist()

    return StepTimer()


def build_model(config, *, jit_compile=None):
    """Training's model for ``config``; ``jit_compile`` overrides the config's XLA setting."""
    from nucleunet import training

    if jit_compile is not None:
        config = dataclasses.replace(config, jit_compile=jit_compile)
    return training.build_model(config)


def run_ours(config, images, masks, run_dir: Path, skip: int) -> dict:
    """One epoch through training's feed and callbacks."""
    import keras

    from nucleunet import training

    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    sequence = training.TileBatches(images, masks, config)
    timer = step_timer()
    callbacks = [keras.callbacks.TerminateOnNaN(), keras.callbacks.CSVLogger(run_dir / "history.csv"),
                 training.Checkpoints(run_dir, {}),
                 keras.callbacks.TensorBoard(log_dir=run_dir / "logs"),
                 training.TimeBudget(config.minutes or 1e6), training.SetEpoch(sequence), timer]
    start = time.perf_counter()
    model.fit(sequence, epochs=1, callbacks=callbacks, verbose=0)
    return summarize_steps(timer.step_seconds(skip), config.batch_size, time.perf_counter() - start)


def run_plain(config, x, y, skip: int, *, jit_compile=None, policy=None) -> dict:
    """``model.fit`` on float32 arrays: no augmentation, no callbacks but the timer."""
    import keras

    keras.utils.set_random_seed(config.seed)
    previous = keras.config.dtype_policy().name
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        model = build_model(config, jit_compile=jit_compile)
    finally:
        keras.config.set_dtype_policy(previous)
    timer = step_timer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=config.batch_size, epochs=1, shuffle=False, callbacks=[timer], verbose=0)
    return summarize_steps(timer.step_seconds(skip), config.batch_size, time.perf_counter() - start)


def pool_rounds(rounds: list[dict], batch_size: int) -> dict:
    """One summary of several rounds: the median over every timed step of every round."""
    steps = [seconds for run in rounds for seconds in run["step_seconds"]]
    pooled = summarize_steps(steps, batch_size, sum(run["wall_seconds_with_tracing"] for run in rounds))
    pooled["round_medians"] = [run["median_step_seconds"] for run in rounds]
    return pooled


def summarize_steps(seconds: list[float], batch_size: int, total: float) -> dict:
    step = common.median(seconds)
    return {"steps_timed": len(seconds), "median_step_seconds": step, "tiles_per_second": batch_size / step,
            "step_seconds": seconds, "wall_seconds_with_tracing": total}


def load_tiles(quick: bool, config):
    """Training tiles (float16 images, uint8 targets) of the train split, or tiny random ones."""
    if quick:
        rng = np.random.default_rng(0)
        images = rng.random((64, config.tile_size, config.tile_size)).astype(np.float16)
        return images, (images > 0.7).astype(np.uint8)
    import dsb
    from nucleunet import pipeline, training

    records, split, _ = pipeline.load_data(config, cache_dir=dsb.DEFAULT_CACHE_DIR, progress=False)
    tiles = training.prepare_training_data(records, split, config)
    return tiles.train_images, tiles.train_masks


def main(argv=None) -> int:
    parser = common.base_parser("train", __doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20,
                        help="training steps per measurement (the cpu preset's epoch is 60; default 20)")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each round left out (tracing)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="floor and ours alternate this many times; medians pool every round (default 2)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated variants of the floor to time: {', '.join(VARIANTS)} (or none); "
                             f"default {','.join(DEFAULT_VARIANTS)}: bf16 is opt-in, since a CPU without BF16 "
                             f"instructions emulates it (8.5x slower here, minutes per measurement)")
    parser.add_argument("--matmul-size", type=int, default=4096)
    args = parser.parse_args(argv)

    from nucleunet import training
    from nucleunet.config import TrainConfig

    preset = "smoke" if args.quick else "cpu"
    config = TrainConfig.from_preset(preset)
    if args.quick:
        config = dataclasses.replace(config, tile_size=64)
        args.steps, args.skip, args.matmul_size = 4, 1, 256
    config = dataclasses.replace(config, steps_per_epoch=args.steps)
    variants = [v for v in args.variants.split(",") if v and v != "none"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")

    peak = matmul_peak(args.matmul_size)
    images, masks = load_tiles(args.quick, config)
    rng = np.random.default_rng(config.seed)

    def plain_arrays(batch_size):
        chosen = rng.permutation(len(images))[: args.steps * batch_size] % len(images)
        count = args.steps * batch_size
        chosen = np.resize(chosen, count)
        return images[chosen].astype(np.float32)[..., None], training.target_channels(masks[chosen], config.contacts)

    x, y = plain_arrays(config.batch_size)
    floor_rounds, ours_rounds = [], []
    for _ in range(args.rounds):
        floor_rounds.append(run_plain(config, x, y, args.skip))
        with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
            ours_rounds.append(run_ours(config, images, masks, Path(scratch), args.skip))
    floor, ours = pool_rounds(floor_rounds, config.batch_size), pool_rounds(ours_rounds, config.batch_size)
    import keras

    flops = 3.0 * forward_flops(build_model(config))  # forward + backward (about twice the forward)
    best_peak = max(peak["numpy_float32_gflops"], peak["tf_float32_gflops"])
    results = {"benchmark": "train", "quick": args.quick, "machine": common.machine(), "preset": preset,
               "keras": keras.__version__, "config": config.to_dict(), "training_tiles": int(len(images)),
               "train_flops_per_tile": flops, "matmul_peak": peak, "peak_gflops": best_peak,
               "floor": floor, "ours": ours, "ratio": ours["tiles_per_second"] / floor["tiles_per_second"],
               "variants": {}}
    for run in (floor, ours):
        run["gflops"] = flops * run["tiles_per_second"] / 1e9
        run["fraction_of_peak"] = run["gflops"] / best_peak
    for variant in variants:
        if variant == "batch16":
            bigger = dataclasses.replace(config, batch_size=2 * config.batch_size)
            result = run_plain(bigger, *plain_arrays(bigger.batch_size), args.skip)
        else:
            result = run_plain(config, x, y, args.skip, jit_compile=(not config.jit_compile) if variant == "xla" else None,
                               policy="mixed_bfloat16" if variant == "bf16" else None)
        result["gflops"] = flops * result["tiles_per_second"] / 1e9
        result["fraction_of_peak"] = result["gflops"] / best_peak
        result["speed_vs_floor"] = result["tiles_per_second"] / floor["tiles_per_second"]
        results["variants"][variant] = result
    results["targets"] = {"ratio": 0.9}
    results["met"] = {"ratio": results["ratio"] >= 0.9}

    rows = [("floor: model.fit on float32 array", floor["steps_timed"], floor["median_step_seconds"],
             floor["tiles_per_second"], 1.0, floor["gflops"], floor["fraction_of_peak"]),
            ("ours: training sequence + callbacks", ours["steps_timed"], ours["median_step_seconds"],
             ours["tiles_per_second"], results["ratio"], ours["gflops"], ours["fraction_of_peak"])]
    names = {"xla": "without XLA" if config.jit_compile else "with XLA (jit_compile)"}
    rows += [(f"variant of the floor: {names.get(name, name)}", value["steps_timed"], value["median_step_seconds"],
              value["tiles_per_second"], value["speed_vs_floor"], value["gflops"], value["fraction_of_peak"])
             for name, value in results["variants"].items()]
    common.print_table(
        f"Training, preset {preset} ({config.depth} levels, {config.base_filters} filters, batch "
        f"{config.batch_size}, {config.tile_size}px): {flops / 1e9:.2f} GFLOP per training tile; "
        f"matmul peak {best_peak:.0f} GFLOP/s (NumPy {peak['numpy_float32_gflops']:.0f}, "
        f"TF {peak['tf_float32_gflops']:.0f}, TF bf16 {peak['tf_bfloat16_gflops']:.0f})",
        rows, ("measurement", "steps", "median s/step", "tiles/s", "x floor", "GFLOP/s", "of peak"))
    print(f"target: ours >= 0.9 x floor ({'met' if results['met']['ratio'] else 'NOT met'})")
    common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs ``train_and_predicted_masks.main`` in a fresh process, for tests that need a backend or devices of their own.

    python tests/run_cli.py '{"runs": [[...argv...], ...], "block_tensorflow": false, "logical_cpus": 0,
                              "keep_last_model": null, "predict_runs_in": null, "predictions_file": null}'

Keras fixes its backend (``KERAS_BACKEND``) and TensorFlow its devices at first use, so the tests
start a process per setting. Prints one line ``RESULT {json}`` at the end: the exit code of each
run, the Keras backend, whether TensorFlow was imported, and a summary of the predictions of the
model saved under ``predict_runs_in`` on two random tiles (all of them in ``predictions_file``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(request: dict) -> dict:
    if request.get("block_tensorflow"):
        # As if TensorFlow were not installed: any import of it raises ImportError.
        for name in ("tensorflow", "tensorboard"):
            sys.modules[name] = None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if request.get("logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * request["logical_cpus"])

    import keras
    import numpy as np

    import train_and_predicted_masks as cli
    import unet
    from nucleunet import training

    if request.get("keep_last_model"):
        # Non-chief workers delete their folder when done: keep a copy of the model each worker ends with.
        train = training.train

        def train_and_keep_model(config, run_dir, *args, **kwargs):
            result = train(config, run_dir, *args, **kwargs)
            last = Path(run_dir) / training.CHECKPOINTS / training.read_state(run_dir)["last"]
            shutil.copy(last, request["keep_last_model"])
            return result

        training.train = train_and_keep_model

    result = {"codes": [cli.main(argv) for argv in request["runs"]], "backend": keras.backend.backend()}
    if request.get("predict_runs_in"):
        (model_path,) = Path(request["predict_runs_in"]).glob("*/model.keras")
        model = unet.load_model(model_path)
        tiles = np.random.default_rng(0).random((2, *model.input_shape[1:])).astype(np.float32)
        probabilities = np.asarray(model.predict(tiles, verbose=0))
        result["predict"] = {"shape": list(probabilities.shape), "finite": bool(np.isfinite(probabilities).all()),
                             "min": float(probabilities.min()), "max": float(probabilities.max())}
        if request.get("predictions_file"):
            np.save(request["predictions_file"], probabilities)
    result["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))

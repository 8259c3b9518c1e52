"""A saved model with the files of its run, and the ready models that ship with the package.

A model is used with the files of the run it comes from, when it sits in one: ``config.json``, ``split.csv`` (the
test images, never re-split), ``clusters.json`` and ``postprocessing.json`` (the post-processing that ``tune``
chose). The ready models are found by name (``READY_MODELS``) in the installed package, or beside it in a checkout
of the project (``models/``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nucleunet import hardware, imaging, runs, stratify
from nucleunet.config import POSTPROCESSING_FIELDS, TrainConfig
from nucleunet.errors import MissingPathError, UserError
from nucleunet.postprocessing import Postprocessing
from nucleunet.prediction import PredictTiles, make_predictor
from nucleunet.tiling import MIN_OVERLAP, TILE_SIZE

log = logging.getLogger("nucleunet.models")

# The ready models by name, each a folder with model.keras and its run files (models/<name>/README: its card).
READY_MODELS = {
    "unet_dsb2018": "U-Net trained on the DSB2018 stage 1 training set (664 images of fluorescence, brightfield and "
                    "stained tissue); its card is models/README.md",
}
DEFAULT_MODEL = "unet_dsb2018"
# The engines a network can run on. 'float32': ONNX Runtime where a model has an ONNX copy and onnxruntime is
# installed (1.7x faster on a 2-core AVX2 CPU, same nucleus maps to 5e-6: bench/RESULTS.md, table 7), else Keras; the
# reference that tuning, evaluation, the experiments and the benchmarks run on. 'int8': the ONNX copy quantized to
# 8-bit integers (write_int8_copy), about 2x faster, labels within a stated tolerance of float32's (docs/results.md,
# "8-bit integers"). 'auto' (what predict and the API use): 'int8' where the model has that copy and the CPU computes
# 8-bit dot products (INT8_CPU_FLAGS: where the tolerance was checked), else 'float32'.
ENGINES = ("auto", "float32", "keras", "onnx", "int8")
INT8_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
ONNX_FILE, ONNX_RECORD = "model.onnx", "onnx.json"
INT8_FILE, INT8_RECORD = "model.int8.onnx", "int8.json"
# Calibration of the 8-bit copy: this many crops of this side from the model's training images.
INT8_CALIBRATION_CROPS, INT8_CALIBRATION_SIDE = 48, 256


def ready_model_folders() -> list[Path]:
    """Where the ready models are looked for, in order: inside the installed package (``pip install .`` puts them
    there), then ``models/`` beside the package (a checkout of the project, or ``pip install -e .``)."""
    package = Path(__file__).resolve().parent
    return [package / "ready_models", package.parent / "models"]


def ready_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The ``model.keras`` of the ready model ``name`` (one of ``READY_MODELS``).

    Raises
    ------
    MissingPathError
        The name is not a ready model's, or its files are in none of ``ready_model_folders()`` (each is named).
    """
    if name not in READY_MODELS:
        raise MissingPathError(f"no ready model named {name!r}: the ready models are {', '.join(sorted(READY_MODELS))}"
                               f" (or give the path of a .keras file)")
    candidates = [folder / name / "model.keras" for folder in ready_model_folders()]
    for path in candidates:
        if path.is_file():
            return path
    raise MissingPathError(f"the ready model {name!r} is not installed: looked for "
                           f"{' and '.join(str(path) for path in candidates)}; reinstall the package "
                           f"(pip install .) or name a model.keras file")


def refuse_ready_model_folder(path: Path, what: str) -> None:
    """A ``UserError`` if ``path`` lies in a ready model's folder (``ready_model_folders``): no command
    writes there."""
    resolved = Path(path).resolve()
    for folder in ready_model_folders():
        folder = folder.resolve()
        if resolved == folder or folder in resolved.parents:
            raise UserError(f"{what} {path} is in the ready models' folder {folder}, which no command changes")


def find_model(name_or_path: str | Path | None = None) -> Path:
    """The ``.keras`` file that ``name_or_path`` names: None, the default ready model; a name of ``READY_MODELS``;
    a ``.keras`` file; or a folder that holds ``model.keras`` (a run or an export)."""
    if name_or_path is None:
        return ready_model_path()
    path = Path(name_or_path).expanduser()
    if str(name_or_path) in READY_MODELS and not path.exists():
        return ready_model_path(str(name_or_path))
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise MissingPathError(f"model not found: {name_or_path} (give a .keras file, a folder with model.keras, or "
                               f"a ready model's name: {', '.join(sorted(READY_MODELS))})")
    return path


@dataclass(frozen=True)
class TrainedModel:
    """A saved model with what its run folder says about it (all optional beside a bare model file).

    Attributes
    ----------
    path : Path
        The ``.keras`` file.
    config : TrainConfig or None
        The training run's ``config.json``.
    split : Path or None
        The training run's ``split.csv``: which images were train, CV and test.
    cluster_model : dict or None
        The training run's ``clusters.json`` (``stratify.fit_cluster_model``), to place other images.
    postprocessing : Postprocessing
        ``postprocessing.json`` beside the model if there is one, else the run's config, else the defaults.
    """

    path: Path
    config: TrainConfig | None
    split: Path | None
    cluster_model: dict | None
    postprocessing: Postprocessing

    @classmethod
    def open(cls, path: str | Path) -> TrainedModel:
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"model file not found: {path}")
        folder = path.parent
        config = TrainConfig.load(folder / "config.json") if (folder / "config.json").is_file() else None
        if (folder / "postprocessing.json").is_file():
            postprocessing = Postprocessing.load(folder / "postprocessing.json")
        elif config is not None:
            postprocessing = starting_postprocessing(config)
        else:
            postprocessing = Postprocessing()
        return cls(path=path, config=config,
                   split=folder / "split.csv" if (folder / "split.csv").is_file() else None,
                   cluster_model=runs.read_json(folder / "clusters.json") if (folder / "clusters.json").is_file()
                   else None,
                   postprocessing=postprocessing)

    def onnx_path(self) -> Path | None:
        """``model.onnx`` beside the model where ``onnx.json`` says it was made from this very ``.keras`` file (the
        same SHA-256), else None (none there, or one of another model: a warning)."""
        return self._copy_of_this_model(ONNX_FILE, ONNX_RECORD)

    def int8_path(self) -> Path | None:
        """``model.int8.onnx`` beside the model where ``int8.json`` says it was quantized from this very ``.keras``
        file's network (the same SHA-256), else None (none there, or one of another model: a warning)."""
        return self._copy_of_this_model(INT8_FILE, INT8_RECORD)

    def _copy_of_this_model(self, name: str, record_name: str) -> Path | None:
        copy, record = self.path.with_name(name), self.path.with_name(record_name)
        if not copy.is_file() or not record.is_file():
            return None
        if runs.read_json(record).get("keras_sha256") != file_sha256(self.path):
            log.warning("%s was not made from %s (%s): it is ignored", copy, self.path.name, record_name)
            return None
        return copy

    def engine(self, requested: str = "auto") -> str:
        """The engine ``predictor`` runs the network on, 'onnx', 'int8' or 'keras', for ``requested`` (``ENGINES``):
        'auto' is 'int8' where ``int8_path`` has a file, onnxruntime is installed and the CPU has ``INT8_CPU_FLAGS``,
        else as 'float32': 'onnx' where ``onnx_path`` has a file and onnxruntime is installed, else 'keras'.
        'onnx' or 'int8' asked for by name without their copy or onnxruntime is a ``UserError``."""
        if requested not in ENGINES:
            raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
        if requested == "keras":
            return "keras"
        runtime = importlib.util.find_spec("onnxruntime") is not None
        if requested == "int8":
            if self.int8_path() is None or not runtime:
                raise UserError(f"the int8 engine needs onnxruntime installed and an 8-bit copy of {self.path} "
                                f"beside it ({INT8_FILE}, made by nucleunet.models.write_int8_copy)")
            return "int8"
        if requested == "auto" and runtime and hardware.cpu_flags() & INT8_CPU_FLAGS and self.int8_path() is not None:
            return "int8"
        available = runtime and self.onnx_path() is not None
        if requested == "onnx" and not available:
            raise UserError(f"the ONNX engine needs onnxruntime installed and an ONNX copy of {self.path} beside it "
                            f"({ONNX_FILE}, made by 'export --format keras')")
        return "onnx" if available else "keras"

    def predictor(self, engine: str = "auto") -> tuple[PredictTiles, int, int]:
        """The network as ``prediction.PredictTiles`` (taking tiles of any size) on ``engine`` (``engine``), with
        the tile size it was trained on and the tile overlap to predict with."""
        batch_size = max(self.config.batch_size, 8) if self.config else 8
        min_overlap = self.config.min_overlap if self.config else MIN_OVERLAP
        chosen = self.engine(engine)
        if chosen in ("onnx", "int8"):
            trained_on = self.config.tile_size if self.config else TILE_SIZE
            path = self.onnx_path() if chosen == "onnx" else self.int8_path()
            return make_predictor(OnnxNetwork(path), batch_size), trained_on, min_overlap
        import unet
        from nucleunet import hardware

        model = unet.load_model(self.path)
        trained_on = model.input_shape[1] or (self.config.tile_size if self.config else TILE_SIZE)
        # Any tile size (the U-Net is fully convolutional); bfloat16 only where the hardware computes it.
        fast_bfloat16 = hardware.choose_precision("auto") == "mixed_bfloat16"
        model = unet.portable(model, dtype=None if fast_bfloat16 else "float32")
        return make_predictor(model, batch_size), trained_on, min_overlap

    @property
    def normalization(self) -> tuple[float, float]:
        """The intensity stretch the model was trained with (``imaging.preprocess``), for every image it sees."""
        return self.config.normalization if self.config else imaging.DEFAULT_PERCENTILES

    def clusters(self, stats: pd.DataFrame, split: pd.DataFrame | None = None) -> dict:
        """Cluster of each image: from ``split`` (default: the run's) if listed there, else the nearest
        training cluster (``clusters.json``)."""
        if split is None and self.split is not None:
            split = stratify.read_split(self.split)
        clusters = {} if split is None else dict(zip(split["image_id"], split["cluster"].astype(int)))
        unknown = stats.loc[[image_id for image_id in stats.index if image_id not in clusters]]
        if len(unknown) and self.cluster_model is not None:
            assigned = stratify.assign_clusters(unknown, self.cluster_model)
            clusters.update(zip(unknown.index, (int(c) for c in assigned)))
        return clusters


class OnnxNetwork:
    """The network of a ``model.onnx`` on ONNX Runtime, with Keras' ``predict_on_batch`` (for
    ``prediction.make_predictor``)."""

    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_on_batch(self, tiles: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(tiles, dtype=np.float32)})[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_onnx_copy(keras_path: Path) -> Path | None:
    """``model.onnx`` and ``onnx.json`` (the SHA-256 of the ``.keras`` it was made from) beside ``keras_path``, where
    TensorFlow and tf2onnx are installed; else None, with a note in the log."""
    import unet

    if importlib.util.find_spec("tf2onnx") is None or not unet.tensorflow_available():
        log.info("no ONNX copy of %s: it needs TensorFlow and tf2onnx installed", keras_path)
        return None
    onnx = unet.export_onnx(unet.load_model(keras_path), keras_path.with_name(ONNX_FILE))
    runs.write_json(keras_path.with_name(ONNX_RECORD), {"source": keras_path.name,
                                                        "keras_sha256": file_sha256(keras_path)})
    return onnx


def calibration_tiles(images, count: int = INT8_CALIBRATION_CROPS, side: int = INT8_CALIBRATION_SIDE,
                      seed: int = 0) -> np.ndarray:
    """``count`` crops of ``side`` pixels, each from one of ``images`` (preprocessed, (H, W) float in [0, 1]: a model's
    training images) drawn at random without repeats where there are enough, at a random place (images smaller
    than ``side`` are reflected to it), as (count, side, side, 1) float32: what ``write_int8_copy`` calibrates on."""
    images = list(images)
    if not images:
        raise UserError("calibrating an 8-bit copy needs images")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(images))[:count] if len(images) >= count else rng.integers(0, len(images), count)
    crops = []
    for index in chosen:
        image = np.asarray(images[index], np.float32)
        image = np.pad(image, [(0, max(side - length, 0)) for length in image.shape], mode="reflect")
        top, left = (int(rng.integers(0, length - side + 1)) for length in image.shape)
        crops.append(image[top:top + side, left:left + side])
    return np.stack(crops)[..., None]


def write_int8_copy(keras_path: Path, tiles: np.ndarray, *, batch: int = 4) -> Path:
    """``model.int8.onnx`` and ``int8.json`` beside ``keras_path``: its ONNX copy (``onnx_path``: made first where
    missing, ``write_onnx_copy``) with weights and activations quantized to 8 bits by ONNX Runtime's static
    quantization (per-channel signed weights, unsigned activations, in the QDQ format), the activations' ranges
    calibrated on ``tiles`` (``calibration_tiles`` of its training images). The weights use 7 of their 8 bits
    (``reduce_range``), as ONNX Runtime advises for CPUs without VNNI instructions, whose 8-bit products can
    overflow, so that those compute it without overflow too. Needs the ``onnx`` package."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    keras_path = Path(keras_path)
    trained = TrainedModel.open(keras_path)
    source = trained.onnx_path() or write_onnx_copy(keras_path)
    if source is None:
        raise UserError(f"an 8-bit copy of {keras_path} needs its ONNX copy ({ONNX_FILE}), which needs TensorFlow "
                        f"and tf2onnx to make")
    tiles = np.asarray(tiles, np.float32)
    if tiles.ndim != 4 or tiles.shape[-1] != 1 or not len(tiles):
        raise ValueError(f"calibration tiles of shape (N, H, W, 1) expected, got {tiles.shape}")
    import onnxruntime

    input_name = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Tiles(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([tiles[start:start + batch] for start in range(0, len(tiles), batch)])

        def get_next(self):
            return next(({input_name: part} for part in self.batches), None)

    target = keras_path.with_name(INT8_FILE)
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Tiles(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True)
    runs.write_json(keras_path.with_name(INT8_RECORD), {
        "source": source.name, "keras_sha256": file_sha256(keras_path),
        "calibration": {"tiles": int(len(tiles)), "shape": list(tiles.shape[1:3])},
        "quantization": "ONNX Runtime static, QDQ, per-channel int8 weights (reduce_range), uint8 activations"})
    return target


def starting_postprocessing(config: TrainConfig) -> Postprocessing:
    """The post-processing a training run starts with: its config's ``POSTPROCESSING_FIELDS``, ``Postprocessing``'s
    defaults for the others."""
    return Postprocessing(**{name: getattr(config, name) for name in POSTPROCESSING_FIELDS})

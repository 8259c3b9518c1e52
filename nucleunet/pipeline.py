"""Training runs and exports: the ``train``, ``resume`` and ``export`` commands. Each writes one run folder.

The command line (``train_and_predicted_masks.py``) parses options into the arguments of these functions;
notebooks and scripts can call them directly. A training run evaluates its model on its test split at the end
(``evaluation.evaluate_records``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd

import dsb
import unet
from nucleunet import distribute, models, runs, stratify, training
from nucleunet.api import load_model
from nucleunet.config import TrainConfig
from nucleunet.errors import MissingPathError, UserError
from nucleunet.evaluation import evaluate_records
from nucleunet.models import TrainedModel, starting_postprocessing
from nucleunet.postprocessing import Postprocessing, reference_area

log = logging.getLogger("nucleunet.pipeline")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def load_data(config: TrainConfig, *, cache_dir: Path | None, progress: bool):
    """The dataset's records, the split (reused if saved at ``config.split``, else made and saved there) and
    the records' ``stratify.image_statistics``."""
    source = dsb.find_dataset(config.data)
    log.info("data: %s", source)
    records = dsb.load_dataset(source, cache_dir=cache_dir, percentiles=config.normalization, progress=progress)
    stats = stratify.image_statistics(records)
    starting = _starting_split(config, stats)
    if starting is not None and not Path(config.split).exists():
        log.info("fine-tuning on images the starting model's split lists: its split is reused (%s)", config.split)
        runs.write_csv(starting, config.split)
    split = stratify.load_or_make_split(stats, config.split, seed=config.seed)
    if starting is not None:
        _refuse_leaks(config, starting, split)
    counts = split["subset"].value_counts()
    log.info("%d images (%d nuclei): train %d, cv %d, test %d; split %s", len(records), int(stats["nuclei"].sum()),
             counts.get("train", 0), counts.get("cv", 0), counts.get("test", 0), config.split)
    return records, split, stats


def _starting_split(config: TrainConfig, stats: pd.DataFrame) -> pd.DataFrame | None:
    """With ``config.init``, the starting model's split where it lists every image of this dataset (fine-tuning on
    the data it was trained on); None otherwise (your own images, or no split beside the model)."""
    if not config.init:
        return None
    start = TrainedModel.open(config.init)
    if start.split is None:
        return None
    split = stratify.read_split(start.split)
    return split if set(stats.index) <= set(split["image_id"]) else None


def _refuse_leaks(config: TrainConfig, starting: pd.DataFrame, split: pd.DataFrame) -> None:
    """Refuse a split that would test the fine-tuned model on images its starting model was trained or chosen on."""
    seen = set(starting.loc[starting["subset"] != "test", "image_id"])
    leaked = sorted(seen & set(split.loc[split["subset"] == "test", "image_id"]))
    if leaked:
        raise UserError(f"the split {config.split} puts {len(leaked)} image(s) that the starting model {config.init} "
                        f"was trained or checked on into its test split (e.g. {leaked[0]}), so its test scores "
                        f"would not be on unseen images: pass the starting model's split, --split "
                        f"{TrainedModel.open(config.init).split}")


def train_run(config: TrainConfig, out: Path, *, cache_dir: Path | None, progress: bool) -> Path | None:
    """A new training run: ``out/<timestamp>-<preset>/`` with the model, its history, and the test-split
    evaluation. Returns the run folder (None on a non-chief worker of a multi-worker run)."""
    distribution = distribute.start_distribution(config)  # before the run folder: a bad combination leaves none
    if not distribution.is_chief:
        _train_as_worker(config, distribution, cache_dir=cache_dir, progress=progress)
        return None
    records, split, stats = load_data(config, cache_dir=cache_dir, progress=progress)
    run_dir = runs.new_run_dir(out, config.preset)
    log.info("run folder: %s", run_dir)
    training.new_state(run_dir)  # the mark of a training run that resume may continue
    config.save(run_dir / "config.json")
    runs.write_csv(split, run_dir / "split.csv")
    runs.write_json(run_dir / "clusters.json", stratify.fit_cluster_model(stats, split))
    return _train_and_evaluate(config, run_dir, records, split, distribution, progress=progress)


def training_nucleus_area(records: list, split: pd.DataFrame) -> float | None:
    """The typical nucleus area of the training images (``reference_area``), which
    ``Postprocessing.nucleus_area`` records for scale 'auto'; None if they hold no nucleus."""
    area = reference_area(record.labels for record in stratify.subset_records(records, split, "train"))
    return area or None


def resume_run(run_dir: Path, *, data: Path | None, cache_dir: Path | None, progress: bool) -> Path:
    """Continue a killed or interrupted training run from the end of its last finished epoch, with its
    own config, split and the rest of its time budget; then evaluate it as a new run would."""
    run_dir = Path(run_dir)
    check_resumable(run_dir)
    config = TrainConfig.load(run_dir / "config.json")
    config = dataclasses.replace(config, split=str(run_dir / "split.csv"),
                                 data=str(data) if data is not None else config.data)
    if config.distribute == "multiworker":
        raise UserError("resume of a multi-worker run is not supported: every worker would need the run's "
                        "checkpoint; start a new run")
    distribution = distribute.start_distribution(config)
    log.info("resuming run folder: %s", run_dir)
    records, split, _ = load_data(config, cache_dir=cache_dir, progress=progress)
    return _train_and_evaluate(config, run_dir, records, split, distribution, progress=progress, resume=True)


def check_resumable(run_dir: Path) -> None:
    """A ``UserError`` unless ``run_dir`` is an unfinished training run (its ``state.json`` says so); never an
    export, never a ready model's folder. Nothing is written before this check."""
    models.refuse_ready_model_folder(run_dir, "the run folder")
    if (run_dir / "export.json").is_file():
        raise UserError(f"{run_dir} holds an exported model (export.json), not a training run to resume")
    state = training.read_state(run_dir) if run_dir.is_dir() else None
    if state is None or not (run_dir / "config.json").is_file() or not (run_dir / "split.csv").is_file():
        raise UserError(f"{run_dir} is not a training run folder (no state.json, config.json and split.csv)")
    if state.get("finished") is not False:
        raise UserError(f"{run_dir}: its training is finished (state.json); start a new run, or fine-tune its "
                        f"model with train --init {run_dir / 'model.keras'}")


def _train_and_evaluate(config, run_dir, records, split, distribution, *, progress, resume=False):
    # Only the tiles and the test images are needed from here on: the other decoded images go before
    # training starts (images loaded from the cache are views of one array, hence the copies).
    test_records = [dataclasses.replace(record, image=record.image.copy())
                    for record in stratify.subset_records(records, split, "test")]
    tiles = training.prepare_training_data(records, split, config)
    nucleus_area = training_nucleus_area(records, split)
    records.clear()  # the caller's list: the decoded images go with it
    del records
    with distribution.scope():
        checkpoint = training.train(config, run_dir, tiles, progress=progress, resume=resume,
                                    replicas=distribution.replicas)
    del tiles
    postprocessing = starting_postprocessing(config).replace(nucleus_area=nucleus_area)
    if config.init and Path(config.init).is_file():  # fine-tuning keeps how its model zooms and tiles
        start = TrainedModel.open(config.init).postprocessing
        if start.scale != "auto" or nucleus_area is not None:
            postprocessing = postprocessing.replace(scale=start.scale, tile_size=start.tile_size,
                                                    extra_zooms=start.extra_zooms)
    postprocessing.save(run_dir / "postprocessing.json")
    if test_records:
        clusters = dict(zip(split["image_id"], split["cluster"].astype(int)))
        evaluate_records(load_model(checkpoint, engine="float32"), test_records, clusters, run_dir,
                         figures_per_cluster=config.figures_per_cluster, seed=config.seed, progress=progress)
    else:  # a small dataset's split (fine-tuning) has no test images
        log.info("no test images in the split: score the model on images of your own with "
                 "'evaluate %s --subset all --data FOLDER'", checkpoint)
    training.finish_state(run_dir)
    return run_dir


def _train_as_worker(config: TrainConfig, distribution, *, cache_dir: Path | None, progress: bool) -> None:
    """Train as a non-chief worker: in step with the chief, in a scratch folder removed at the end."""
    scratch = Path(tempfile.mkdtemp(prefix="unet-worker-"))
    try:
        records, split, _ = load_data(config, cache_dir=cache_dir, progress=progress)
        tiles = training.prepare_training_data(records, split, config)
        del records
        with distribution.scope():
            training.train(config, scratch, tiles, progress=progress, replicas=distribution.replicas)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


SHAREABLE_FILES = ("config.json", "postprocessing.json", "clusters.json", "split.csv")


def export_run(model_path: Path | list[Path], *, export_format: str = "savedmodel", out: Path) -> Path:
    """Export a model, or the average of several, into a new run folder.

    'bioimageio': ``<run>/<name>.zip`` is a bioimage.io model package (``zoo.export_package``), validated and tested
    by the zoo's own tools before it is kept.

    'savedmodel': ``<run>/1/`` is a TensorFlow SavedModel (``1``: the version folder TF Serving expects;
    serve the run folder as the model's base path). 'keras': ``<run>/model.keras`` is a copy to share or to
    ship (``unet.portable``: float32, any image size, no optimizer state: loads on every backend), with its ONNX copy
    where tf2onnx is installed (``models.write_onnx_copy``: the faster engine for ``predict``), with its
    training run's ``config.json``, ``postprocessing.json``, ``clusters.json`` and ``split.csv``, so that
    ``evaluate`` and ``predict`` use it as they use the original.

    Several models (a list): one model predicting the mean of theirs (``unet.average_models``), e.g. the
    same recipe trained with different seeds. They must come from runs on the same ``split.csv`` (else
    ``evaluate`` would score some images that a member trained on); the first model's run files are copied,
    and its ``postprocessing.json`` is a starting point only, without the first model's nucleus score (fitted to
    that model's maps, not the average's): ``tune`` the average (``--fit-score`` for a score of its own).
    ``export.json`` keeps each member's ``config.json`` and ``training.json``.
    """
    paths = [Path(path) for path in (model_path if isinstance(model_path, (list, tuple)) else [model_path])]
    for path in paths:
        if not path.is_file():
            raise MissingPathError(f"model file not found: {path}")
    if len(paths) > 1:
        _same_split(paths)
    if export_format == "bioimageio" and len(paths) > 1:
        raise UserError("a bioimage.io package holds one model: export the average as keras first, then package it")
    run_dir = runs.new_run_dir(out, "export")
    try:
        if export_format == "bioimageio":
            from nucleunet import zoo

            package = zoo.export_package(paths[0], run_dir)
            zoo.test_package(package)
            runs.write_json(run_dir / "export.json", {"model": str(paths[0]), "format": export_format,
                                                      "package": package.name, "tested": True})
            return run_dir
        model = (unet.load_model(paths[0]) if len(paths) == 1
                 else unet.average_models([unet.load_model(path) for path in paths]))
        if export_format == "keras":
            unet.portable(model, dtype="float32").save(run_dir / "model.keras")
            models.write_onnx_copy(run_dir / "model.keras")
            for name in SHAREABLE_FILES:
                if (paths[0].parent / name).is_file():
                    shutil.copy(paths[0].parent / name, run_dir / name)
            if len(paths) > 1:
                _drop_score_model(run_dir / "postprocessing.json")
            source = {"model": str(paths[0])} if len(paths) == 1 else {"average_of": [str(path) for path in paths],
                                                                         "members": _members(paths)}
            runs.write_json(run_dir / "export.json", {**source, "format": export_format})
        else:
            runs.write_json(run_dir / "config.json", {"model": str(paths[0]) if len(paths) == 1
                                                      else [str(path) for path in paths], "format": export_format})
            unet.export_model(model, run_dir / "1", export_format)
    except UserError:
        shutil.rmtree(run_dir, ignore_errors=True)  # a failed export leaves no folder behind
        raise
    return run_dir


def _drop_score_model(path: Path) -> None:
    """Remove the nucleus score (``score_model``, ``min_score``) from the post-processing file at ``path``, if any."""
    if not path.is_file():
        return
    settings = Postprocessing.load(path)
    if settings.score_model is not None:
        log.info("the nucleus score of the first model is left out of the average's post-processing: it was fitted "
                 "to that model's maps; 'tune --fit-score' fits one to the average's")
        settings.replace(score_model=None, min_score=None).save(path)


def _members(paths: list[Path]) -> list[dict]:
    """What each member's run folder says of how it was trained (``config.json``, ``training.json``), so that an
    average carries every member's recipe, seed and training time, not only the first's."""
    return [{name: runs.read_json(path.parent / f"{name}.json") for name in ("config", "training")
             if (path.parent / f"{name}.json").is_file()} for path in paths]


def _same_split(paths: list[Path]) -> None:
    """Refuse to average models whose runs split the images differently (or whose split is unknown)."""
    splits = []
    for path in paths:
        if not (path.parent / "split.csv").is_file():
            raise UserError(f"{path}: no split.csv beside it; an average needs models trained on one split, "
                            "so that evaluate never scores an image one of them trained on")
        split = stratify.read_split(path.parent / "split.csv")
        splits.append(split.set_index("image_id")["subset"].sort_index())
    for path, split in zip(paths[1:], splits[1:]):
        if not split.equals(splits[0]):
            raise UserError(f"{path} was trained on another split than {paths[0]}: average models of one split only")

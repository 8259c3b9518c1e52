"""What each subcommand does: train, resume, evaluate, tune, predict, export. Each writes one run folder.

The command line (``train_and_predicted_masks.py``) parses options into the arguments of these
functions; notebooks and scripts can call them directly. A model is used with the files of the run
it comes from, when it sits in one: ``config.json``, ``split.csv`` (the test images, never re-split),
``clusters.json`` and ``postprocessing.json`` (the post-processing that ``tune`` chose).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import distribute
import dsb
import imaging
import inputs
import nucleus_score
import outputs
import reports
import robustness
import runs
import segment
import stratify
import training
import unet
from config import TrainConfig
from errors import MissingPathError, UserError
from tiling import MIN_OVERLAP, TILE_SIZE

log = logging.getLogger("pipeline")

# The model that predict uses when none is named (models/README.md describes it).
READY_MODEL = Path(__file__).resolve().parent / "models" / "unet_dsb2018" / "model.keras"


# --------------------------------------------------------------------------------------------
# A trained model and the files of its run
# --------------------------------------------------------------------------------------------

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
    postprocessing : segment.Postprocessing
        ``postprocessing.json`` beside the model if there is one, else the run's config, else the defaults.
    """

    path: Path
    config: TrainConfig | None
    split: Path | None
    cluster_model: dict | None
    postprocessing: segment.Postprocessing

    @classmethod
    def open(cls, path: str | Path) -> TrainedModel:
        path = Path(path)
        if not path.is_file():
            raise MissingPathError(f"model file not found: {path}")
        folder = path.parent
        config = TrainConfig.load(folder / "config.json") if (folder / "config.json").is_file() else None
        if (folder / "postprocessing.json").is_file():
            postprocessing = segment.Postprocessing.load(folder / "postprocessing.json")
        elif config is not None:
            postprocessing = config.postprocessing
        else:
            postprocessing = segment.Postprocessing()
        return cls(path=path, config=config,
                   split=folder / "split.csv" if (folder / "split.csv").is_file() else None,
                   cluster_model=runs.read_json(folder / "clusters.json") if (folder / "clusters.json").is_file()
                   else None,
                   postprocessing=postprocessing)

    def predictor(self) -> tuple[segment.PredictTiles, int, int]:
        """The model loaded as ``segment.PredictTiles`` (taking tiles of any size), with the tile size it was
        trained on and the tile overlap to predict with."""
        model = unet.load_model(self.path)
        trained_on = model.input_shape[1] or (self.config.tile_size if self.config else TILE_SIZE)
        # Any tile size (the U-Net is fully convolutional); bfloat16 only where the hardware computes it.
        fast_bfloat16 = training.choose_precision("auto") == "mixed_bfloat16"
        model = unet.portable(model, dtype=None if fast_bfloat16 else "float32")
        batch_size = max(self.config.batch_size, 8) if self.config else 8
        min_overlap = self.config.min_overlap if self.config else MIN_OVERLAP
        return segment.make_predictor(model, batch_size), trained_on, min_overlap

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
    split = stratify.load_or_make_split(stats, config.split, seed=config.seed)
    counts = split["subset"].value_counts()
    log.info("%d images (%d nuclei): train %d, cv %d, test %d; split %s", len(records), int(stats["nuclei"].sum()),
             counts.get("train", 0), counts.get("cv", 0), counts.get("test", 0), config.split)
    return records, split, stats


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
    config.save(run_dir / "config.json")
    runs.write_csv(split, run_dir / "split.csv")
    runs.write_json(run_dir / "clusters.json", stratify.fit_cluster_model(stats, split))
    # Only the tiles and the test images are needed from here on: the other decoded images go before
    # training starts (images loaded from the cache are views of one array, hence the copies).
    test_records = [dataclasses.replace(record, image=record.image.copy())
                    for record in stratify.subset_records(records, split, "test")]
    tiles = training.prepare_training_data(records, split, config)
    nucleus_area = training_nucleus_area(records, split)
    del records
    return _train_and_evaluate(config, run_dir, tiles, split, test_records, distribution, progress=progress,
                               nucleus_area=nucleus_area)


def training_nucleus_area(records: list, split: pd.DataFrame) -> float | None:
    """The typical nucleus area of the training images (``segment.reference_area``), which
    ``Postprocessing.nucleus_area`` records for scale 'auto'; None if they hold no nucleus."""
    area = segment.reference_area(record.labels for record in stratify.subset_records(records, split, "train"))
    return area or None


def resume_run(run_dir: Path, *, data: Path | None, cache_dir: Path | None, progress: bool) -> Path:
    """Continue a killed or interrupted training run from the end of its last finished epoch, with its
    own config, split and the rest of its time budget; then evaluate it as a new run would."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "split.csv").is_file():
        raise UserError(f"{run_dir} is not a training run folder (no config.json and split.csv)")
    config = TrainConfig.load(run_dir / "config.json")
    config = dataclasses.replace(config, split=str(run_dir / "split.csv"),
                                 data=str(data) if data is not None else config.data)
    if config.distribute == "multiworker":
        raise UserError("resume of a multi-worker run is not supported: every worker would need the run's "
                        "last.keras; start a new run")
    distribution = distribute.start_distribution(config)
    log.info("resuming run folder: %s", run_dir)
    records, split, _ = load_data(config, cache_dir=cache_dir, progress=progress)
    test_records = [dataclasses.replace(record, image=record.image.copy())
                    for record in stratify.subset_records(records, split, "test")]
    tiles = training.prepare_training_data(records, split, config)
    nucleus_area = training_nucleus_area(records, split)
    del records
    return _train_and_evaluate(config, run_dir, tiles, split, test_records, distribution, progress=progress,
                               resume=True, nucleus_area=nucleus_area)


def _train_and_evaluate(config, run_dir, tiles, split, test_records, distribution, *, progress, resume=False,
                        nucleus_area=None):
    with distribution.scope():
        checkpoint = training.train(config, run_dir, tiles, progress=progress, resume=resume,
                                    replicas=distribution.replicas)
    del tiles
    postprocessing = config.postprocessing.replace(nucleus_area=nucleus_area)
    if config.init and Path(config.init).is_file():  # fine-tuning keeps how its model zooms and tiles
        start = TrainedModel.open(config.init).postprocessing
        if start.scale != "auto" or nucleus_area is not None:
            postprocessing = postprocessing.replace(scale=start.scale, tile_size=start.tile_size,
                                                    extra_zooms=start.extra_zooms)
    postprocessing.save(run_dir / "postprocessing.json")
    if not test_records:  # a small dataset's split (fine-tuning) has no test images
        log.info("no test images in the split: score the model on images of your own with "
                 "'evaluate %s --subset all --data FOLDER'", checkpoint)
        return run_dir
    model = TrainedModel.open(checkpoint)
    clusters = dict(zip(split["image_id"], split["cluster"].astype(int)))
    evaluate_records(model, test_records, clusters, run_dir, postprocessing,
                     figures_per_cluster=config.figures_per_cluster, seed=config.seed, progress=progress)
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


# --------------------------------------------------------------------------------------------
# Evaluation and tuning
# --------------------------------------------------------------------------------------------

def evaluate_records(model: TrainedModel, records: list, clusters: dict, run_dir: Path,
                     postprocessing: segment.Postprocessing, *, figures_per_cluster: int = 2, seed: int = 0,
                     progress: bool, title: str = "test split") -> dict:
    """Predict every record at full size and score it once; writes ``metrics.json`` and ``figures/``."""
    predict_tiles, tile_size, min_overlap = model.predictor()
    rows, predictions = [], {}
    for record in tqdm(records, desc="predict images", unit="img", disable=not progress):
        maps = postprocessing.maps(predict_tiles, record.image, tile_size=tile_size, min_overlap=min_overlap)
        labels, mask = postprocessing.labels(maps), postprocessing.mask(maps)
        score = segment.score_image(record.labels, labels, mask)
        predictions[record.image_id] = (mask, labels, score)
        rows.append({"image_id": record.image_id, "cluster": int(clusters.get(record.image_id, -1)),
                     "height": record.image.shape[0], "width": record.image.shape[1], **score.row()})
    metrics = reports.summarize(rows)
    metrics["model"] = str(model.path)
    metrics["postprocessing"] = dataclasses.asdict(postprocessing)
    runs.write_json(run_dir / "metrics.json", metrics)
    print(reports.format_metrics(metrics, title))
    figures = reports.draw_figures(records, predictions, clusters, run_dir / "figures",
                                   per_cluster=figures_per_cluster, seed=seed)
    log.info("wrote %d figures to %s", len(figures), run_dir / "figures")
    return metrics


def robustness_table(model: TrainedModel, source: Path, records: list, clusters: dict,
                     postprocessing: segment.Postprocessing, *, shifts=tuple(robustness.SHIFTS),
                     progress: bool) -> pd.DataFrame:
    """Score ``records`` under every shift of ``robustness.SHIFTS``: one row per shift and image.

    The raw images are read again from ``source`` (``dsb.read_raw_images``), shifted
    (``robustness.perturb``, labels rescaled with the image), preprocessed and predicted as ``predict``
    would. Columns: shift, image_id, cluster, and ``segment.ImageScore.row()``.
    """
    raw = dsb.read_raw_images(source, [record.image_id for record in records])
    predict_tiles, tile_size, min_overlap = model.predictor()
    rows = []
    jobs = [(shift, item) for shift in shifts for item in raw]
    for shift, (image_id, raw_image, labels) in tqdm(jobs, desc="shifted images", unit="img", disable=not progress):
        image, shifted_labels = robustness.perturb(raw_image, labels, shift, seed=robustness.image_seed(image_id))
        maps = postprocessing.maps(predict_tiles, imaging.preprocess(image, model.normalization), tile_size=tile_size,
                                   min_overlap=min_overlap)
        score = segment.score_image(shifted_labels, postprocessing.labels(maps), postprocessing.mask(maps))
        rows.append({"shift": shift, "image_id": image_id, "cluster": int(clusters.get(image_id, -1)), **score.row()})
    return pd.DataFrame(rows)


def summarize_robustness(table: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice and mAP per shift (in the order of ``robustness.SHIFTS``), with mAP per cluster."""
    order = [shift for shift in robustness.SHIFTS if shift in set(table["shift"])]
    summary = table.groupby("shift")[["dice", "map", "ap50"]].mean().loc[order]
    per_cluster = table.pivot_table(index="shift", columns="cluster", values="map", aggfunc="mean").loc[order]
    per_cluster.columns = [f"map_cluster_{cluster}" for cluster in per_cluster.columns]
    return summary.join(per_cluster).reset_index()


class Selection(NamedTuple):
    """What ``_records_of`` read: the images of a subset, their clusters, the dataset they came from, and the
    images of a second subset when one was asked for (else None)."""

    records: list
    clusters: dict
    source: Path
    also: list | None


def _records_of(model: TrainedModel, data: Path | None, split_path: Path | None, subset: str, *,
                cache_dir: Path | None, progress: bool, also: str | None = None) -> Selection:
    """The images of ``subset`` ('test', 'cv', 'train' or 'all') and their clusters, for evaluate and tune.

    The split is read, never made: the model's own unless ``split_path`` names another. With ``also``
    (another subset), that subset's images too, from the same reading of the data.
    """
    source = dsb.find_dataset(data if data is not None else (model.config.data if model.config else None))
    every = dsb.load_dataset(source, cache_dir=cache_dir, percentiles=model.normalization, progress=progress)
    stats = stratify.image_statistics(every)
    split, needed = None, sorted({subset, also} - {"all", None})
    if needed:
        split_path = split_path or model.split
        if split_path is None:
            raise UserError(f"{model.path} has no split.csv beside it, so its {' and '.join(needed)} images are "
                            f"unknown: pass --split, or --subset all to use every image of the data")
        split = stratify.read_split(split_path, stats)

    def of(wanted: str) -> list:
        return every if wanted == "all" else stratify.subset_records(every, split, wanted)

    records = of(subset)
    log.info("%s: %d images from %s", subset, len(records), source)
    return Selection(records, model.clusters(stats, split if subset != "all" else None), source,
                     None if also is None else of(also))


def evaluate_run(model_path: Path, *, data: Path | None = None, split: Path | None = None, subset: str = "test",
                 overrides: dict | None = None, figures_per_cluster: int | None = None, perturb: bool = False,
                 out: Path, cache_dir: Path | None, progress: bool) -> Path:
    """Evaluate a saved model on ``subset`` of a dataset: ``metrics.json`` and figures in a new run folder.

    With ``perturb``, also under every shift of ``robustness.SHIFTS``: ``robustness.csv`` (mean Dice and
    mAP per shift, mAP per cluster) and ``robustness_per_image.csv``.
    """
    model = TrainedModel.open(model_path)
    postprocessing = model.postprocessing.replace(**(overrides or {}))
    records, clusters, source, _ = _records_of(model, data, split, subset, cache_dir=cache_dir, progress=progress)
    run_dir = runs.new_run_dir(out, "evaluate")
    log.info("run folder: %s", run_dir)
    runs.write_json(run_dir / "config.json", {"model": str(model_path), "data": str(source), "subset": subset,
                                              "postprocessing": dataclasses.asdict(postprocessing)})
    if figures_per_cluster is None:
        figures_per_cluster = model.config.figures_per_cluster if model.config else 2
    evaluate_records(model, records, clusters, run_dir, postprocessing, figures_per_cluster=figures_per_cluster,
                     seed=model.config.seed if model.config else 0, progress=progress,
                     title=f"{subset} {'images' if subset == 'all' else 'split'} of {source.name}")
    if perturb:
        table = robustness_table(model, source, records, clusters, postprocessing, progress=progress)
        runs.write_csv(table, run_dir / "robustness_per_image.csv")
        summary = summarize_robustness(table)
        runs.write_csv(summary, run_dir / "robustness.csv")
        print(f"\nUnder shifts of the {subset} images (robustness.csv):")
        print(summary.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return run_dir


def tune_run(model_path: Path, *, data: Path | None = None, split: Path | None = None, subset: str = "cv",
             tta: bool | None = None, scale: float | str | None = None, extra_zooms: list | None = None,
             fit_score: bool = False, out: Path,
             cache_dir: Path | None, progress: bool) -> Path:
    """Choose the post-processing on ``subset`` (the CV split by default; never the test split), with
    ``tta``, ``scale`` and ``extra_zooms`` as given (default: the model's). A model whose files lack the typical nucleus
    area of its training images (``Postprocessing.nucleus_area``, for scale 'auto') gets it from its split.

    With ``fit_score``, a score model (``nucleus_score``) is fitted on the predictions for the split's training
    images with the best settings; then, with it or the model's own, the ``min_score`` of ``TUNE_MIN_SCORES`` (or
    none) is chosen on ``subset`` as well.

    Writes ``tuning.csv`` (every setting tried, best first) and the best as ``postprocessing.json``,
    in the tune's run folder and beside the model, where evaluate and predict read it from then on;
    the file it replaces beside the model is kept in the tune's folder as ``postprocessing_before.json``.
    """
    if subset == "test":
        raise UserError("tune chooses settings and must not look at the test split; use --subset cv")
    model = TrainedModel.open(model_path)
    tta = model.postprocessing.tta if tta is None else tta
    nucleus_area = model.postprocessing.nucleus_area
    records, _, source, train = _records_of(model, data, split, subset, cache_dir=cache_dir, progress=progress,
                                            also="train" if nucleus_area is None or fit_score else None)
    if nucleus_area is None:
        nucleus_area = segment.reference_area(record.labels for record in train) or None
        log.info("typical nucleus area of the training images: %s pixels", nucleus_area)
    prediction = model.postprocessing.replace(
        tta=tta, nucleus_area=nucleus_area, scale=model.postprocessing.scale if scale is None else scale,
        extra_zooms=model.postprocessing.extra_zooms if extra_zooms is None else extra_zooms)
    run_dir = runs.new_run_dir(out, "tune")
    log.info("run folder: %s", run_dir)
    runs.write_json(run_dir / "config.json", {"model": str(model_path), "data": str(source), "subset": subset,
                                              "tta": tta, "scale": prediction.scale,
                                              "extra_zooms": prediction.extra_zooms, "fit_score": fit_score})
    predict_tiles, tile_size, min_overlap = model.predictor()
    maps = [prediction.maps(predict_tiles, record.image, tile_size=tile_size, min_overlap=min_overlap)
            for record in tqdm(records, desc="predict images", unit="img", disable=not progress)]
    grid = segment.tuning_grid(has_contacts=maps[0].shape[-1] > 1, tta=tta, scale=prediction.scale,
                               tile_size=prediction.tile_size, nucleus_area=prediction.nucleus_area,
                               extra_zooms=prediction.extra_zooms, flat_field=prediction.flat_field,
                               denoise=prediction.denoise, auto_gain=prediction.auto_gain)
    truths = [record.labels for record in records]
    rows = segment.tune_postprocessing(maps, truths, grid, progress=lambda items: tqdm(
        items, desc="post-processing grid", disable=not progress))
    best = segment.Postprocessing.from_dict(rows[0])
    score_model = model.postprocessing.score_model
    if fit_score:
        score_model = fit_score_model(best, train, predict_tiles, tile_size, min_overlap, progress=progress)
        runs.write_json(run_dir / "score_model.json", score_model)
    del train
    if score_model is not None:  # the speck and split settings first, then the score cut on top of the best
        cuts = [best.replace(score_model=score_model, min_score=cut) for cut in (None, *segment.TUNE_MIN_SCORES)]
        rows = segment.tune_postprocessing(maps, truths, cuts) + rows[1:]
        best = segment.Postprocessing.from_dict(rows[0])
    table = pd.DataFrame(rows).drop(columns="score_model")
    runs.write_csv(table, run_dir / "tuning.csv")
    best.save(run_dir / "postprocessing.json")
    beside_model = Path(model_path).parent / "postprocessing.json"
    if beside_model.is_file():
        shutil.copy(beside_model, run_dir / "postprocessing_before.json")
    best.save(beside_model)
    print(f"\nPost-processing on {len(records)} {subset} images (tta={tta}), best first:")
    print(table.head(10).to_string(index=False))
    print(f"\nSaved the best as {beside_model} (was: {model.postprocessing}); evaluate and predict use it from now on.")
    return run_dir


def fit_score_model(settings: segment.Postprocessing, records: list, predict_tiles, tile_size: int, min_overlap: int,
                    *, progress: bool) -> dict:
    """A ``nucleus_score.ScoreModel`` (as a dict) fitted on the nuclei that ``settings`` finds in ``records``
    (training images with their true labels): whether each matches a true nucleus at IoU above 0.5."""
    if not records:
        raise UserError("the split has no training images to fit a nucleus score on: tune without --fit-score")
    measurements, matched = [], []
    for record in tqdm(records, desc="predict training images (score model)", unit="img", disable=not progress):
        maps = settings.maps(predict_tiles, record.image, tile_size=tile_size, min_overlap=min_overlap)
        labels = settings.labels(maps)
        measurements.append(nucleus_score.measure_nuclei(maps, labels))
        iou = segment.iou_matrix(record.labels, labels)
        matched.append(iou.max(axis=0, initial=0.0) > 0.5)
    try:
        fitted = nucleus_score.fit_score_model(np.concatenate(measurements), np.concatenate(matched))
    except ValueError as error:
        raise UserError(f"cannot fit a nucleus score for this model on its {len(records)} training images: {error}; "
                        "tune without --fit-score") from error
    log.info("score model fitted on %d nuclei of %d training images", sum(map(len, matched)), len(records))
    return fitted.as_dict()


# --------------------------------------------------------------------------------------------
# Prediction and export
# --------------------------------------------------------------------------------------------

def model_and_inputs(items: list) -> tuple[Path, list]:
    """``predict``'s positional arguments: a model first if the first is a ``.keras`` file, else the ready
    model (``READY_MODEL``), then the inputs."""
    if items and str(items[0]).endswith(".keras"):
        if len(items) == 1:
            raise UserError(f"no images to segment: give them after the model {items[0]}")
        return Path(items[0]), list(items[1:])
    if not READY_MODEL.is_file():
        raise MissingPathError(f"no model given and no ready model at {READY_MODEL}: name a model.keras first "
                               f"(train one with 'train')")
    return READY_MODEL, list(items)


def predict_run(model_path: Path, input_paths: list, *, overrides: dict | None = None,
                formats=outputs.DEFAULT_FORMATS, channel: int | None = None, stack: str = "planes",
                recursive: bool = False, out: Path, progress: bool) -> Path:
    """Segment images into a new run folder: per image the ``formats`` of ``outputs.write_outputs``, and for
    all of them ``counts.csv``, ``measurements.csv`` (with ``measurements``) and ``submission.csv``.

    Inputs are listed by ``inputs.list_inputs``; each file gives one image per plane or its maximum
    projection (``stack``), of ``channel`` where it has several (``inputs.planes``). Large images are
    segmented block by block (``segment.segment_image``). An image that cannot be read, or has no finite
    pixel, is skipped and named in ``skipped.json``; the others are still segmented.
    """
    formats = outputs.check_formats(formats)
    model = TrainedModel.open(model_path)
    postprocessing = model.postprocessing.replace(**(overrides or {}))
    items = inputs.list_inputs(input_paths, recursive=recursive)
    predict_tiles, tile_size, min_overlap = model.predictor()
    run_dir = runs.new_run_dir(out, "predict")
    log.info("run folder: %s (%d input files)", run_dir, len(items))
    runs.write_json(run_dir / "config.json", {
        "model": str(model_path), "inputs": [str(item) for item in input_paths], "recursive": recursive,
        "channel": channel, "stack": stack, "formats": list(formats),
        "postprocessing": dataclasses.asdict(postprocessing)})
    rows, counts, tables, skipped = [], [], [], {}
    for item in tqdm(items, desc="segment images", unit="file", disable=not progress):
        try:
            raw, axes = inputs.read_input(item)
            images = inputs.planes(raw, axes, channel=channel, stack=stack, name=item.where)
        except UserError as error:  # one bad file must not cost the others: skip it, report at the end
            skipped[item.key] = str(error)
            continue
        for suffix, plane in images:
            key = item.key + suffix
            try:
                plane, nonfinite = imaging.replace_nonfinite(plane, name=item.where + suffix)
                image = imaging.preprocess(plane, model.normalization)
            except UserError as error:
                skipped[key] = str(error)
                continue
            if nonfinite:
                log.warning("%s: %d pixel values are NaN or infinite; replaced by the median of the others",
                            item.where + suffix, nonfinite)
            if composite := imaging.composite_channels(plane):
                log.warning("%s looks like a fluorescence composite (signal in %s): it is converted to gray by "
                            "luminance, which weighs blue 0.07; if the nuclei are in one channel, pass --channel N "
                            "(0 red, 1 green, 2 blue)", item.where + suffix, " and ".join(composite))
            unevenness, smoothed = imaging.background_unevenness(image), postprocessing.denoises(image)
            with tqdm(desc=f"  tiles of {key}", unit="tile", leave=False,
                      disable=not progress or image.size < 4_000_000) as bar:
                def set_total(tiles, bar=bar):  # known once the automatic zoom is chosen
                    bar.total = tiles
                    bar.refresh()

                labels, mask, probability, scale, scores = segment.segment_image(
                    predict_tiles, image, postprocessing, tile_size=tile_size, min_overlap=min_overlap,
                    probability="probability" in formats, progress=bar.update, total=set_total)
            del image  # the model's input: not needed for the outputs, which show the original
            table = outputs.write_outputs(run_dir, key, plane, labels, mask, probability, formats, scores=scores)
            if table is not None:
                tables.append(table.assign(image=key))
            rows += outputs.submission_rows(key, labels)
            areas = np.bincount(labels.ravel())[1:]
            counts.append({"image": key, "height": labels.shape[0], "width": labels.shape[1],
                           "nuclei": int(labels.max()), "median_area": float(np.median(areas)) if len(areas) else 0.0,
                           "foreground_fraction": float(mask.mean()), "scale": round(scale, 3),
                           "background_unevenness": round(unevenness, 3),
                           "flattened": postprocessing.flattens(unevenness),
                           "smoothed": smoothed,
                           "nonfinite_pixels": nonfinite})
    for key, reason in skipped.items():
        log.warning("skipped %s: %s", key, reason)
    if skipped:
        runs.write_json(run_dir / "skipped.json", skipped)
    if not counts:
        raise UserError(f"none of the {len(skipped)} input image(s) could be read; the reasons are in "
                        f"{run_dir / 'skipped.json'}")
    outputs.write_submission(run_dir / "submission.csv", rows)
    table = pd.DataFrame(counts)
    runs.write_csv(table, run_dir / "counts.csv")
    if tables:
        runs.write_csv(pd.concat(tables, ignore_index=True)[["image", *tables[0].columns.drop("image")]],
                       run_dir / "measurements.csv")
    print(f"\nSegmented {len(table)} images: {int(table['nuclei'].sum())} nuclei in all, per image "
          f"min {table['nuclei'].min()}, median {table['nuclei'].median():.0f}, max {table['nuclei'].max()}")
    print(table.to_string(index=False, max_rows=20))
    if skipped:
        print(f"Skipped {len(skipped)} image(s) that could not be read, listed in skipped.json: "
              f"{', '.join(sorted(skipped))}")
    return run_dir


SHAREABLE_FILES = ("config.json", "postprocessing.json", "clusters.json", "split.csv")


def export_run(model_path: Path | list[Path], *, export_format: str = "savedmodel", out: Path) -> Path:
    """Export a model, or the average of several, into a new run folder.

    'savedmodel': ``<run>/1/`` is a TensorFlow SavedModel (``1``: the version folder TF Serving expects;
    serve the run folder as the model's base path). 'keras': ``<run>/model.keras`` is a copy to share or to
    ship (``unet.portable``: float32, any image size, no optimizer state: loads on every backend), with its
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
    run_dir = runs.new_run_dir(out, "export")
    try:
        model = (unet.load_model(paths[0]) if len(paths) == 1
                 else unet.average_models([unet.load_model(path) for path in paths]))
        if export_format == "keras":
            unet.portable(model, dtype="float32").save(run_dir / "model.keras")
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
    settings = segment.Postprocessing.load(path)
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

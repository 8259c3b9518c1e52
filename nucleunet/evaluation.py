"""Scoring a model on annotated images: the ``evaluate`` command, its figures and its robustness table.

Every image goes through the package's API (``Model.segment``), as a user's image would, and is scored once
(``metrics.score_image``). The split is read, never made: a model is scored on the test images of its own run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from tqdm.auto import tqdm

import dsb
from nucleunet import reports, robustness, runs, stratify
from nucleunet.api import Model, load_model
from nucleunet.errors import UserError
from nucleunet.metrics import score_image
from nucleunet.models import TrainedModel

log = logging.getLogger("nucleunet.evaluation")


def evaluate_records(model: Model, records: list, clusters: dict, run_dir: Path, *, figures_per_cluster: int = 2,
                     seed: int = 0, progress: bool, title: str = "test split") -> dict:
    """Segment every record (``Model.segment`` of its preprocessed image) and score it once; writes
    ``metrics.json`` and ``figures/``."""
    rows, predictions = [], {}
    for record in tqdm(records, desc="predict images", unit="img", disable=not progress):
        found = model.segment(record.image, preprocessed=True, name=record.image_id)
        score = score_image(record.labels, found.labels, found.mask)
        predictions[record.image_id] = (found.mask, found.labels, score)
        rows.append({"image_id": record.image_id, "cluster": int(clusters.get(record.image_id, -1)),
                     "height": record.image.shape[0], "width": record.image.shape[1], **score.row()})
    metrics = reports.summarize(rows)
    metrics["model"] = str(model.path)
    metrics["postprocessing"] = dataclasses.asdict(model.postprocessing)
    runs.write_json(run_dir / "metrics.json", metrics)
    print(reports.format_metrics(metrics, title))
    figures = reports.draw_figures(records, predictions, clusters, run_dir / "figures",
                                   per_cluster=figures_per_cluster, seed=seed)
    log.info("wrote %d figures to %s", len(figures), run_dir / "figures")
    return metrics


def robustness_table(model: Model, source: Path, records: list, clusters: dict, *,
                     shifts=tuple(robustness.SHIFTS), progress: bool) -> pd.DataFrame:
    """Score ``records`` under every shift of ``robustness.SHIFTS``: one row per shift and image.

    The raw images are read again from ``source`` (``dsb.read_raw_images``), shifted
    (``robustness.perturb``, labels rescaled with the image) and segmented as ``predict`` would
    (``Model.segment``). Columns: shift, image_id, cluster, and ``metrics.ImageScore.row()``.
    """
    raw = dsb.read_raw_images(source, [record.image_id for record in records])
    rows = []
    jobs = [(shift, item) for shift in shifts for item in raw]
    for shift, (image_id, raw_image, labels) in tqdm(jobs, desc="shifted images", unit="img", disable=not progress):
        image, shifted_labels = robustness.perturb(raw_image, labels, shift, seed=robustness.image_seed(image_id))
        found = model.segment(image, name=f"{image_id} ({shift})")
        score = score_image(shifted_labels, found.labels, found.mask)
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
    """What ``records_of`` read: the images of a subset, their clusters, the dataset they came from, and the
    images of a second subset when one was asked for (else None)."""

    records: list
    clusters: dict
    source: Path
    also: list | None


def records_of(model: TrainedModel, data: Path | None, split_path: Path | None, subset: str, *,
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
    model = load_model(model_path, engine="float32").with_settings(**(overrides or {}))  # the reference engine
    records, clusters, source, _ = records_of(model.trained, data, split, subset, cache_dir=cache_dir,
                                              progress=progress)
    run_dir = runs.new_run_dir(out, "evaluate")
    log.info("run folder: %s", run_dir)
    runs.write_json(run_dir / "config.json", {"model": str(model_path), "data": str(source), "subset": subset,
                                              "engine": model.engine,
                                              "postprocessing": dataclasses.asdict(model.postprocessing)})
    config = model.trained.config
    if figures_per_cluster is None:
        figures_per_cluster = config.figures_per_cluster if config else 2
    evaluate_records(model, records, clusters, run_dir, figures_per_cluster=figures_per_cluster,
                     seed=config.seed if config else 0, progress=progress,
                     title=f"{subset} {'images' if subset == 'all' else 'split'} of {source.name}")
    if perturb:
        table = robustness_table(model, source, records, clusters, progress=progress)
        runs.write_csv(table, run_dir / "robustness_per_image.csv")
        summary = summarize_robustness(table)
        runs.write_csv(summary, run_dir / "robustness.csv")
        print(f"\nUnder shifts of the {subset} images (robustness.csv):")
        print(summary.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    return run_dir

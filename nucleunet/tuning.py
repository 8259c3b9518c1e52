"""Choosing the post-processing on the CV split (never the test split): the grid of settings, its scores, and the
``tune`` command's run.

``tune`` predicts the CV images once (``prediction.image_maps``) and scores every setting of ``tuning_grid`` on
those maps, so the grid costs post-processing time only; with ``--fit-score`` it also fits the nucleus score
(``nucleus_score``) on the training images and chooses the score under which nuclei are dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nucleunet import nucleus_score, prediction, runs
from nucleunet.errors import UserError
from nucleunet.evaluation import records_of
from nucleunet.metrics import average_precision, iou_matrix
from nucleunet.models import TrainedModel, refuse_ready_model_folder
from nucleunet.postprocessing import Postprocessing, reference_area

log = logging.getLogger("nucleunet.tuning")

TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNE_MARKER_HEIGHTS = (1.0, 2.0, 3.0, 5.0)
TUNE_MIN_SIZES = (0, 15, 30)
TUNE_CONTACT_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7)
# The score cuts (``Postprocessing.min_score``) tune tries on top of the best other settings, after no cut.
TUNE_MIN_SCORES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def tuning_grid(has_contacts: bool, prediction_settings: Postprocessing) -> list[Postprocessing]:
    """The settings ``tune_postprocessing`` tries: every threshold and speck size with every way of splitting (by
    the contact channel at each contact threshold if the model has one, else not at all; or by a distance
    watershed of each marker height). The fields that say how the maps were predicted (``tta``, ``tta_views``,
    ``tta_extra_zooms``, ``scale``, ``tile_size``, ``nucleus_area``, ``extra_zooms``, ``flat_field``, ``denoise``) are those of
    ``prediction_settings`` in every setting, and so are the nucleus score's (tried on top of the best:
    ``tune_run``)."""
    splits = ([(None, c) for c in TUNE_CONTACT_THRESHOLDS] if has_contacts else [(None, 0.2)])
    splits += [(height, 0.2) for height in TUNE_MARKER_HEIGHTS]
    base = prediction_settings.replace(min_score=None, score_model=None)
    return [base.replace(threshold=threshold, min_size=min_size, marker_height=height, contact_threshold=contact)
            for threshold, (height, contact), min_size in itertools.product(TUNE_THRESHOLDS, splits, TUNE_MIN_SIZES)]


def tune_postprocessing(maps: list[np.ndarray], truths: list[np.ndarray], grid: list[Postprocessing],
                        *, progress=None) -> list[dict]:
    """Mean DSB score over the images of every setting of ``grid``, best first.

    Parameters
    ----------
    maps : list of ndarray, shape (H, W, C), from ``prediction.image_maps`` (with the grid's ``tta`` and ``scale``)
    truths : list of ndarray, shape (H, W), int, the true labels of the same images
    grid : list of Postprocessing, e.g. ``tuning_grid``
    progress : callable wrapping an iterable (e.g. ``tqdm``), optional

    Returns
    -------
    list of dict: the setting's fields and ``mean_map``, sorted by ``mean_map``, highest first
    (ties keep the grid's order).
    """
    if len(maps) != len(truths) or not maps:
        raise ValueError(f"need the same positive number of maps and truths, got {len(maps)} and {len(truths)}")
    rows = []
    for settings in (progress or iter)(grid):
        scores = [average_precision(truth, settings.labels(image_maps)) for image_maps, truth in zip(maps, truths)]
        rows.append({**dataclasses.asdict(settings), "mean_map": float(np.mean(scores))})
    return sorted(rows, key=lambda row: -row["mean_map"])


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
    try:
        refuse_ready_model_folder(Path(model_path), "the model")
    except UserError as error:
        raise UserError(f"{error}: tune writes the settings it chooses beside the model; tune a copy instead "
                        f"(export {model_path} --format keras, then tune the export's model.keras)") from None
    model = TrainedModel.open(model_path)
    tta = model.postprocessing.tta if tta is None else tta
    nucleus_area = model.postprocessing.nucleus_area
    records, _, source, train = records_of(model, data, split, subset, cache_dir=cache_dir, progress=progress,
                                            also="train" if nucleus_area is None or fit_score else None)
    if nucleus_area is None:
        nucleus_area = reference_area(record.labels for record in train) or None
        log.info("typical nucleus area of the training images: %s pixels", nucleus_area)
    predicting = model.postprocessing.replace(
        tta=tta, nucleus_area=nucleus_area, scale=model.postprocessing.scale if scale is None else scale,
        extra_zooms=model.postprocessing.extra_zooms if extra_zooms is None else extra_zooms)
    run_dir = runs.new_run_dir(out, "tune")
    log.info("run folder: %s", run_dir)
    runs.write_json(run_dir / "config.json", {"model": str(model_path), "data": str(source), "subset": subset,
                                              "tta": tta, "scale": predicting.scale,
                                              "extra_zooms": predicting.extra_zooms, "fit_score": fit_score})
    predict_tiles, tile_size, min_overlap = model.predictor("float32")  # the reference engine
    maps = [prediction.image_maps(predict_tiles, record.image, predicting, tile_size=tile_size,
                                  min_overlap=min_overlap)
            for record in tqdm(records, desc="predict images", unit="img", disable=not progress)]
    grid = tuning_grid(maps[0].shape[-1] > 1, predicting)
    truths = [record.labels for record in records]
    rows = tune_postprocessing(maps, truths, grid, progress=lambda items: tqdm(
        items, desc="post-processing grid", disable=not progress))
    best = Postprocessing.from_dict(rows[0])
    score_model = model.postprocessing.score_model
    if fit_score:
        score_model = fit_score_model(best, train, predict_tiles, tile_size, min_overlap, progress=progress)
        runs.write_json(run_dir / "score_model.json", score_model)
    del train
    if score_model is not None:  # the speck and split settings first, then the score cut on top of the best
        cuts = [best.replace(score_model=score_model, min_score=cut) for cut in (None, *TUNE_MIN_SCORES)]
        rows = tune_postprocessing(maps, truths, cuts) + rows[1:]
        best = Postprocessing.from_dict(rows[0])
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


def fit_score_model(settings: Postprocessing, records: list, predict_tiles, tile_size: int, min_overlap: int,
                    *, progress: bool) -> dict:
    """A ``nucleus_score.ScoreModel`` (as a dict) fitted on the nuclei that ``settings`` finds in ``records``
    (training images with their true labels): whether each matches a true nucleus at IoU above 0.5."""
    if not records:
        raise UserError("the split has no training images to fit a nucleus score on: tune without --fit-score")
    measurements, matched = [], []
    for record in tqdm(records, desc="predict training images (score model)", unit="img", disable=not progress):
        maps = prediction.image_maps(predict_tiles, record.image, settings, tile_size=tile_size,
                                     min_overlap=min_overlap)
        labels = settings.labels(maps)
        measurements.append(nucleus_score.measure_nuclei(maps, labels))
        iou = iou_matrix(record.labels, labels)
        matched.append(iou.max(axis=0, initial=0.0) > 0.5)
    try:
        fitted = nucleus_score.fit_score_model(np.concatenate(measurements), np.concatenate(matched))
    except ValueError as error:
        raise UserError(f"cannot fit a nucleus score for this model on its {len(records)} training images: {error}; "
                        "tune without --fit-score") from error
    log.info("score model fitted on %d nuclei of %d training images", sum(map(len, matched)), len(records))
    return fitted.as_dict()

"""Segment many files into one run folder: what ``predict`` does, for notebooks and scripts too.

    import nucleunet
    done = nucleunet.segment_files(["my_images/", "plate.zip"], out="runs")
    done.run_dir, done.counts, done.skipped

Each file is read (``inputs``), each of its planes segmented by ``Model.segment`` and written (``outputs``);
``counts.csv``, ``measurements.csv``, ``submission.csv`` and ``skipped.json`` cover them all.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nucleunet import inputs, outputs, runs
from nucleunet.api import Model, Segmentation, load_model
from nucleunet.errors import UserError

log = logging.getLogger("nucleunet.batch")


class Batch(NamedTuple):
    """What ``segment_files`` did: its run folder, ``counts.csv`` as a table, and the images it skipped with why."""

    run_dir: Path
    counts: pd.DataFrame
    skipped: dict


def segment_files(input_paths: list, model: Model | str | Path | None = None, *,
                  out: str | Path = runs.DEFAULT_RUNS_DIR, formats=outputs.DEFAULT_FORMATS, channel: int | None = None,
                  stack: str = "planes", recursive: bool = False, progress: bool = True, **settings) -> Batch:
    """Segment image files into a new run folder ``out/<timestamp>-predict/``.

    Per image the ``formats`` of ``outputs.write_outputs``; for all of them ``counts.csv``, ``measurements.csv``
    (with ``measurements``) and ``submission.csv``.

    Parameters
    ----------
    input_paths : list of path or str
        Image files, folders, zips or glob patterns (``inputs.list_inputs``).
    model : Model, or what ``load_model`` takes (default: the ready model)
    formats : list of str
        Outputs per image, of ``outputs.FORMATS``.
    channel : int, optional
        The nuclear channel (0-based) of multichannel images.
    stack : 'planes' or 'max'
        A z-stack or time series is segmented plane by plane, or as its maximum projection.
    recursive : bool
        Also the images in subfolders.
    **settings
        Overrides of single post-processing fields (``Model.with_settings``).

    An image that cannot be read, or has no finite pixel, is skipped and named in ``skipped.json``; the others are
    still segmented. None readable is a ``UserError``.
    """
    formats = outputs.check_formats(formats)
    model = (model if isinstance(model, Model) else load_model(model)).with_settings(**settings)
    model.predictor  # noqa: B018 - the network loads (or a model that does not fit fails) before any run folder
    items = inputs.list_inputs(input_paths, recursive=recursive)
    run_dir = runs.new_run_dir(out, "predict")
    log.info("run folder: %s (%d input files)", run_dir, len(items))
    runs.write_json(run_dir / "config.json", {
        "model": str(model.path), "inputs": [str(item) for item in input_paths], "recursive": recursive,
        "channel": channel, "stack": stack, "formats": list(formats),
        "postprocessing": dataclasses.asdict(model.postprocessing)})
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
            with tqdm(desc=f"  tiles of {key}", unit="tile", leave=False,
                      disable=not progress or plane.shape[0] * plane.shape[1] < 4_000_000) as bar:
                def set_total(tiles, bar=bar):  # known once the automatic zoom is chosen
                    bar.total = tiles
                    bar.refresh()

                try:
                    found = model.segment(plane, name=item.where + suffix, probability="probability" in formats,
                                          progress=bar.update, total=set_total)
                except UserError as error:
                    skipped[key] = str(error)
                    continue
            table = outputs.write_outputs(run_dir, key, found.image, found.labels, found.mask, found.probability,
                                          formats, measurements=found.measurements
                                          if {"measurements", "geojson"} & set(formats) else None)
            if table is not None:
                tables.append(table.assign(image=key))
            rows += outputs.submission_rows(key, found.labels)
            counts.append(count_row(key, found))
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
    return Batch(run_dir, table, skipped)


def count_row(key: str, found: Segmentation) -> dict:
    """One image's row of ``counts.csv``."""
    areas = np.bincount(found.labels.ravel())[1:]
    return {"image": key, "height": found.labels.shape[0], "width": found.labels.shape[1], "nuclei": found.count,
            "median_area": float(np.median(areas)) if len(areas) else 0.0,
            "foreground_fraction": float(found.mask.mean()), "scale": round(found.scale, 3),
            "background_unevenness": round(found.unevenness, 3), "flattened": found.flattened,
            "smoothed": found.smoothed, "nonfinite_pixels": found.nonfinite_pixels}

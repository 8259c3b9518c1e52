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
from nucleunet.calibration import Calibration, check_pixel_size
from nucleunet.errors import UserError

log = logging.getLogger("nucleunet.batch")


class Batch(NamedTuple):
    """What ``segment_files`` did: its run folder, ``counts.csv`` as a table, and the images it skipped with why."""

    run_dir: Path
    counts: pd.DataFrame
    skipped: dict


def segment_files(input_paths: list, model: Model | str | Path | None = None, *,
                  out: str | Path = runs.DEFAULT_RUNS_DIR, formats=outputs.DEFAULT_FORMATS, channel: int | None = None,
                  stack: str = "planes", recursive: bool = False, pixel_size: float | None = None,
                  diameter: float | None = None, max_pixels: int = inputs.MAX_PIXELS, progress: bool = True,
                  **settings) -> Batch:
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
    pixel_size : float, optional
        Micrometres per pixel of every image, in place of what their files state (``calibration.from_tiff``).
    diameter : float, optional
        The typical nucleus diameter, in micrometres where the pixel size is known, else in pixels: each image is
        zoomed by it (``Model.segment``) instead of by the model's own zoom.
    max_pixels : int
        Files of more pixels than this are not read (``inputs.read_input``).
    **settings
        Overrides of single post-processing fields (``Model.with_settings``).

    Each image is on its own: whatever fails for one (reading it, segmenting it, writing its outputs) skips it, with
    the reason in ``skipped.json``, and the others go on; the tables are written for the images done, also when the
    run is stopped by an error or Ctrl-C. ``status.json`` says how far the run got: ``"complete": false`` until the
    last table is written, so a run that was killed or stopped says so. None segmented is a ``UserError``.
    """
    formats = outputs.check_formats(formats)
    model = (model if isinstance(model, Model) else load_model(model)).with_settings(**settings)
    model.predictor  # noqa: B018 - the network loads (or a model that does not fit fails) before any run folder
    items, skipped = inputs.list_inputs(input_paths, recursive=recursive)
    run_dir = runs.new_run_dir(out, "predict")
    log.info("run folder: %s (%d input files)", run_dir, len(items))
    runs.write_json(run_dir / "config.json", {
        "model": str(model.path), "inputs": [str(item) for item in input_paths], "recursive": recursive,
        "channel": channel, "stack": stack, "formats": list(formats), "max_pixels": max_pixels,
        "pixel_size": pixel_size, "diameter": diameter, "engine": model.engine,
        "postprocessing": dataclasses.asdict(model.postprocessing)})
    done, keys, finished = _Done(run_dir, len(items)), inputs.KeyRegister(), False
    try:
        for item in tqdm(items, desc="segment images", unit="file", disable=not progress):
            try:
                raw, axes, calibration = inputs.read_input(item, max_pixels=max_pixels)
                images = inputs.planes(raw, axes, channel=channel, stack=stack, name=item.where)
                if pixel_size is not None:
                    calibration = Calibration(check_pixel_size(pixel_size), "option")
            except Exception as error:  # noqa: BLE001 - one bad file must not cost the others: skip it, say why
                skipped[item.where] = _reason(error)
                continue
            del raw
            for suffix, plane in images:
                key, where = item.key + suffix, item.where + suffix
                if other := keys.claim(key, where):
                    skipped[where] = f"its outputs would be named {key!r}, as those of {other}; rename one"
                    continue
                try:
                    done.add(key, _segment_and_write(model, run_dir, key, where, plane, formats, progress,
                                                     pixel_size=calibration, diameter=diameter,
                                                     max_pixels=max_pixels))
                except Exception as error:  # noqa: BLE001 - as above: the next image is segmented all the same
                    skipped[where] = _reason(error)
            done.status(skipped)
        finished = True
    finally:
        table = done.write_tables(skipped, complete=finished)
    if table.empty:
        first = next(iter(skipped.items()), None)
        example = f" ({first[0]}: {first[1]})" if first else ""
        raise UserError(f"none of the {len(skipped)} input image(s) could be segmented{example}; the reasons are in "
                        f"{run_dir / 'skipped.json'}")
    return Batch(run_dir, table, skipped)


def _reason(error: Exception) -> str:
    """One line for ``skipped.json``: a ``UserError``'s message, or what went wrong otherwise."""
    if isinstance(error, UserError):
        return " ".join(str(error).split())
    log.warning("unexpected error", exc_info=error)
    return f"failed: {type(error).__name__}: {' '.join(str(error).split())}"


def _segment_and_write(model: Model, run_dir: Path, key: str, where: str, plane: np.ndarray, formats, progress: bool,
                       **options) -> tuple[dict, pd.DataFrame | None, list]:
    """Segment one plane (``Model.segment`` with ``options``) and write its outputs: its ``counts.csv`` row,
    measurements and submission rows."""
    with tqdm(desc=f"  tiles of {key}", unit="tile", leave=False,
              disable=not progress or plane.shape[0] * plane.shape[1] < 4_000_000) as bar:
        def set_total(tiles):  # known once the automatic zoom is chosen
            bar.total = tiles
            bar.refresh()

        found = model.segment(plane, name=where, probability="probability" in formats, progress=bar.update,
                              total=set_total, **options)
    table = outputs.write_outputs(run_dir, key, found.image, found.labels, found.mask, found.probability, formats,
                                  measurements=found.measurements if {"measurements", "geojson"} & set(formats)
                                  else None, pixel_size=found.calibration.pixel_size)
    return count_row(key, found), table, outputs.submission_rows(key, found.labels)


class _Done:
    """What a run has segmented so far, and its tables."""

    def __init__(self, run_dir: Path, files: int):
        self.run_dir, self.files = run_dir, files
        self.counts, self.tables, self.rows = [], [], []
        self.status({})

    def add(self, key: str, results: tuple[dict, pd.DataFrame | None, list]) -> None:
        row, table, submission = results
        self.counts.append(row)
        if table is not None:
            self.tables.append(table.assign(image=key))
        self.rows += submission

    def status(self, skipped: dict, *, complete: bool = False) -> None:
        runs.write_json(self.run_dir / "status.json", {
            "complete": complete, "input_files": self.files, "segmented": len(self.counts), "skipped": len(skipped)})

    def write_tables(self, skipped: dict, *, complete: bool) -> pd.DataFrame:
        """``skipped.json``, ``submission.csv``, ``counts.csv``, ``measurements.csv`` of what was done; then
        ``status.json``, ``complete`` or not (a run stopped by an error)."""
        for where, reason in skipped.items():
            log.warning("skipped %s: %s", where, reason)
        if skipped:
            runs.write_json(self.run_dir / "skipped.json", skipped)
        table = pd.DataFrame(self.counts)
        if self.counts:
            outputs.write_submission(self.run_dir / "submission.csv", self.rows)
            runs.write_csv(table, self.run_dir / "counts.csv")
        if self.tables:
            columns = ["image", *self.tables[0].columns.drop("image")]
            runs.write_csv(pd.concat(self.tables, ignore_index=True)[columns], self.run_dir / "measurements.csv")
        self.status(skipped, complete=complete)
        return table


def count_row(key: str, found: Segmentation) -> dict:
    """One image's row of ``counts.csv``."""
    areas = found.areas[found.areas > 0]
    return {"image": key, "height": found.labels.shape[0], "width": found.labels.shape[1], "nuclei": found.count,
            "median_area": float(np.median(areas)) if len(areas) else 0.0,
            "foreground_fraction": float(found.mask.mean()), "scale": round(found.scale, 3),
            "background_unevenness": round(found.unevenness, 3), "flattened": found.flattened,
            "smoothed": found.smoothed, "nonfinite_pixels": found.nonfinite_pixels,
            "pixel_size_um": found.calibration.pixel_size, "pixel_size_source": found.calibration.source}

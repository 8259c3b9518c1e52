"""Should the automatic zoom (``--scale auto``) reach beyond 0.5-2x, and should the speck size follow the zoom?
Measured on CV.

Each CV image is shrunk or enlarged by 0.25x to 4x (``robustness.rescale``, labels by nearest neighbour), as
images taken at another magnification than the training set's. The model predicts it once at 1x (the automatic
zoom's first pass, without test-time augmentation) and measures the typical nucleus area; each rule then picks a
zoom from that area (``adaptation.choose_scale``), the image is predicted at it and scored (mAP). Predictions are
shared between the rules that pick the same zoom. The rules differ in:

- the zooms allowed: 0.5-2x (``postprocessing.AUTO_SCALES``), 0.35-2.83x, 0.25-4x (steps of sqrt 2);
- the first pass's speck size: the model's ``min_size``, or none (objects of any size count toward the typical
  area, so that nuclei smaller than ``min_size`` at 1x can be measured at all);
- the final speck size: ``min_size`` pixels of the image, or of the model's view (``min_size / zoom**2`` pixels of
  the image: at 2x, a speck of 30 pixels as the model sees it is 7.5 pixels of the image), or of the model's view
  only where the image is zoomed in (never more than ``min_size`` pixels of the image).

Writes ``experiments/results/zoom_range.json`` (mean mAP per rule and shift) and ``zoom_range.csv`` (per image).

    python experiments/zoom_range.py --model models/unet_dsb2018/model.keras
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import pandas as pd

import common

SHIFTS = (1.0, 0.25, 2**-1.5, 0.5, 2.0, 2**1.5, 4.0)
RANGES = {"0.5-2x": (-2, 2), "0.35-2.83x": (-3, 3), "0.25-4x": (-4, 4)}  # in half-octaves: zooms 2**(k/2)
FIRST_PASS = ("min_size", "none")
SPECKS = ("image", "model", "model when zoomed in", "image, at most 0.25 of the typical area",
          "image, at most 0.5 of the typical area")
CAPS = {"image, at most 0.25 of the typical area": 0.25, "image, at most 0.5 of the typical area": 0.5}


def zooms(name: str) -> tuple[float, ...]:
    low, high = RANGES[name]
    return tuple(float(2 ** (k / 2)) for k in range(low, high + 1))


def shift_name(factor: float) -> str:
    return f"scale{factor:.2f}"


def rule_name(zoom_range: str, first: str, specks: str) -> str:
    return f"zoom {zoom_range}, first pass specks: {first}, specks in {specks} pixels"


def rule_columns(specks=SPECKS) -> list[tuple[str, str, str]]:
    return list(itertools.product(RANGES, FIRST_PASS, specks))


def score_image(settings, predict_tiles, image, truth, reference, *, tile_size, min_overlap, specks=SPECKS) -> dict:
    """One image under every rule: the zoom each picks and its mAP. Each rule drops its own specks from all the
    objects found (``postprocessing.drop_specks``), so the rules do not depend on the speck rule of ``segment``."""
    from nucleunet import adaptation, metrics, postprocessing, prediction

    cache = {}

    def everything_at(zoom):  # every object found at this zoom, specks included
        if zoom not in cache:
            maps = prediction.image_maps(predict_tiles, image, settings.replace(scale=zoom), tile_size=tile_size,
                                         min_overlap=min_overlap)
            cache[zoom] = settings.replace(min_size=0).labels(maps)
        return cache[zoom]

    first = everything_at(1.0)
    areas = {"min_size": postprocessing.typical_area(postprocessing.drop_specks(first, settings.min_size)),
             "none": postprocessing.typical_area(first)}
    row = {f"area_at_1_{first_pass}": area for first_pass, area in areas.items()}
    for zoom_range, first_pass, rule in rule_columns(specks):
        zoom = adaptation.choose_scale(areas[first_pass], reference, zooms(zoom_range))
        everything = everything_at(zoom)
        if rule in CAPS:  # never drop an object of more than this fraction of the image's typical area
            size = min(settings.min_size, CAPS[rule] * postprocessing.typical_area(everything))
        else:
            view = {"image": 1.0, "model": zoom, "model when zoomed in": max(zoom, 1.0)}[rule]
            size = int(round(settings.min_size / view**2))
        name = rule_name(zoom_range, first_pass, rule)
        row[f"zoom: {name}"] = zoom
        row[f"map: {name}"] = metrics.average_precision(truth, postprocessing.drop_specks(everything, size))
    return row


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean mAP per rule (rows) and shift (columns), with the mean over shifts."""
    columns = [column for column in table if column.startswith("map: ")]
    summary = table.groupby("shift", sort=False)[columns].mean().T
    summary.index = [column.removeprefix("map: ") for column in summary.index]
    summary["mean"] = summary.mean(axis=1)
    return summary


def main(argv=None) -> int:
    parser = common.model_parser("zoom_range", __doc__.splitlines()[0])
    parser.add_argument("--shifts", type=float, nargs="+", default=list(SHIFTS), metavar="FACTOR",
                        help="magnifications to score (default: %(default)s)")
    parser.add_argument("--specks", nargs="+", default=list(SPECKS), choices=SPECKS, metavar="RULE",
                        help="speck rules to score (default: all)")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import imaging, postprocessing, robustness

    data = common.cv_images(args.model, args.data, args.quick)
    settings = data.model.postprocessing.replace(tta=False, scale=1.0)
    shifts = (1.0, 0.25) if args.quick else tuple(args.shifts)  # quick: seconds, 3 images
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in dsb.read_raw_images(data.source, data.cv):
        for factor in shifts:
            image, truth = robustness.rescale(robustness.as_unit_float(raw), labels, factor)
            image = imaging.preprocess(image, data.model.normalization)
            rows.append({"shift": shift_name(factor), "image_id": image_id, "cluster": data.clusters[image_id],
                         "true_area": postprocessing.typical_area(truth),
                         **score_image(settings, data.predict_tiles, image, truth, data.reference,
                                       tile_size=data.tile_size, min_overlap=data.min_overlap,
                                       specks=tuple(args.specks))})
    table = pd.DataFrame(rows)
    common.write_rule_results(args.json, "zoom_range", data, table, summarise(table), quick=args.quick,
                              seconds=time.perf_counter() - started, model_path=args.model,
                              postprocessing=dataclasses.asdict(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

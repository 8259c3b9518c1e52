"""Does zooming each image toward the training images' nucleus size (``--scale auto``) help? Measured on CV.

For each CV image, at 1x and shrunk or enlarged (``robustness.perturb``: 0.5x, 0.75x, 1.5x, 2x, labels
with it), the model predicts at every zoom of ``postprocessing.AUTO_SCALES`` (without test-time augmentation), and
each prediction is scored (mAP). The typical nucleus area found at 1x (``postprocessing.typical_area``) is kept, so
that any rule choosing a zoom from it can be scored afterwards without predicting again: the rule of
``--scale auto`` (``adaptation.choose_scale`` toward the training images' ``postprocessing.reference_area``), the same
rule toward other reference areas, the fixed 1x, and the best zoom per image (an oracle, for the ceiling).

Writes ``experiments/results/auto_scale.json`` (mean mAP per rule and shift) and ``auto_scale.csv`` (per image).
``--shifts`` scores other shifts of ``robustness.SHIFTS`` too, e.g. ``blur``, where the rule loses: not by
misjudging the nuclei's size, but by zooming blurred images in, which enlarges the blur too (docs/results.md).

Each row also records the image's edge sharpness (``imaging.edge_sharpness``), so that a rule that zooms a soft
image in less can be scored too; ``--add-sharpness`` adds that column to CSVs written before it existed, without
predicting.

    python experiments/auto_scale.py --model models/unet_dsb2018/model.keras
    python experiments/auto_scale.py --shifts none blur --json experiments/results/auto_scale_blur.json
    python experiments/auto_scale.py --add-sharpness experiments/results/auto_scale.csv experiments/results/auto_scale_blur.csv
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

SHIFTS = ("none", "scale0.5", "scale0.75", "scale1.5", "scale2")


def zoom_columns() -> list[str]:
    from nucleunet import postprocessing

    return [f"map_at_{scale:.2f}" for scale in postprocessing.AUTO_SCALES]


SHARPNESS_LIMITS = (0.03, 0.04, 0.05)


def score_rules(rows: pd.DataFrame, reference: float, others=(250.0, 500.0, 730.0)) -> pd.DataFrame:
    """Mean mAP per shift of each rule: 1x, ``choose_scale`` toward ``reference`` and toward ``others``, the oracle;
    with a ``sharpness`` column, also the rule toward ``reference`` that zooms no image of lower sharpness in.
    The zooms are those the table has columns for (``map_at_<zoom>``), so tables made with other ``AUTO_SCALES``
    are scored as they were made."""
    from nucleunet import adaptation

    columns = [column for column in rows if column.startswith("map_at_")]
    zooms = tuple(float(column.removeprefix("map_at_")) for column in columns)
    by_zoom = rows[columns].to_numpy()

    def rule(area_reference, sharpness_limit=None):
        chosen = []
        for area, sharpness in zip(rows["area_at_1"], rows.get("sharpness", pd.Series(np.inf, index=rows.index))):
            scale = adaptation.choose_scale(area, area_reference, zooms)
            if sharpness_limit is not None and scale > 1.0 and sharpness < sharpness_limit:
                scale = 1.0
            chosen.append(zooms.index(scale))
        return by_zoom[np.arange(len(rows)), chosen]

    scores = {"1x": rows[columns[zooms.index(1.0)]],
              f"auto, toward {reference:.0f} px (the training images')": rule(reference)}
    if "sharpness" in rows:
        for limit in SHARPNESS_LIMITS:
            scores[f"auto, toward {reference:.0f} px, no zoom-in below sharpness {limit}"] = rule(reference, limit)
    for other in others:
        scores[f"auto, toward {other:.0f} px"] = rule(other)
    scores["best zoom per image (oracle)"] = by_zoom.max(axis=1)
    table = pd.DataFrame(scores).assign(shift=rows["shift"]).groupby("shift").mean().T
    table = table[list(dict.fromkeys(rows["shift"]))]
    table["mean"] = table.mean(axis=1)
    return table


def main(argv=None) -> int:
    parser = common.model_parser("auto_scale", __doc__.splitlines()[0])
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), metavar="SHIFT",
                        help=f"shifts of robustness.SHIFTS to score (default: {' '.join(SHIFTS)})")
    parser.add_argument("--add-sharpness", nargs="+", type=Path, metavar="CSV",
                        help="add the sharpness column to per-image CSVs of this script (from the images; no "
                             "prediction), rewrite them, and print every rule's table")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import imaging, metrics, postprocessing, prediction, robustness

    unknown = sorted(set(args.shifts) - set(robustness.SHIFTS))
    if unknown:
        parser.error(f"unknown shifts {unknown}: choose from {' '.join(robustness.SHIFTS)}")
    data = common.cv_images(args.model, args.data, args.quick and not args.add_sharpness)
    settings = data.model.postprocessing.replace(tta=False, scale=1.0)
    if args.add_sharpness:
        tables = {csv_path: pd.read_csv(csv_path) for csv_path in args.add_sharpness}
        ids = sorted(set().union(*(table["image_id"] for table in tables.values())))
        raw = {image_id: (image, labels) for image_id, image, labels in dsb.read_raw_images(data.source, ids)}
        for csv_path, table in tables.items():
            table["sharpness"] = [
                imaging.edge_sharpness(imaging.preprocess(common.shifted(*raw[image_id], shift, image_id)[0],
                                                          data.model.normalization))
                for image_id, shift in zip(table["image_id"], table["shift"])]
            table.to_csv(csv_path, index=False)
            print(f"{csv_path}: CV mAP without test-time augmentation, {table['image_id'].nunique()} images")
            print(score_rules(table, data.reference).round(4).to_string())
        return 0
    shifts = ("none", "scale2") if args.quick else tuple(args.shifts)  # quick: seconds, 3 images
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in dsb.read_raw_images(data.source, data.cv):
        for shift in shifts:
            image, truth = common.shifted(raw, labels, shift, image_id)
            image = imaging.preprocess(image, data.model.normalization)
            row = {"shift": shift, "image_id": image_id, "cluster": data.clusters[image_id],
                   "true_area": postprocessing.typical_area(truth), "sharpness": imaging.edge_sharpness(image)}
            for scale, column in zip(postprocessing.AUTO_SCALES, zoom_columns()):
                maps = prediction.image_maps(data.predict_tiles, image, settings.replace(scale=scale),
                                             tile_size=data.tile_size, min_overlap=data.min_overlap)
                found = settings.labels(maps)
                if scale == 1.0:
                    row["area_at_1"] = postprocessing.typical_area(found)
                row[column] = metrics.average_precision(truth, found)
            rows.append(row)
    table = pd.DataFrame(rows)
    common.write_rule_results(args.json, "auto_scale", data, table, score_rules(table, data.reference),
                              quick=args.quick, seconds=time.perf_counter() - started, model_path=args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a model's CV score is lost: missed, merged and split nuclei, and what each part would score if it were perfect.

For every CV image, the model's maps (its own post-processing and zoom, without test-time augmentation unless
``--tta``) and:

- ``mAP`` and the precision at each IoU threshold 0.50..0.95 (``ap50`` ... ``ap95``);
- at IoU 0.5, every true nucleus left unmatched counted once as ``missed`` (less than half of it in predicted
  nuclei), ``merged`` (most of it in a predicted nucleus that also holds half or more of another true nucleus),
  ``split`` (a fifth or more of it in each of two predicted nuclei) or ``outline`` (the rest: most of it in one
  predicted nucleus, misplaced or misshapen); every predicted nucleus left unmatched as ``spurious`` (less than
  half of it on true nuclei: also one drawn far too large), ``merger`` (half or more of two true nuclei),
  ``fragment`` (on a true nucleus that another predicted nucleus holds a fifth or more of) or ``outline``;
- oracles, each putting the truth in place of one part of the prediction:
  ``oracle_split``: the predicted foreground, each pixel given to the nearest true nucleus within 20 pixels (a
  perfect split); ``true_contacts_r1`` ... ``r4``: the predicted foreground split, by the model's own rule, along the
  true contact band of that radius (``tiling.contact_map``) instead of the predicted one;
  ``true_foreground_and_contacts``: the true foreground and the true contacts of the model's radius (what the
  splitting rule itself loses); ``oracle_drop_unmatched``: the prediction without its nuclei that match no true
  nucleus at IoU 0.5 (what a perfect score cut, ``Postprocessing.min_score``, would give).

Writes ``experiments/results/score_losses.json`` (means, overall and per cluster) and ``score_losses.csv`` (per image).

    python experiments/score_losses.py --model models/unet_dsb2018/model.keras
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

CONTACT_RADII = (1, 2, 3, 4)
ERRORS = ("missed", "merged", "split", "outline")
FALSE = ("spurious", "merger", "fragment", "outline")


def error_counts(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """The unmatched true and predicted nuclei at IoU 0.5, by kind (the module's docstring); ``matched``: the pairs."""
    from nucleunet import metrics

    joint = metrics.overlap_counts(truth, predicted)
    intersection = joint[1:, 1:].astype(np.float64)
    true_area, predicted_area = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    iou = metrics.iou_from_overlaps(joint)
    matched_true, matched_predicted = (iou > 0.5).any(axis=1), (iou > 0.5).any(axis=0)
    in_predicted = intersection / np.maximum(true_area[:, None], 1)  # share of each true nucleus in each prediction
    on_true = intersection / np.maximum(predicted_area[None, :], 1)  # share of each prediction on each true nucleus
    counts = {f"true_{kind}": 0 for kind in ERRORS} | {f"predicted_{kind}": 0 for kind in FALSE}
    for t in np.flatnonzero(~matched_true):
        shares = in_predicted[t]
        if shares.sum() < 0.5:
            kind = "missed"
        elif (np.delete(in_predicted[:, shares.argmax()], t) >= 0.5).any():
            kind = "merged"
        elif (shares >= 0.2).sum() >= 2:
            kind = "split"
        else:
            kind = "outline"
        counts[f"true_{kind}"] += 1
    for p in np.flatnonzero(~matched_predicted):
        shares = on_true[:, p]
        if shares.sum() < 0.5:
            kind = "spurious"
        elif (in_predicted[:, p] >= 0.5).sum() >= 2:
            kind = "merger"
        elif (np.delete(in_predicted[shares.argmax()], p) >= 0.2).any():
            kind = "fragment"
        else:
            kind = "outline"
        counts[f"predicted_{kind}"] += 1
    return {"true": len(true_area), "predicted": len(predicted_area), "matched": int(matched_true.sum()), **counts}


def perfect_split(truth: np.ndarray, foreground: np.ndarray, min_size: int) -> np.ndarray:
    """The predicted foreground, each pixel given to the nearest true nucleus within 20 pixels; the rest as
    connected parts; specks of ``min_size`` pixels or fewer dropped."""
    import skimage.measure
    import skimage.segmentation

    from nucleunet import postprocessing

    nearest = skimage.segmentation.expand_labels(truth, 20) * foreground
    rest = skimage.measure.label(foreground & (nearest == 0))
    return postprocessing.drop_specks(np.where(rest > 0, rest + nearest.max(), nearest), min_size)


def score_image(settings, maps: np.ndarray, truth: np.ndarray, radius: int) -> dict:
    """One image's row: mAP, precision per IoU threshold, error counts and the oracles' mAP."""
    from nucleunet import metrics, tiling

    labels = settings.labels(maps)
    iou = metrics.iou_matrix(truth, labels)
    precisions = metrics.precisions(iou)
    row = {"mAP": float(precisions.mean()),
           **{f"ap{round(t * 100)}": float(p) for t, p in zip(metrics.IOU_THRESHOLDS, precisions)},
           **error_counts(truth, labels),
           "oracle_split": metrics.average_precision(truth, perfect_split(truth, settings.mask(maps),
                                                                          settings.min_size)),
           "oracle_drop_unmatched": float(metrics.precisions(iou[:, (iou > 0.5).any(axis=0)]).mean())}
    if maps.shape[-1] > 1 and settings.marker_height is None:
        contacts = {r: tiling.contact_map(truth, r) for r in sorted({*CONTACT_RADII, radius})}
        for r in CONTACT_RADII:
            true_contacts = np.stack([maps[..., 0], contacts[r]], axis=-1).astype(np.float32)
            row[f"true_contacts_r{r}"] = metrics.average_precision(truth, settings.labels(true_contacts))
        both = np.stack([truth > 0, contacts[radius]], axis=-1).astype(np.float32)
        row["true_foreground_and_contacts"] = metrics.average_precision(truth, settings.labels(both))
    return row


def main(argv=None) -> int:
    parser = common.model_parser("score_losses", __doc__.splitlines()[0], tta=True)
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import imaging, prediction, robustness, tiling

    data = common.cv_images(args.model, args.data, args.quick)
    settings = data.model.postprocessing.replace(tta=args.tta)
    radius = data.model.config.contact_radius if data.model.config is not None else tiling.CONTACT_RADIUS
    started, rows = time.perf_counter(), []
    for image_id, raw, truth in dsb.read_raw_images(data.source, data.cv):
        image = imaging.preprocess(robustness.as_unit_float(raw), data.model.normalization)
        maps = prediction.image_maps(data.predict_tiles, image, settings, tile_size=data.tile_size,
                                     min_overlap=data.min_overlap)
        rows.append({"image_id": image_id, "cluster": data.clusters[image_id],
                     **score_image(settings, maps, truth, radius)})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    scores = [name for name in table.columns if name == "mAP" or name.startswith(("oracle", "true_contacts", "true_f"))]
    counts = [name for name in table.columns if name.startswith(("true_", "predicted_", "matched"))
              and name not in scores] + ["true", "predicted"]
    by_cluster = table.groupby("cluster")[scores].mean()
    print(f"CV, {len(table)} images, {args.model}, tta={args.tta}: mAP, and with one part made perfect")
    print(table[scores].mean().round(4).to_string())
    print("\nper cluster:\n" + by_cluster.round(3).to_string())
    print("\nat IoU 0.5, summed over the images:\n" + table[counts].sum().astype(int).to_string())
    common.write_json(args.json, {
        "benchmark": "score_losses", "quick": args.quick, "model": str(args.model), "images": len(table),
        "postprocessing": dataclasses.asdict(settings), "contact_radius": radius,
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "mean_map": {name: round(float(table[name].mean()), 4) for name in scores},
        "precision_per_iou": {name: round(float(table[name].mean()), 4) for name in table.columns
                              if name.startswith("ap")},
        "counts_at_iou_0.5": {name: int(table[name].sum()) for name in counts},
        "mean_map_by_cluster": {name: {int(c): round(float(v), 4) for c, v in by_cluster[name].items()}
                                for name in scores},
        "per_image": Path(args.json).with_suffix(".csv").name,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

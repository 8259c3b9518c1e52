"""Would stricter seeds split touching nuclei better? Measured on CV.

A contact model splits its foreground (nucleus probability above the threshold) by a watershed on the contact map,
seeded by every connected part of the foreground whose contact probability is at most the contact threshold
(``postprocessing.probability_to_labels``), however small the part. Two stricter rules, as in several DSB2018 solutions:
- drop seed parts of fewer than ``seed_min`` pixels (their pixels go to a neighbouring seed, or form a nucleus of
  their own where no seed is left in that part of the foreground);
- seeds also need a nucleus probability above ``seed_threshold`` (the nuclei's cores);
- with ``--grid necks``: the seed mask eroded by a disk of ``seed_erosion`` pixels, or each seed part cut where it
  narrows (the maxima of its distance transform that stand ``seed_split`` pixels above their surroundings), so that
  two nuclei joined through a gap in the predicted contact line get a seed each.
Each rule is scored over thresholds and contact thresholds around the model's tuned ones, from one prediction per
image (the model's post-processing, by default without test-time augmentation). Also scored, at the model's own
settings: every nucleus grown or shrunk by one pixel (does the threshold leave the outlines too tight or loose?).
Writes ``experiments/results/seed_rules.json`` (mean mAP per setting, best first) and ``seed_rules.csv`` (per image).

    python experiments/seed_rules.py --model models/unet_dsb2018/model.keras
    python experiments/seed_rules.py --grid necks --json experiments/results/seed_necks.json
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

THRESHOLDS = (0.3, 0.4, 0.5)
CONTACT_THRESHOLDS = (0.3, 0.5, 0.7)
SEED_MINS = (0, 3, 6, 10, 20)
SEED_THRESHOLDS = (None, 0.6, 0.7, 0.8)
NECK_THRESHOLDS = (0.4, 0.5)
SEED_EROSIONS = (0, 1, 2, 3)
SEED_SPLITS = (None, 1.0, 2.0, 3.0)


def seeded_labels(maps: np.ndarray, *, threshold: float, contact_threshold: float, min_size: int,
                  seed_min: int = 0, seed_threshold: float | None = None, seed_erosion: int = 0,
                  seed_split: float | None = None) -> np.ndarray:
    """``postprocessing.probability_to_labels`` with a contact map, with the stricter seed rules; ``seed_min`` 0, no
    ``seed_threshold``, ``seed_erosion`` 0 and no ``seed_split`` give the same labels."""
    import skimage.measure
    import skimage.morphology
    import skimage.segmentation
    from scipy import ndimage as ndi

    from nucleunet import postprocessing

    probability, contact = maps[..., 0], maps[..., 1]
    foreground = probability > threshold
    core = foreground if seed_threshold is None else probability > max(seed_threshold, threshold)
    seeds = core & (contact <= contact_threshold)
    if seed_erosion > 0:
        seeds = ndi.binary_erosion(seeds, skimage.morphology.disk(seed_erosion), border_value=1)
    if seed_split is None:
        markers = skimage.measure.label(seeds, connectivity=1)
    else:  # one marker per distance maximum of the seeds, grown back over its seed part
        distance = ndi.distance_transform_edt(seeds)
        peaks = skimage.measure.label(skimage.morphology.h_maxima(distance, seed_split) & seeds)
        markers = skimage.segmentation.watershed(-distance, peaks, mask=seeds)
    if seed_min > 0:
        markers = skimage.morphology.remove_small_objects(markers, max_size=seed_min - 1)  # parts < seed_min
    labels = skimage.segmentation.watershed(contact, markers, mask=foreground)
    return postprocessing.finish_labels(labels, foreground, min_size=min_size)


def shrunk(labels: np.ndarray) -> np.ndarray:
    """Every nucleus without its outermost pixels (those touching the background or another nucleus)."""
    import skimage.morphology

    inner = skimage.morphology.erosion(labels) == skimage.morphology.dilation(labels)
    return np.where(inner, labels, 0)


def setting_name(rule: dict) -> str:
    name = f"threshold {rule['threshold']:g}, contact {rule['contact_threshold']:g}"
    if "seed_erosion" in rule:
        split = "none" if rule["seed_split"] is None else f"{rule['seed_split']:g}"
        return f"{name}, seed erosion {rule['seed_erosion']}, seed split {split}"
    core = "any" if rule["seed_threshold"] is None else f"{rule['seed_threshold']:g}"
    return f"{name}, seed_min {rule['seed_min']}, seed probability {core}"


def rule_grid(which: str, quick: bool) -> list[dict]:
    """The settings scored: ``strict`` (seed size and probability) or ``necks`` (seed erosion and splitting)."""
    if which == "necks":
        names = ("threshold", "contact_threshold", "seed_erosion", "seed_split")
        axes = ((0.4,), (0.5,), SEED_EROSIONS[::2], SEED_SPLITS[:2]) if quick else \
            (NECK_THRESHOLDS, CONTACT_THRESHOLDS, SEED_EROSIONS, SEED_SPLITS)
    else:
        names = ("threshold", "contact_threshold", "seed_min", "seed_threshold")
        axes = (THRESHOLDS[1:2], CONTACT_THRESHOLDS[1:2], SEED_MINS[::4], SEED_THRESHOLDS[:2]) if quick else \
            (THRESHOLDS, CONTACT_THRESHOLDS, SEED_MINS, SEED_THRESHOLDS)
    return [dict(zip(names, values)) for values in itertools.product(*axes)]


def score_image(settings, maps: np.ndarray, truth: np.ndarray, grid) -> dict:
    import skimage.segmentation

    from nucleunet import metrics

    row = {}
    for rule in grid:
        labels = seeded_labels(maps, min_size=settings.min_size, **rule)
        row[setting_name(rule)] = metrics.average_precision(truth, labels)
    own = settings.labels(maps)
    row["model's settings"] = metrics.average_precision(truth, own)
    row["model's settings, grown 1 pixel"] = metrics.average_precision(
        truth, skimage.segmentation.expand_labels(own, 1))
    row["model's settings, shrunk 1 pixel"] = metrics.average_precision(truth, shrunk(own))
    return row


def main(argv=None) -> int:
    parser = common.model_parser("seed_rules", __doc__.splitlines()[0], tta=True)
    parser.add_argument("--grid", choices=("strict", "necks"), default="strict",
                        help="strict: seed size and probability (default); necks: seed erosion and splitting")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import imaging, prediction, robustness

    data = common.cv_images(args.model, args.data, args.quick)
    settings = data.model.postprocessing.replace(tta=args.tta)
    if settings.marker_height is not None:
        parser.error("the model's post-processing splits by distance, not by its contact map")
    grid = rule_grid(args.grid, args.quick)
    started, rows = time.perf_counter(), []
    for image_id, raw, truth in dsb.read_raw_images(data.source, data.cv):
        image = imaging.preprocess(robustness.as_unit_float(raw), data.model.normalization)
        maps = prediction.image_maps(data.predict_tiles, image, settings, tile_size=data.tile_size,
                                     min_overlap=data.min_overlap)
        if maps.shape[-1] < 2:
            parser.error("the model has no contact channel")
        rows.append({"image_id": image_id, "cluster": data.clusters[image_id],
                     **score_image(settings, maps, truth, grid)})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    means = table.drop(columns=["image_id", "cluster"]).mean().sort_values(ascending=False)
    by_cluster = table.drop(columns=["image_id"]).groupby("cluster").mean()
    print(f"CV mAP, {len(table)} images, {args.model}, tta={args.tta}; best 15 of {len(grid)} seed settings:")
    print(means.head(15).round(4).to_string())
    print(means[[name for name in means.index if name.startswith("model's")]].round(4).to_string())
    common.write_json(args.json, {
        "benchmark": "seed_rules", "quick": args.quick, "model": str(args.model), "images": len(table),
        "grid": args.grid, "postprocessing": dataclasses.asdict(settings),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": common.machine(), "mean_map": {name: round(float(value), 4) for name, value in means.items()},
        "mean_map_by_cluster": {name: {int(c): round(float(v), 4) for c, v in by_cluster[name].items()}
                                for name in means.index},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Predicting each image at more than one zoom and averaging the maps: CV mAP of each way of choosing the zooms.

For every CV image, the automatic zoom's choice ``z`` (``adaptation.resolve``), then the model's maps (with
test-time augmentation unless ``--no-tta``) at ``z / sqrt(2)``, ``z``, ``z * sqrt(2)`` and 1x, each resized back to
the image; a zoom outside ``postprocessing.AUTO_SCALES``' range is left out. Each variant averages some of them and is
scored with the model's own post-processing (its score cut included):

- ``z``: the automatic zoom alone (what the model does today);
- ``z, z*sqrt2`` / ``z/sqrt2, z`` / ``z/sqrt2, z, z*sqrt2``: with one or both neighbours;
- ``z, 1x``: with the image's own size (1x alone where ``z`` is 1).

Writes ``experiments/results/multi_zoom.json`` (CV mAP and pixel Dice of each variant, overall and per cluster, and the
seconds each zoom took) and ``multi_zoom.csv`` (per image and variant).

    python experiments/multi_zoom.py --model models/unet_dsb2018/model.keras

``--quick``: the same on 3 CV images (the real model and data; numbers mean nothing).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

VARIANTS = {
    "z": ("z",),
    "z, z*sqrt2": ("z", "up"),
    "z/sqrt2, z": ("down", "z"),
    "z/sqrt2, z, z*sqrt2": ("down", "z", "up"),
    "z, 1x": ("z", "one"),
}


def zooms_of(z: float) -> dict:
    """The zooms predicted for an image whose automatic zoom is ``z``: name -> zoom, those within the model's range
    (``postprocessing.within_zoom_range``, as ``Postprocessing.extra_zooms`` keeps them)."""
    from nucleunet import postprocessing

    zooms = {"z": z, "down": z / math.sqrt(2), "up": z * math.sqrt(2), "one": 1.0}
    return {name: zoom for name, zoom in zooms.items() if postprocessing.within_zoom_range(zoom)}


def variant_maps(maps: dict, names: tuple) -> np.ndarray:
    """The mean of the maps of ``names`` that were predicted (each zoom counted once)."""
    chosen = {}
    for name in names:
        if name in maps:
            chosen.setdefault(round(maps[name][0], 4), maps[name][1])
    return np.mean(list(chosen.values()), axis=0)


def main(argv=None) -> None:
    parser = common.model_parser("multi_zoom", __doc__.split("\n")[0])
    parser.add_argument("--no-tta", action="store_true", help="predict without test-time augmentation")
    parser.add_argument("--keep", type=Path, help="also save each image's maps at each zoom here (npz, float16)")
    args = parser.parse_args(argv)
    import dsb
    from nucleunet import adaptation, imaging, metrics, prediction, robustness

    data = common.cv_images(args.model, args.data, args.quick)
    settings = data.model.postprocessing.replace(tta=not args.no_tta)
    if settings.scale != "auto":
        settings = settings.replace(scale="auto", nucleus_area=settings.nucleus_area or data.reference)
    rows, seconds = [], {name: [] for name in ("z", "down", "up", "one")}
    start = time.perf_counter()
    for image_id, raw, truth in dsb.read_raw_images(data.source, data.cv):
        image = imaging.preprocess(robustness.as_unit_float(raw), data.model.normalization)
        resolved, _ = adaptation.resolve(settings, image, prediction.first_pass(
            data.predict_tiles, settings, tile_size=data.tile_size, min_overlap=data.min_overlap))
        maps = {}
        for name, zoom in zooms_of(resolved.scale).items():
            took, predicted = common.timed(prediction.predict_maps, data.predict_tiles, image, tile_size=data.tile_size,
                                           min_overlap=data.min_overlap, tta=settings.tta, scale=zoom)
            maps[name] = (zoom, predicted)
            seconds[name].append(took)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.keep / f"{image_id}.npz", truth=truth.astype(np.int32),
                                **{f"{name}_{zoom:.4f}": m.astype(np.float16) for name, (zoom, m) in maps.items()})
        for variant, names in VARIANTS.items():
            averaged = variant_maps(maps, names)
            score = metrics.score_image(truth, resolved.labels(averaged), resolved.mask(averaged))
            rows.append({"image_id": image_id, "cluster": data.clusters[image_id], "zoom": resolved.scale,
                         "variant": variant, "map": score.map, "dice": score.dice, "ap50": score.ap50,
                         "predicted": score.predicted, "true": score.true})
        print(f"{len(rows) // len(VARIANTS):3d} {image_id[:12]} zoom {resolved.scale:.2f} "
              + " ".join(f"{row['map']:.3f}" for row in rows[-len(VARIANTS):]), flush=True)
    table = pd.DataFrame(rows)
    overall = table.groupby("variant", sort=False)[["map", "dice"]].mean()
    by_cluster = table.pivot_table(index="variant", columns="cluster", values="map", aggfunc="mean", sort=False)
    print(f"\nCV, {len(data.cv)} images, {'with' if settings.tta else 'without'} test-time augmentation:")
    print(overall.round(4).to_string())
    print(by_cluster.round(3).to_string())
    csv_path = Path(args.json).with_suffix(".csv")
    table.to_csv(csv_path, index=False)
    common.write_json(args.json, {
        "benchmark": "multi_zoom", "quick": args.quick, "model": str(args.model), "images": len(data.cv),
        "tta": settings.tta, "postprocessing": {k: v for k, v in dataclasses.asdict(settings).items() if k != "score_model"},
        "seconds": round(time.perf_counter() - start, 1),
        "seconds_per_image": {name: round(float(np.mean(v)), 3) for name, v in seconds.items() if v},
        "images_per_zoom": {name: len(v) for name, v in seconds.items()},
        "cv_map": {variant: round(float(value), 4) for variant, value in overall["map"].items()},
        "cv_dice": {variant: round(float(value), 4) for variant, value in overall["dice"].items()},
        "cv_map_by_cluster": {variant: {str(c): round(float(v), 4) for c, v in values.items()}
                              for variant, values in by_cluster.iterrows()},
        "per_image": csv_path.name, "machine": common.machine()})


if __name__ == "__main__":
    main()

"""Do bright specks dim the nuclei, and does the automatic gain bring them back? The model's CV fluorescence images.

A few specks far brighter than the nuclei (debris, a dead cell) become the top of ``imaging.preprocess``'s intensity
stretch and squash every nucleus to the bottom of the range. This paints specks (disks of the given radius and
brightness, a multiple of the image's 99.95th percentile) at random places (seeded per image) on the fluorescence images
(clusters 0-3) of the model's CV split (``--subset test``: its test images, only once a decision is made) and scores
them with the model's post-processing without test-time augmentation, ``auto_gain`` off and on. Writes
``bench/results/bright_specks.json`` (mAP per condition, how many images were brightened) and ``bright_specks.csv``
(per image).

    python bench/bright_specks.py
"""

from __future__ import annotations

import time
from pathlib import Path

import common
import numpy as np
import pandas as pd

# (specks, radius in pixels, brightness as a multiple of the image's 99.95th percentile)
CONDITIONS = {"none": (0, 0, 0.0), "3 specks, radius 4, 5x": (3, 4, 5.0), "10 specks, radius 6, 5x": (10, 6, 5.0),
              "10 specks, radius 6, 20x": (10, 6, 20.0)}
FLUORESCENCE_CLUSTERS = (0, 1, 2, 3)


def with_specks(raw: np.ndarray, seed: int, count: int, radius: int, brightness: float) -> np.ndarray:
    """``raw`` (a gray image) as float32 in its own units with ``count`` disks of ``brightness`` times its 99.95th
    percentile painted at random places."""
    import robustness
    import skimage.draw

    image = robustness.as_unit_float(raw)
    image = image if image.ndim == 2 else image.mean(axis=-1)
    rng, painted, top = np.random.default_rng(seed), image.copy(), np.percentile(image, 99.95)
    for _ in range(count):
        rows, cols = skimage.draw.disk((rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1])), radius,
                                       shape=image.shape)
        painted[rows, cols] = brightness * top
    return painted


def main(argv=None) -> int:
    args = common.model_parser("bright_specks", __doc__.splitlines()[0], subset=True).parse_args(argv)

    import dsb
    import imaging
    import pipeline
    import robustness
    import segment
    import stratify

    model = pipeline.TrainedModel.open(args.model)
    split = stratify.read_split(model.split)
    chosen = split[(split["subset"] == args.subset) & split["cluster"].astype(int).isin(FLUORESCENCE_CLUSTERS)]
    ids = sorted(chosen["image_id"])[: 3 if args.quick else None]
    clusters = dict(zip(split["image_id"], split["cluster"].astype(int)))
    predict_tiles, tile_size, min_overlap = model.predictor()
    base = model.postprocessing.replace(tta=False)
    if base.scale != "auto":
        raise SystemExit(f"the automatic gain works with the automatic zoom: the model's post-processing has scale "
                         f"{base.scale!r}")
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(args.data), ids):
        for condition, (count, radius, brightness) in CONDITIONS.items():
            shifted = with_specks(raw, robustness.image_seed(image_id), count, radius, brightness) if count else raw
            image = imaging.preprocess(shifted, model.normalization)
            for auto_gain in (False, True):
                settings = base.replace(auto_gain=auto_gain)
                gain = 1.0
                if auto_gain:  # what segment_image chooses (its first pass made once more, to report it)
                    prepared, prepared_settings = settings.prepare(image)
                    gain = prepared_settings.resolve(predict_tiles, prepared, tile_size=tile_size,
                                                     min_overlap=min_overlap)[0].gain
                found = segment.segment_image(predict_tiles, image, settings, tile_size=tile_size,
                                              min_overlap=min_overlap, probability=False)
                score = segment.score_image(labels, found.labels, found.mask)
                rows.append({"image_id": image_id, "cluster": clusters[image_id], "condition": condition,
                             "auto_gain": auto_gain, "gain": round(gain, 4), "map": score.map,
                             "dice": score.dice})
    table = pd.DataFrame(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    mean_map = table.pivot_table(index="condition", columns="auto_gain", values="map").reindex(list(CONDITIONS))
    brightened = (table[table["auto_gain"]].assign(brightened=lambda rows: rows["gain"] > 1)
                  .groupby("condition")["brightened"].sum().reindex(list(CONDITIONS)))
    print(f"mAP of {len(ids)} {args.subset} fluorescence images without test-time augmentation, auto_gain off and on "
          f"(images brightened):")
    print(mean_map.assign(brightened=brightened).round(4).to_string())
    common.write_json(args.json, {
        "benchmark": "bright_specks", "quick": args.quick, "model": str(args.model), "subset": args.subset,
        "images": len(ids), "conditions": {name: list(values) for name, values in CONDITIONS.items()},
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "mean_map": {condition: {"off": round(float(values[False]), 4), "on": round(float(values[True]), 4),
                                 "brightened": int(brightened[condition])}
                     for condition, values in mean_map.iterrows()},
        "per_image": Path(args.json).with_suffix(".csv").name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

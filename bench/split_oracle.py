"""Where the DSB score is lost: the model's nuclei, a perfect split of its foreground, and the true masks.

For every image of a split subset (CV by default), three mAPs (mean over IoU 0.50..0.95):

- ``predicted``: the model's probability, threshold 0.5, connected components, specks <= 30 px dropped
  (the one-channel defaults);
- ``oracle_split``: the same predicted foreground, each pixel given to the nearest true nucleus (within
  20 px; the rest as connected components): what a perfect splitting of touching nuclei would score;
- ``true_mask_components``: the true union mask cut by connected components: what the pixel-perfect
  foreground scores without any splitting.

    python bench/split_oracle.py runs/<run> [--subset cv]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import common  # noqa: F401 - puts the project on sys.path and quiets TensorFlow's start-up before it loads
import numpy as np
import pandas as pd
import skimage.measure
import skimage.segmentation

import dsb
import pipeline
import segment
import stratify
from config import TrainConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a training run folder (config.json, model.keras, split.csv)")
    parser.add_argument("--subset", default="cv", choices=("cv", "test", "train"))
    args = parser.parse_args(argv)

    config = dataclasses.replace(TrainConfig.load(args.run / "config.json"), split=str(args.run / "split.csv"))
    records, split, _ = pipeline.load_data(config, cache_dir=dsb.DEFAULT_CACHE_DIR, progress=False)
    chosen = stratify.subset_records(records, split, args.subset)
    cluster = dict(zip(split["image_id"], split["cluster"]))
    predict_tiles, tile_size, min_overlap = pipeline.TrainedModel.open(args.run / "model.keras").predictor()
    rows = []
    for record in chosen:
        probability = segment.predict_maps(predict_tiles, record.image, tile_size=tile_size,
                                           min_overlap=min_overlap)[..., 0]
        foreground = probability > 0.5
        nearest = skimage.segmentation.expand_labels(record.labels, 20) * foreground
        rest = skimage.measure.label(foreground & (nearest == 0))
        oracle = segment.drop_specks(np.where(rest > 0, rest + nearest.max(), nearest), 30)
        rows.append({
            "cluster": int(cluster[record.image_id]),
            "predicted": segment.average_precision(record.labels, segment.probability_to_labels(probability)),
            "oracle_split": segment.average_precision(record.labels, oracle),
            "true_mask_components": segment.average_precision(
                record.labels, skimage.measure.label(record.mask, connectivity=1)),
        })
    table = pd.DataFrame(rows)
    print(f"{args.subset} split, {len(table)} images: mAP per cluster and overall")
    print(table.groupby("cluster").mean().round(3).to_string())
    print(table.drop(columns="cluster").mean().round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does smoothing noisy images before prediction help? The model's CV images, clean, noisy and in low light.

``Postprocessing.denoise`` smooths an image whose pixel noise is above ``adaptation.MIN_DENOISE_NOISE`` and whose edges
are not soft (``adaptation.denoises``). This scores the model's CV images (``--subset test``: its test images,
only once a decision is made) with its post-processing without test-time augmentation, ``denoise`` off and on, under
four conditions: as they are; the robustness table's 'noise' and 'blur+noise' shifts; and low light, each preprocessed
image multiplied by ``PHOTONS`` and replaced by a Poisson draw (the photon noise of a dim exposure: 20 photons at the
brightest pixel, seeded per image). Writes ``experiments/results/denoise.json`` (mAP per condition and cluster, how many
images were smoothed) and ``denoise.csv`` (per image).

    python experiments/denoise.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

PHOTONS = 20
CONDITIONS = ("none", "noise", "blur+noise", "low light")


def low_light(image: np.ndarray, seed: int, photons: float = PHOTONS) -> np.ndarray:
    """A preprocessed image (float in [0, 1]) as photon counts of a dim exposure: Poisson draws of ``photons`` times
    it, float32 (``preprocess`` stretches the counts again)."""
    return np.random.default_rng(seed).poisson(image * photons).astype(np.float32)


def main(argv=None) -> int:
    args = common.model_parser("denoise", __doc__.splitlines()[0], subset=True).parse_args(argv)

    import dsb
    from nucleunet import adaptation, imaging, metrics, models, prediction, robustness, stratify

    model = models.TrainedModel.open(args.model)
    split = stratify.read_split(model.split)
    ids = sorted(split.loc[split["subset"] == args.subset, "image_id"])[: 3 if args.quick else None]
    clusters = dict(zip(split["image_id"], split["cluster"].astype(int)))
    predict_tiles, tile_size, min_overlap = model.predictor("float32")
    base = model.postprocessing.replace(tta=False)
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(args.data), ids):
        seed = robustness.image_seed(image_id)
        for condition in CONDITIONS:
            if condition == "low light":
                shifted = low_light(imaging.preprocess(raw, model.normalization), seed)
            else:
                shifted = robustness.perturb(raw, labels, condition, seed=seed)[0]
            image = imaging.preprocess(shifted, model.normalization)
            for denoise in (False, True):
                settings = base.replace(denoise=denoise)
                found = prediction.segment_image(predict_tiles, image, settings, tile_size=tile_size,
                                              min_overlap=min_overlap, probability=False)
                score = metrics.score_image(labels, found.labels, found.mask)
                rows.append({"image_id": image_id, "cluster": clusters[image_id], "condition": condition,
                             "denoise": denoise, "smoothed": found.smoothed,
                             "noise_sigma": round(imaging.noise_sigma(imaging.central(image)), 5),
                             "map": score.map, "dice": score.dice})
    table = pd.DataFrame(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    mean_map = table.pivot_table(index="condition", columns="denoise", values="map").reindex(list(CONDITIONS))
    smoothed = table[table["denoise"]].groupby("condition")["smoothed"].sum().reindex(list(CONDITIONS))
    print(f"mAP of {len(ids)} {args.subset} images without test-time augmentation, denoise off and on "
          f"(images smoothed):")
    print(mean_map.assign(smoothed=smoothed).round(4).to_string())
    per_cluster = table.pivot_table(index=["condition", "cluster"], columns="denoise", values="map")
    common.write_json(args.json, {
        "benchmark": "denoise", "quick": args.quick, "model": str(args.model), "subset": args.subset,
        "images": len(ids), "photons": PHOTONS, "limit": adaptation.MIN_DENOISE_NOISE,
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "mean_map": {condition: {"off": round(float(values[False]), 4), "on": round(float(values[True]), 4),
                                 "smoothed": int(smoothed[condition])}
                     for condition, values in mean_map.iterrows()},
        "per_cluster": {f"{condition} / {cluster}": {"off": round(float(values[False]), 4),
                                                     "on": round(float(values[True]), 4)}
                        for (condition, cluster), values in per_cluster.iterrows()},
        "per_image": Path(args.json).with_suffix(".csv").name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

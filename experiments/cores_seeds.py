"""Why did the 'cores' recipe lose on the leave-one-cluster-out measure: its seeds, or its network's maps?

For held-out clusters 1 and 3, 20 of the cluster's images (drawn with seed 0) are segmented by the network that
``leave_cluster_out.py --recipe cores`` trained without the cluster, seeded by its cores (at core probabilities over
0.3, 0.5, 0.7) and by its contact channel alone (contact threshold 0.5, the run's, and 0.2), and by today's network
seeded by its contacts: mAP and nuclei per image. Needs the runs under runs/leave-cluster-out/ and the code of the
'cores' recipe (removed after its rule rejected it: docs/results/leave-cluster-out/decision.txt).

    python experiments/cores_seeds.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import common

CLUSTERS = (1, 3)
IMAGES = 20


def main() -> None:
    import dsb
    import nucleunet
    from nucleunet import metrics, postprocessing, prediction, stratify

    split = stratify.read_split(common.PROJECT_DIR / "docs" / "results" / "split.csv")
    every = None
    results = {"experiment": "cores_seeds", "images_per_cluster": IMAGES, "clusters": {}}
    for cluster in CLUSTERS:
        ids = sorted(split.loc[split["cluster"] == cluster, "image_id"])
        ids = set(np.random.default_rng(0).choice(ids, min(IMAGES, len(ids)), replace=False))
        results["clusters"][str(cluster)] = {}
        for recipe in ("cores", "today"):
            run = sorted((common.PROJECT_DIR / "runs" / "leave-cluster-out" / recipe / f"cluster{cluster}").glob(
                "*/model.keras"))[0].parent
            model = nucleunet.load_model(run, engine="keras")
            if every is None:
                every = dsb.load_dataset(dsb.find_dataset(None), cache_dir=dsb.DEFAULT_CACHE_DIR,
                                         percentiles=model.normalization, progress=False)
            records = [record for record in every if record.image_id in ids]
            settings = model.postprocessing
            ways = {"contacts 0.5": lambda maps, settings=settings: settings.labels(maps[..., :2]),
                    "contacts 0.2": lambda maps, settings=settings: settings.replace(contact_threshold=0.2).labels(maps[..., :2])}
            if recipe == "cores":
                for level in (0.3, 0.5, 0.7):
                    def by_cores(maps, level=level, settings=settings):
                        postprocessing.CORE_THRESHOLD = level
                        try:
                            return settings.labels(maps)
                        finally:
                            postprocessing.CORE_THRESHOLD = 0.5
                    ways[f"cores {level}"] = by_cores
            scores = {name: [] for name in ways}
            counts = {name: [] for name in ways}
            predict_tiles, tile_size, min_overlap = model.predictor
            for record in records:
                maps = prediction.predict_maps(predict_tiles, record.image, tile_size=tile_size,
                                               min_overlap=min_overlap)
                for name, way in ways.items():
                    labels = way(maps)
                    scores[name].append(metrics.average_precision(record.labels, labels))
                    counts[name].append(int(labels.max()))
            results["clusters"][str(cluster)][recipe] = {
                name: {"map": round(float(np.mean(scores[name])), 4),
                       "nuclei_per_image": round(float(np.mean(counts[name])), 2)} for name in ways}
            results["clusters"][str(cluster)]["true_nuclei_per_image"] = round(
                float(np.mean([int(record.labels.max()) for record in records])), 2)
            print(cluster, recipe, results["clusters"][str(cluster)][recipe], flush=True)
    path = common.RESULTS_DIR / "cores_seeds.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {Path(path).relative_to(common.PROJECT_DIR)}")


if __name__ == "__main__":
    main()

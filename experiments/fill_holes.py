"""Holes in predicted nuclei: what filling them (``postprocessing.fill_holes``) does on kinds never seen in training.

Each network that ``experiments/leave_cluster_out.py`` trained without one cluster segments that cluster's images as
the measure does (the run's own ``postprocessing.json``: 1x, no test-time augmentation), and the nuclei are scored
as they come and with their holes filled. Without filling, the numbers must be the runs' own (``metrics.json``): a
check that the images are segmented as the measure segmented them. The rule: docs/results/fill-holes/.

    python experiments/fill_holes.py                      # contact-weight and contact-weight-seed1
    python experiments/fill_holes.py --recipes today --clusters 4
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import common

RUNS = common.PROJECT_DIR / "runs" / "leave-cluster-out"
SPLIT = common.PROJECT_DIR / "docs" / "results" / "split.csv"
FLUORESCENCE = (0, 1, 2, 3)


def held_out(run: Path, cluster: int, split_path: Path = SPLIT) -> list:
    """The records of ``cluster``'s images, read and normalized as ``run``'s training run scored them."""
    import dsb
    from nucleunet import stratify
    from nucleunet.config import TrainConfig

    split = stratify.read_split(split_path)
    ids = set(split.loc[split["cluster"] == cluster, "image_id"])
    config = TrainConfig.load(run / "config.json")
    records = dsb.load_dataset(dsb.find_dataset(config.data), cache_dir=dsb.DEFAULT_CACHE_DIR,
                               percentiles=config.normalization, progress=False)
    return [record for record in records if record.image_id in ids]


def score_cluster(run: Path, cluster: int) -> dict:
    """Per image: mAP and nuclei as segmented, and with holes filled; and the run's own mAP of the image."""
    import nucleunet
    from nucleunet.metrics import score_image
    from nucleunet.postprocessing import fill_holes

    model = nucleunet.load_model(run, engine="keras")
    own = {row["image_id"]: row["map"] for row in json.loads((run / "metrics.json").read_text())["per_image"]}
    rows = []
    for record in held_out(run, cluster):
        found = model.segment(record.image, preprocessed=True, name=record.image_id)
        filled = fill_holes(found.labels)
        plain, with_fill = score_image(record.labels, found.labels), score_image(record.labels, filled)
        rows.append({"image_id": record.image_id, "run_map": own[record.image_id], "map": plain.map,
                     "map_filled": with_fill.map, "predicted": plain.predicted,
                     "filled_pixels": int(((filled > 0) & (found.labels == 0)).sum())})
    return {"images": len(rows), "map": float(np.mean([r["map"] for r in rows])),
            "map_filled": float(np.mean([r["map_filled"] for r in rows])),
            "run_map": float(np.mean([r["run_map"] for r in rows])),
            "most_off_run": float(max(abs(r["map"] - r["run_map"]) for r in rows)), "per_image": rows}


def summary(clusters: dict[int, dict]) -> dict:
    out = {}
    for key in ("map", "map_filled", "run_map"):
        values = {c: v[key] for c, v in clusters.items()}
        out[key] = {"mean_over_clusters": float(np.mean(list(values.values()))),
                    "fluorescence": float(np.mean([m for c, m in values.items() if c in FLUORESCENCE])),
                    "stained_or_brightfield": float(np.mean([m for c, m in values.items() if c not in FLUORESCENCE]))}
    return out


def main() -> None:
    parser = common.base_parser("fill_holes", __doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["contact-weight", "contact-weight-seed1"])
    parser.add_argument("--clusters", type=int, nargs="+", default=list(range(8)))
    args = parser.parse_args()
    results = {"experiment": "fill_holes", "machine": common.machine(), "recipes": {}}
    rows = []
    for recipe in args.recipes:
        clusters = {}
        for cluster in args.clusters:
            run = sorted((RUNS / recipe / f"cluster{cluster}").glob("*/model.keras"))[-1].parent
            clusters[cluster] = score_cluster(run, cluster)
            found = clusters[cluster]
            print(f"{recipe} cluster {cluster}: {found['map']:.4f} (run {found['run_map']:.4f}, most off "
                  f"{found['most_off_run']:.4f}) -> filled {found['map_filled']:.4f}", flush=True)
        results["recipes"][recipe] = {"summary": summary(clusters), "clusters": {str(c): v for c, v in clusters.items()}}
        for key, what in (("run_map", "the run's own"), ("map", "segmented again"), ("map_filled", "holes filled")):
            s = results["recipes"][recipe]["summary"][key]
            rows.append((recipe, what, s["mean_over_clusters"], s["fluorescence"], s["stained_or_brightfield"]))
    common.print_table("Held-out clusters, holes filled or not", rows,
                       ("recipe", "nuclei", "mean mAP", "fluorescence", "stained/brightfield"))
    common.write_json(args.json, results)


if __name__ == "__main__":
    main()

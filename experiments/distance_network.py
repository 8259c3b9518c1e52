"""Did the recipe 'distance' win or lose by its seeds or by its network? The same networks' maps split both ways.

Each network that ``leave_cluster_out.py --recipe distance`` trained (one per held-out cluster) predicts its held-out
images as the measure scores them (1x, no test-time augmentation, the preset's thresholds); the maps are split into
nuclei by the distance domes (the recipe's seeds) and by the contact channel alone (the seeds of every other recipe,
``maps[..., :2]``). The difference between the two is what the seeds do; the rest of the recipe's difference to
'contact-weight' is its network's. Writes ``experiments/results/distance_network.json``.

    python experiments/distance_network.py --every 2
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import common


def main(argv=None) -> int:
    parser = common.base_parser("distance_network", __doc__.splitlines()[0])
    parser.add_argument("--data", help="the DSB2018 training data (default: as train finds it)")
    parser.add_argument("--runs", default=str(common.PROJECT_DIR / "runs" / "leave-cluster-out" / "distance"),
                        help="the recipe's runs (one folder per held-out cluster)")
    parser.add_argument("--every", type=int, default=1, help="score every Nth held-out image (default: all)")
    parser.add_argument("--clusters", type=int, nargs="+", default=list(range(8)))
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import metrics, models, prediction

    records = dsb.load_dataset(dsb.find_dataset(args.data), progress=False)
    started, results = time.perf_counter(), {}
    for cluster in args.clusters:
        folder = Path(args.runs) / f"cluster{cluster}"
        (model_path,) = sorted(folder.glob("*/model.keras"))[-1:]
        model = models.TrainedModel.open(model_path)
        split = pd.read_csv(folder / "split.csv")
        held = set(split.loc[split["cluster"] == cluster, "image_id"])
        chosen = [record for record in records if record.image_id in held][::args.every]
        if args.quick:
            chosen = chosen[:2]
        settings = model.postprocessing.replace(scale=1.0, tta=False, extra_zooms=(), min_score=None,
                                                score_model=None)
        predict_tiles, tile_size, min_overlap = model.predictor("keras")
        domes, contacts = [], []
        for record in chosen:
            maps = prediction.predict_maps(predict_tiles, record.image, tile_size=tile_size, min_overlap=min_overlap)
            domes.append(metrics.average_precision(record.labels, settings.labels(maps)))
            contacts.append(metrics.average_precision(record.labels, settings.labels(maps[..., :2])))
        results[str(cluster)] = {"images": len(chosen), "map_domes": float(np.mean(domes)),
                                 "map_contacts": float(np.mean(contacts))}
        print(f"cluster {cluster}: {len(chosen)} images, mAP split by the distance domes {np.mean(domes):.4f}, "
              f"by the contact channel {np.mean(contacts):.4f}")
    means = {key: float(np.mean([row[key] for row in results.values()])) for key in ("map_domes", "map_contacts")}
    print(f"mean over the clusters: domes {means['map_domes']:.4f}, contacts {means['map_contacts']:.4f}")
    common.write_json(args.json, {"every": args.every, "quick": args.quick, "per_cluster": results,
                                  "mean_over_clusters": means, "seconds": round(time.perf_counter() - started, 1),
                                  "machine": common.machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

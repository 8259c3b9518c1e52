"""How the seeds of a distance-aware U-Net split its nuclei, with the true distance map in place of a prediction.

No model: each training image's true nuclei give its distance map (``tiling.distance_map``), blurred by a Gaussian as
a stand-in for a network's softer prediction, and the foreground is the true one. ``postprocessing.probability_to_labels``
seeds one nucleus per dome that rises at least ``SEED_DYNAMIC`` (each value of ``DYNAMICS`` in turn) and grows the
seeds down the domes. Reported per dynamic and blur: mAP against the true nuclei, and the share of true nuclei cut in
two (at least a fifth of it in each of two predicted nuclei: over-split) or joined to another (at least half of
each in one predicted nucleus: merged). The contact channel is not used by these seeds, so
it is given as zeros. This chose the dynamic of the recipe 'distance' before its leave-one-cluster-out run
(docs/results/leave-cluster-out/decision_rule.txt): the one whose lowest mAP over the three blurs is highest. Only
the train images of the split are used.

    python experiments/distance_seeds.py
"""

from __future__ import annotations

import time
from unittest import mock

import numpy as np
import pandas as pd
import scipy.ndimage as ndi

import common

DYNAMICS = (0.1, 0.2, 0.3, 0.4, 0.5)
BLURS = (0.0, 1.0, 2.0)  # Gaussian sigma in pixels


def main(argv=None) -> int:
    parser = common.base_parser("distance_seeds", __doc__.splitlines()[0])
    parser.add_argument("--data", help="the DSB2018 training data (default: as train finds it)")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import metrics, postprocessing, tiling

    split = pd.read_csv(common.PROJECT_DIR / "docs" / "results" / "split.csv")
    train = set(split.loc[split["subset"] == "train", "image_id"])
    records = [record for record in dsb.load_dataset(dsb.find_dataset(args.data), progress=False)
               if record.image_id in train]
    records = records[:: 60 if args.quick else 2]
    started, rows = time.perf_counter(), []
    for record in records:
        truth = record.labels
        foreground = (truth > 0).astype(np.float32)
        target = tiling.distance_map(truth)
        for blur in BLURS:
            distance = ndi.gaussian_filter(target, blur) if blur else target
            for dynamic in DYNAMICS:
                with mock.patch.object(postprocessing, "SEED_DYNAMIC", dynamic):
                    labels = postprocessing.probability_to_labels(
                        foreground, threshold=0.5, min_size=0, contact=np.zeros_like(foreground), distance=distance)
                joint = metrics.overlap_counts(truth, labels)
                iou = metrics.iou_from_overlaps(joint)
                matched = iou > 0.5
                share = joint[1:, 1:] / np.maximum(joint[1:, :].sum(axis=1), 1)[:, None]  # of each true nucleus
                joined = (share >= 0.5).sum(axis=0) > 1  # predicted nuclei holding most of two true ones
                rows.append({"image_id": record.image_id, "blur": blur, "dynamic": dynamic,
                             "map": metrics.average_precision(truth, labels),
                             "true": iou.shape[0], "found": int(matched.any(axis=1).sum()),
                             "over_split": int(((share >= 0.2).sum(axis=1) > 1).sum()),
                             "merged": int((share[:, joined] >= 0.5).sum())})
    table = pd.DataFrame(rows)
    summary = table.groupby(["blur", "dynamic"]).agg(map=("map", "mean"), true=("true", "sum"), found=("found", "sum"),
                                                     over_split=("over_split", "sum"), merged=("merged", "sum"))
    for column in ("found", "over_split", "merged"):
        summary[column] = summary[column] / summary["true"]
    summary = summary.drop(columns="true").reset_index()
    print(f"{len(records)} train images, true foreground, true distance map blurred:")
    print(summary.round(4).to_string(index=False))
    common.write_json(args.json, {"images": len(records), "quick": args.quick,
                                  "seconds": round(time.perf_counter() - started, 1),
                                  "summary": summary.round(4).to_dict(orient="records")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

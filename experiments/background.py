"""How uneven is the background of the CV images, as they are and under the robustness shifts? No model needed.

Predicting flattens the background first (``imaging.flatten_background``) of an image whose background level varies by
more than ``adaptation.MAX_BACKGROUND_UNEVENNESS`` (``imaging.background_unevenness``, in the preprocessed image's 0-1
range). The limit is meant to leave the images as the training set shows them alone and to catch a flat-field error:
the 'background' (a ramp added) and 'shading' (vignetting) shifts of ``robustness.SHIFTS``. Images are preprocessed
with the model's normalization, as predicting sees them; the noise of each image is the one ``evaluate --perturb``
draws for it. Writes ``experiments/results/background.json`` (per shift: the range, quartiles and the share above the limit;
for limits 0.02-0.30 the share of the clean, ramped and shaded images above each; the smallest limit that at most 5 %
of the clean images pass) and ``background.csv`` (per image).

    python experiments/background.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import common

LIMITS = tuple(round(0.02 + 0.01 * step, 2) for step in range(29))
MOST_CLEAN_ABOVE = 0.05  # the share of the clean images the limit may flatten


def main(argv=None) -> int:
    parser = common.model_parser("background", __doc__.splitlines()[0],
                                 model_help="whose split (CV images) and normalization to use")
    args = parser.parse_args(argv)

    from nucleunet import adaptation, imaging, robustness

    model, cv, images = common.cv_raw_images(args.model, args.data, args.quick)
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in images:
        for shift in robustness.SHIFTS:
            image = imaging.preprocess(common.shifted(raw, labels, shift, image_id)[0], model.normalization)
            rows.append({"shift": shift, "image_id": image_id,
                         "unevenness": imaging.background_unevenness(image)})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    limit = adaptation.MAX_BACKGROUND_UNEVENNESS
    by_shift = table.groupby("shift", sort=False)["unevenness"]
    summary = by_shift.describe()[["count", "min", "25%", "50%", "75%", "max"]]
    summary[f"above {limit}"] = by_shift.apply(lambda values: float((values > limit).mean()))
    print(f"Background unevenness of {len(cv)} CV images (limit for flattening: {limit}):")
    print(summary.round(3).to_string())
    groups = {name: table["shift"] == name for name in ("none", "background", "shading")}
    sweep = {f"{candidate:.2f}": {name: round(float((table.loc[rows, "unevenness"] > candidate).mean()), 4)
                                  for name, rows in groups.items()} for candidate in LIMITS}
    print("Share of images above each limit:")
    print(pd.DataFrame(sweep).T.to_string())
    chosen = next((candidate for candidate in LIMITS if sweep[f"{candidate:.2f}"]["none"] <= MOST_CLEAN_ABOVE), None)
    print(f"Smallest limit that at most {MOST_CLEAN_ABOVE:.0%} of the clean images pass: {chosen}")
    common.write_json(args.json, {
        "benchmark": "background", "quick": args.quick, "model": str(args.model), "images": len(cv), "limit": limit,
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "per_shift": {shift: {key: round(float(value), 4) for key, value in values.items()}
                      for shift, values in summary.iterrows()},
        "share_above_limits": sweep, "most_clean_above": MOST_CLEAN_ABOVE, "smallest_limit": chosen,
        "per_image": Path(args.json).with_suffix(".csv").name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

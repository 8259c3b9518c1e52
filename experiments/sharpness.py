"""How sharp are the CV images, as they are, shrunk or enlarged, and under the robustness shifts? No model needed.

The automatic zoom zooms no image in whose edges are softer than ``adaptation.MIN_ZOOM_IN_SHARPNESS``
(``imaging.edge_sharpness``), since zooming a blurred image in enlarges its blur too. This checks the limit against
the images it must not hold back: those of small nuclei (CV images shrunk 0.25x-0.5x, as at a lower magnification),
which need zooming in, also with noise added, and against those it is for (blurred, with and without noise). Images
are preprocessed with the ready model's normalization, as the zoom sees them; the noise of each image is the one
``evaluate --perturb`` draws for it. Writes ``experiments/results/sharpness.json`` (per shift: the range, quartiles and
the share under the limit; for limits 0.38-0.47 the share of the clean, blurred and shrunk images under each) and
``sharpness.csv`` (per image).

    python experiments/sharpness.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import common

RESCALES = (0.25, 2**-1.5, 0.5, 2**-0.5, 2**0.5, 2.0)
SHIFTS = ("none", "blur", "noise", "blur+noise", "gamma0.5", "gamma2", "contrast0.5")
NOISY_RESCALES = (0.25, 2**-1.5, 0.5)  # shrunk, then the noise of the 'noise' shift: small nuclei in low light
LIMITS = tuple(round(0.38 + 0.01 * step, 2) for step in range(10))


def main(argv=None) -> int:
    parser = common.model_parser("sharpness", __doc__.splitlines()[0],
                                 model_help="whose split (CV images) and normalization to use")
    args = parser.parse_args(argv)

    from nucleunet import adaptation, imaging, robustness

    model, cv, images = common.cv_raw_images(args.model, args.data, args.quick)
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in images:
        unit = robustness.as_unit_float(raw)
        shifted = {shift: common.shifted(raw, labels, shift, image_id)[0] for shift in SHIFTS}  # as evaluate
        shifted.update({f"scale{factor:.2f}": robustness.rescale(unit, labels, factor)[0] for factor in RESCALES})
        shifted.update({f"scale{factor:.2f}+noise": robustness.add_noise(
            shifted[f"scale{factor:.2f}"], robustness.SHIFTS["noise"][1], robustness.image_seed(image_id))
            for factor in NOISY_RESCALES})
        for shift, image in shifted.items():
            rows.append({"shift": shift, "image_id": image_id,
                         "sharpness": imaging.edge_sharpness(imaging.preprocess(image, model.normalization))})
    table = pd.DataFrame(rows)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)
    limit = adaptation.MIN_ZOOM_IN_SHARPNESS
    summary = table.groupby("shift", sort=False)["sharpness"].describe()[["count", "min", "25%", "50%", "75%", "max"]]
    summary[f"under {limit}"] = table.groupby("shift", sort=False)["sharpness"].apply(
        lambda values: float((values < limit).mean()))
    print(f"Edge sharpness of {len(cv)} CV images (limit for zooming in: {limit}):")
    print(summary.round(3).to_string())
    shrunk = table["shift"].isin([f"scale{factor:.2f}{noise}" for factor in NOISY_RESCALES for noise in ("", "+noise")])
    groups = {"clean": table["shift"] == "none", "blurred": table["shift"].isin(["blur", "blur+noise"]),
              "shrunk to 0.5x or less": shrunk}
    sweep = {f"{candidate:.2f}": {name: round(float((table.loc[rows, "sharpness"] < candidate).mean()), 4)
                                  for name, rows in groups.items()} for candidate in LIMITS}
    print("Share of images under each limit:")
    print(pd.DataFrame(sweep).T.to_string())
    common.write_json(args.json, {
        "benchmark": "sharpness", "quick": args.quick, "model": str(args.model), "images": len(cv), "limit": limit,
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "per_shift": {shift: {key: round(float(value), 4) for key, value in values.items()}
                      for shift, values in summary.iterrows()},
        "share_under_limits": sweep, "per_image": Path(args.json).with_suffix(".csv").name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

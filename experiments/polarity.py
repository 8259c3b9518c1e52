"""Which images does preprocessing invert, and does it get them right? Every training-set image, against its masks.

``imaging.preprocess`` inverts the images whose background is lighter than their nuclei (``imaging.light_background``:
the median and the histogram's peak of the stretched image above the middle of its range; for a colour image, of its
brightest channel, ``imaging.colour_value``). Here each image's truth is read from its annotations: dark-on-light when
its nuclei are darker on average than the rest of its grayscale. The rule is checked on each image as it is and
inverted (the robustness table's 'inverted' shift), and against the rule it replaced (the median of the luminance
alone, for colour images too).
Where the two rules differ, the model (no test-time augmentation, the rest of its post-processing) segments the image
both ways. Also counts the images that ``predict`` would warn about as fluorescence composites
(``imaging.composite_channels``; none should be). Writes ``experiments/results/polarity.json`` (counts per kind of image)
and ``polarity.csv`` (per image).

    python experiments/polarity.py
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

import common

# --quick: a few images, with the two stained training images whose decision the colour rule changed.
QUICK_IDS = ("13f2bec0a24c70345372febb14c4352877b1b6c1b01896246048e83c345c0914",
             "4193474b2f1c72f735b13633b219d9cabdd43c21d9c2bb4dfc4809f104ba4c06")


def luminance_rule(raw: np.ndarray, percentiles) -> bool:
    """The rule until 2026-12-01: the median of the stretched luminance above the middle of its range."""
    from nucleunet import imaging

    gray = imaging.stretch(imaging.to_grayscale(raw), percentiles)
    return float(np.median(gray)) > (float(gray.min()) + float(gray.max())) / 2


def inverted(raw: np.ndarray) -> np.ndarray:
    """``raw`` (an integer image, as the DSB files are) with its colour or gray channels inverted on its dtype's range;
    alpha kept."""
    flipped = raw.copy()
    channels = (...,) if raw.ndim == 2 else (..., slice(0, min(raw.shape[-1], 3)))
    flipped[channels] = np.iinfo(raw.dtype).max - raw[channels]
    return flipped


def main(argv=None) -> int:
    parser = common.model_parser("polarity", __doc__.splitlines()[0],
                                 model_help="whose split, normalization and post-processing to use")
    args = parser.parse_args(argv)

    import dsb
    from nucleunet import imaging, metrics, models, prediction, stratify

    model = models.TrainedModel.open(args.model)
    split = stratify.read_split(model.split)
    ids = sorted(split["image_id"])
    if args.quick:
        ids = sorted(set(ids[::100]) | set(QUICK_IDS))
    info = split.set_index("image_id")
    percentiles = model.normalization
    started, rows = time.perf_counter(), []
    for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(args.data), ids):
        nuclei = labels > 0
        gray = imaging.stretch(imaging.to_grayscale(raw), percentiles)
        colour = imaging.is_colour(raw)
        row = {"image_id": image_id, "subset": info.loc[image_id, "subset"],
               "cluster": int(info.loc[image_id, "cluster"]),
               "kind": "stained (colour)" if colour else "fluorescence or brightfield (gray)",
               "nucleus_share": round(float(nuclei.mean()), 4),
               "truth": bool(gray[nuclei].mean() < gray[~nuclei].mean())}
        row["composite_channels"] = " ".join(imaging.composite_channels(raw))  # predict's warning: should be none
        for name, image in (("", raw), ("inverted_", inverted(raw))):
            row[f"{name}luminance_rule"] = luminance_rule(image, percentiles)
            row[f"{name}colour_rule"] = imaging.light_background(image, percentiles=percentiles)
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in ("", "inverted_"):
        truth = table["truth"] if not name else ~table["truth"]
        for rule in ("luminance_rule", "colour_rule"):
            table[f"{name}{rule}_right"] = table[f"{name}{rule}"] == truth

    differ = table[table["luminance_rule"] != table["colour_rule"]]
    scored = {}
    if len(differ):
        predict_tiles, tile_size, min_overlap = model.predictor("float32")
        settings = dataclasses.replace(model.postprocessing, tta=False)
        for image_id, raw, labels in dsb.read_raw_images(dsb.find_dataset(args.data), differ["image_id"]):
            gray = imaging.stretch(imaging.to_grayscale(raw), percentiles)
            before = 1 - gray if luminance_rule(raw, percentiles) else gray
            for rule, image in (("luminance_rule", before), ("colour_rule", imaging.preprocess(raw, percentiles))):
                found = prediction.segment_image(predict_tiles, image, settings, tile_size=tile_size,
                                              min_overlap=min_overlap, probability=False)
                score = metrics.score_image(labels, found.labels, found.mask)
                scored.setdefault(image_id, {})[rule] = {"map": round(score.map, 4), "dice": round(score.dice, 4)}
        for rule in ("luminance_rule", "colour_rule"):
            table[f"{rule}_map"] = table["image_id"].map(lambda image_id, r=rule: scored.get(image_id, {}).get(r, {})
                                                         .get("map"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.json).with_suffix(".csv"), index=False)

    columns = [f"{name}{rule}_right" for name in ("", "inverted_") for rule in ("luminance_rule", "colour_rule")]
    summary = table.groupby("kind")[columns].agg(lambda right: int((~right).sum()))
    summary.insert(0, "images", table.groupby("kind").size())
    summary.columns = ["images", "wrong: luminance", "wrong: colour rule", "inverted, wrong: luminance",
                       "inverted, wrong: colour rule"]
    print(f"Images whose background is misjudged, of {len(table)}:")
    print(summary.to_string())
    print(f"Taken for fluorescence composites (predict's warning): {int((table['composite_channels'] != '').sum())}")
    for image_id, scores in scored.items():
        print(f"{image_id[:10]}: luminance decides: mAP {scores['luminance_rule']['map']:.3f}, "
              f"colour rule: {scores['colour_rule']['map']:.3f} (no test-time augmentation)")
    common.write_json(args.json, {
        "benchmark": "polarity", "quick": args.quick, "model": str(args.model), "images": len(table),
        "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(),
        "wrong_per_kind": {kind: {key: int(value) for key, value in values.items()}
                           for kind, values in summary.iterrows()},
        "decision_changed": scored, "composites_flagged": int((table["composite_channels"] != "").sum()), "per_image": Path(args.json).with_suffix(".csv").name})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What an evaluation shows: score tables overall and per cluster, and the predicted-mask figures.

Everything here works on scores already computed (``metrics.score_image``), so no image is scored twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import skimage.color  # noqa: E402
import skimage.segmentation  # noqa: E402

from nucleunet import metrics  # noqa: E402

log = logging.getLogger("reports")

SCORES = ("dice", "map", "ap50", "f1_50")

FALSE_POSITIVE = (1.0, 0.2, 0.2)   # predicted, not true: red
FALSE_NEGATIVE = (0.2, 0.5, 1.0)   # true, missed: blue
TRUE_POSITIVE = (0.85, 0.85, 0.85)
MATCHED = (0.2, 0.9, 0.2)          # predicted nucleus matched at IoU > 0.5: green


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def summarize(rows: list[dict]) -> dict:
    """Mean scores overall and per cluster, plus the per-image rows (each with ``cluster`` and ``SCORES``)."""
    table = pd.DataFrame(rows)

    def means(frame):
        return {"images": int(len(frame)), **{f"mean_{name}": float(frame[name].mean()) for name in SCORES}}

    return {
        "summary": {**means(table), "median_dice": float(table["dice"].median())},
        "per_cluster": {str(cluster): means(group) for cluster, group in table.groupby("cluster")},
        "per_image": rows,
    }


def format_metrics(metrics: dict, title: str = "test split") -> str:
    """``summarize``'s result as a fixed-width table, one line per cluster and one for all images."""
    header = f"{'cluster':>8} {'images':>7} {'Dice':>7} {'mAP':>7} {'AP@0.5':>7} {'F1@0.5':>7}"
    lines = ["", f"{title}: pixel Dice and DSB2018 score (mAP over IoU 0.50..0.95) of full images", header]

    def line(name, values):
        return (f"{name:>8} {values['images']:>7} {values['mean_dice']:>7.3f} {values['mean_map']:>7.3f} "
                f"{values['mean_ap50']:>7.3f} {values['mean_f1_50']:>7.3f}")

    lines += [line(cluster, values) for cluster, values in metrics["per_cluster"].items()]
    lines.append(line("all", metrics["summary"]))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------

def error_image(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """RGB picture of pixel agreement: true positives light gray, false positives red, false negatives blue.

    Parameters
    ----------
    truth, predicted : ndarray, shape (H, W), bool

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    picture = np.zeros(truth.shape + (3,), np.float32)
    picture[truth & predicted] = TRUE_POSITIVE
    picture[~truth & predicted] = FALSE_POSITIVE
    picture[truth & ~predicted] = FALSE_NEGATIVE
    return picture


def match_image(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, score: metrics.ImageScore) -> np.ndarray:
    """The image with outlines: predicted nuclei green if matched at IoU 0.5, red if not; missed true ones blue.

    Parameters
    ----------
    image : ndarray, shape (H, W), float in [0, 1]
    truth, predicted : ndarray, shape (H, W), int, nuclei numbered 1..n
    score : the ``metrics.score_image`` of ``truth`` and ``predicted``

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    picture = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    missed = np.isin(truth, np.flatnonzero(~score.matched_true) + 1)
    picture[skimage.segmentation.find_boundaries(np.where(missed, truth, 0), mode="inner")] = FALSE_NEGATIVE
    colours = np.array([(0, 0, 0)] + [MATCHED if m else FALSE_POSITIVE for m in score.matched_predicted], np.float32)
    outline = skimage.segmentation.find_boundaries(predicted, mode="inner")
    picture[outline] = colours[predicted[outline]]
    return picture


def draw_figures(records, predictions: dict, clusters: dict, folder: Path, *, per_cluster: int,
                 seed: int) -> list[Path]:
    """One PNG per cluster: for sampled images, image / true / predicted mask / pixel errors / nuclei matched.

    Parameters
    ----------
    records : list of dsb.ImageRecord
    predictions : dict image_id -> (mask, labels, score): the predicted mask (bool), the predicted
        nuclei and their ``metrics.ImageScore``
    clusters : dict image_id -> cluster (-1 or missing: outside the training clusters)
    per_cluster : int
        Images drawn per cluster (seeded by ``seed``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    by_cluster: dict[int, list] = {}
    for record in records:
        by_cluster.setdefault(int(clusters.get(record.image_id, -1)), []).append(record)
    written = []
    for cluster, members in sorted(by_cluster.items()):
        count = min(per_cluster, len(members))
        if count == 0:
            continue
        chosen = [members[i] for i in sorted(rng.choice(len(members), count, replace=False))]
        figure, axes = plt.subplots(count, 5, figsize=(20, 4 * count), squeeze=False)
        for row, record in zip(axes, chosen):
            mask, labels, score = predictions[record.image_id]
            panels = [
                (record.image, f"{record.image_id[:12]} ({record.image.shape[0]}x{record.image.shape[1]})"),
                (record.mask, f"true mask ({int(record.labels.max(initial=0))} nuclei)"),
                (mask, f"predicted mask (Dice {score.dice:.3f})"),
                (error_image(record.mask, mask), "pixels: red = false positive, blue = missed"),
                (match_image(record.image, record.labels, labels, score),
                 f"mAP {score.map:.3f}, {score.predicted} nuclei: green ok, red false, blue missed"),
            ]
            for axis, (picture, text) in zip(row, panels):
                axis.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axis.set_title(text, fontsize=9)
                axis.axis("off")
        name = f"cluster {cluster}" if cluster >= 0 else "images outside the training clusters"
        figure.suptitle(f"{name}: predicted masks", fontsize=13)
        figure.tight_layout()
        path = folder / (f"cluster_{cluster}.png" if cluster >= 0 else "unclustered.png")
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written

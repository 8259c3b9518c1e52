"""Image statistics, KMeans clusters of image kinds, and the stratified train / CV / test split.

The split is computed once (seeded), saved with each image's cluster, and reused by every later
run, so a test image never reaches training. A dataset whose images differ from a saved split is an
error, never a silent re-split. NumPy, pandas and scikit-learn only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from nucleunet import runs
from nucleunet.errors import MissingPathError, UserError
from nucleunet.imaging import STAT_COLUMNS

log = logging.getLogger("stratify")

N_CLUSTERS = 8
SUBSETS = ("train", "cv", "test")
SPLIT_COLUMNS = ["image_id", "cluster", "subset"]
SMALL_DATASET = 20  # images: below it, a split has no test images (see load_or_make_split)


def image_statistics(records) -> pd.DataFrame:
    """Per-image statistics (``imaging.STAT_COLUMNS``) and nuclei count of ``dsb.ImageRecord`` s, by image id."""
    table = pd.DataFrame([record.stats for record in records], columns=list(STAT_COLUMNS))
    table.index = pd.Index([record.image_id for record in records], name="image_id")
    table["nuclei"] = [int(record.labels.max(initial=0)) for record in records]
    return table


def cluster_images(stats: pd.DataFrame, *, n_clusters: int = N_CLUSTERS, seed: int = 0) -> np.ndarray:
    """KMeans on the standardized ``STAT_COLUMNS``.

    Returns
    -------
    clusters : ndarray, shape (n_images,), int, in 0..n_clusters-1
        Renumbered so cluster 0 is the largest, for stable names across runs.
    """
    if len(stats) < n_clusters:
        raise UserError(f"cannot make {n_clusters} clusters from {len(stats)} images: the dataset is too small")
    features = StandardScaler().fit_transform(stats[list(STAT_COLUMNS)].to_numpy(np.float64))
    raw = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(features)
    counts = np.bincount(raw, minlength=n_clusters)
    order = sorted(range(n_clusters), key=lambda c: (-counts[c], c))
    renumber = np.empty(n_clusters, int)
    renumber[order] = np.arange(n_clusters)
    return renumber[raw]


def stratified_split(
    image_ids, clusters, *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> pd.DataFrame:
    """Split images into train / CV / test with each cluster in the same proportions.

    Each cluster is shuffled (seeded) and cut by ``fractions``, rounding to whole images; a
    cluster of three or more images gets at least one CV and one test image. (scikit-learn's
    stratified splitters refuse clusters of one image and do not guarantee that minimum.)

    Returns
    -------
    DataFrame with columns image_id, cluster, subset ('train', 'cv' or 'test'), sorted by image_id.
    """
    image_ids, clusters = np.asarray(image_ids), np.asarray(clusters)
    if len(image_ids) != len(clusters):
        raise ValueError(f"{len(image_ids)} image ids but {len(clusters)} cluster labels")
    if len(set(image_ids.tolist())) != len(image_ids):
        raise ValueError("image ids are not unique")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    subset = np.empty(len(image_ids), object)
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        members = members[np.argsort(image_ids[members])]  # input order must not matter
        rng.shuffle(members)
        n = len(members)
        n_cv, n_test = (int(round(n * f)) for f in fractions[1:])
        if n >= 3:
            n_cv, n_test = max(n_cv, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
        n_test = min(n_test, n)
        n_cv = min(n_cv, n - n_test)
        subset[members[:n_test]] = "test"
        subset[members[n_test:n_test + n_cv]] = "cv"
        subset[members[n_test + n_cv:]] = "train"
    table = pd.DataFrame({"image_id": image_ids, "cluster": clusters.astype(int), "subset": subset})
    return table.sort_values("image_id").reset_index(drop=True)


class DatasetChangedError(UserError):
    """The saved split does not list the same images as the dataset."""


def read_split(path: str | os.PathLike, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read a saved split (``image_id, cluster, subset``), sorted by image id.

    With ``stats`` (the dataset's ``image_statistics``), a split that lists other images raises
    ``DatasetChangedError``: re-splitting could move test images into training.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"split file not found: {path}")
    split = pd.read_csv(path, dtype={"image_id": str})
    if list(split.columns[:3]) != SPLIT_COLUMNS:
        raise UserError(f"{path}: not a split file (columns {list(split.columns)})")
    if stats is not None:
        ids, saved = set(stats.index), set(split["image_id"])
        if saved != ids:
            added, removed = sorted(ids - saved), sorted(saved - ids)
            raise DatasetChangedError(
                f"the dataset no longer matches the split saved in {path}: {len(added)} images "
                f"added (e.g. {added[:3]}), {len(removed)} removed (e.g. {removed[:3]}). Re-splitting "
                f"could move test images into training; to start a new split, pass another split "
                f"path or delete {path}."
            )
    return split.sort_values("image_id").reset_index(drop=True)


def load_or_make_split(
    stats: pd.DataFrame,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    n_clusters: int = N_CLUSTERS,
) -> pd.DataFrame:
    """Reuse the split saved at ``path`` (see ``read_split``), or cluster, split and save it there.

    Only training makes a split; an evaluation reads the one its model was trained with. A dataset of
    fewer than ``SMALL_DATASET`` images (a few annotated images to fine-tune on) is split 80 / 20 into
    train and CV, with no test images, in at most one cluster per 5 images.
    """
    if Path(path).exists():
        return read_split(path, stats)
    fractions = (0.8, 0.1, 0.1)
    if len(stats) < SMALL_DATASET:
        n_clusters, fractions = max(min(n_clusters, len(stats) // 5), 1), (0.8, 0.2, 0.0)
    if len(stats) < 3:
        raise UserError(f"cannot split {len(stats)} image(s) into training and CV images: at least 3 are needed")
    clusters = cluster_images(stats, n_clusters=n_clusters, seed=seed)
    split = stratified_split(stats.index.to_numpy(), clusters, fractions=fractions, seed=seed)
    runs.write_csv(split, path)
    log.info("saved a new split of %d images to %s", len(split), path)
    return split


def subset_records(records: list, split: pd.DataFrame, subset: str) -> list:
    """The records of one subset ('train', 'cv' or 'test') of ``split``, in their order."""
    wanted = set(split.loc[split["subset"] == subset, "image_id"])
    return [record for record in records if record.image_id in wanted]


def fit_cluster_model(stats: pd.DataFrame, split: pd.DataFrame) -> dict:
    """The clusters of ``split`` as a nearest-centroid model, to place images outside the dataset.

    KMeans centres are the means of their members, so the centroids of the split's clusters in
    the standardized ``STAT_COLUMNS`` reproduce the clustering. JSON-serializable.
    """
    features = stats.loc[split["image_id"], list(STAT_COLUMNS)].to_numpy(np.float64)
    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    clusters = split["cluster"].to_numpy()
    centres = [scaled[clusters == c].mean(axis=0).tolist() for c in sorted(set(clusters.tolist()))]
    return {"columns": list(STAT_COLUMNS), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "clusters": sorted(set(int(c) for c in clusters)), "centres": centres}


def assign_clusters(stats: pd.DataFrame, model: dict) -> np.ndarray:
    """Nearest centroid of ``fit_cluster_model``'s model for each row of ``stats``: ndarray (n,), int."""
    features = stats[model["columns"]].to_numpy(np.float64)
    scaled = (features - np.asarray(model["mean"])) / np.asarray(model["scale"])
    distances = ((scaled[:, None, :] - np.asarray(model["centres"])[None]) ** 2).sum(axis=-1)
    return np.asarray(model["clusters"])[distances.argmin(axis=1)]


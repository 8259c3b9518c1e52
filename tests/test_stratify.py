"""stratify.py: image statistics, KMeans clusters, the stratified split saved and reused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nucleunet import imaging, stratify

# ---- clusters and split --------------------------------------------------------------------

def _fake_stats(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (8, len(imaging.STAT_COLUMNS)))
    rows = centres[np.arange(count) % 8] + rng.normal(0, 0.1, (count, len(imaging.STAT_COLUMNS)))
    table = pd.DataFrame(rows, columns=list(imaging.STAT_COLUMNS))
    table.index = pd.Index([f"id{i:04d}" for i in range(count)], name="image_id")
    return table


def test_clusters_are_seeded_and_largest_first():
    stats = _fake_stats(200)
    first, second = stratify.cluster_images(stats, seed=3), stratify.cluster_images(stats, seed=3)
    np.testing.assert_array_equal(first, second)
    counts = np.bincount(first, minlength=8)
    assert len(set(first)) == 8 and list(counts) == sorted(counts, reverse=True)


def test_clustering_needs_as_many_images_as_clusters():
    with pytest.raises(ValueError, match="cannot make 8 clusters from 5 images"):
        stratify.cluster_images(_fake_stats(5))


def test_split_keeps_cluster_proportions():
    ids = [f"id{i:04d}" for i in range(600)]
    clusters = np.repeat(np.arange(6), [200, 150, 100, 80, 50, 20])
    split = stratify.stratified_split(ids, clusters, seed=0)
    table = pd.crosstab(split["cluster"], split["subset"], normalize="index")
    np.testing.assert_allclose(table["train"], 0.8, atol=0.03)
    np.testing.assert_allclose(table["cv"], 0.1, atol=0.03)
    np.testing.assert_allclose(table["test"], 0.1, atol=0.03)


def test_split_subsets_do_not_overlap_and_cover_everything():
    ids = [f"id{i}" for i in range(97)]
    split = stratify.stratified_split(ids, np.arange(97) % 7, seed=1)
    assert sorted(split["image_id"]) == sorted(ids)
    assert split["image_id"].is_unique
    assert set(split["subset"]) == {"train", "cv", "test"}


def test_split_gives_small_clusters_a_cv_and_a_test_image():
    split = stratify.stratified_split([f"i{k}" for k in range(13)], [0] * 10 + [1] * 3, seed=0)
    small = split[split["cluster"] == 1]["subset"].value_counts()
    assert small.to_dict() == {"train": 1, "cv": 1, "test": 1}


def test_split_is_stable_across_runs_and_input_order():
    ids = np.array([f"id{i}" for i in range(120)])
    clusters = np.arange(120) % 5
    order = np.random.default_rng(9).permutation(120)
    first = stratify.stratified_split(ids, clusters, seed=4)
    shuffled = stratify.stratified_split(ids[order], clusters[order], seed=4)
    pd.testing.assert_frame_equal(first, shuffled)
    assert not first.equals(stratify.stratified_split(ids, clusters, seed=5))


def test_split_is_saved_and_reused(tmp_path):
    stats, path = _fake_stats(80), tmp_path / "split.csv"
    made = stratify.load_or_make_split(stats, path, seed=0)
    assert path.exists()
    reused = stratify.load_or_make_split(stats, path, seed=123)  # another seed must not re-split
    pd.testing.assert_frame_equal(made, reused)


@pytest.mark.parametrize("count", [5, stratify.SMALL_DATASET - 1])
def test_a_few_images_to_fine_tune_on_are_split_into_train_and_cv_only(tmp_path, count):
    split = stratify.load_or_make_split(_fake_stats(count), tmp_path / "split.csv", seed=0)
    counts = split["subset"].value_counts()
    assert set(counts.index) == {"train", "cv"} and counts["cv"] >= 1 and counts["train"] > counts["cv"]


def test_a_dataset_of_the_small_limit_or_more_keeps_a_test_split(tmp_path):
    split = stratify.load_or_make_split(_fake_stats(stratify.SMALL_DATASET), tmp_path / "split.csv", seed=0)
    assert set(split["subset"]) == {"train", "cv", "test"}


def test_changed_dataset_is_reported_not_resplit(tmp_path):
    path = tmp_path / "split.csv"
    stratify.load_or_make_split(_fake_stats(80), path)
    with pytest.raises(stratify.DatasetChangedError, match="1 images added .* 0 removed"):
        stratify.load_or_make_split(_fake_stats(81), path)


def test_cluster_model_assigns_members_to_their_own_cluster():
    stats = _fake_stats(160)
    split = stratify.stratified_split(stats.index.to_numpy(), stratify.cluster_images(stats, seed=0))
    model = stratify.fit_cluster_model(stats, split)
    np.testing.assert_array_equal(stratify.assign_clusters(stats.loc[split["image_id"]], model), split["cluster"])

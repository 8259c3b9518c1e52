"""tuning.py: the grid of post-processing settings and choosing the best on annotated images."""

from __future__ import annotations

import numpy as np

from nucleunet import postprocessing, tuning

from conftest import disk_labels


def test_tuning_grid_sizes_and_the_prediction_fields_it_keeps():
    n = len(tuning.TUNE_THRESHOLDS) * len(tuning.TUNE_MIN_SIZES)
    heights = len(tuning.TUNE_MARKER_HEIGHTS)
    plain = postprocessing.Postprocessing()
    assert len(tuning.tuning_grid(True, plain)) == n * (len(tuning.TUNE_CONTACT_THRESHOLDS) + heights)
    assert len(tuning.tuning_grid(False, plain)) == n * (1 + heights)
    predicted = postprocessing.Postprocessing(tta=True, scale="auto", nucleus_area=300.0, extra_zooms=(2 ** 0.5,),
                                              tile_size="auto", flat_field=False, denoise=True)
    grid = tuning.tuning_grid(False, predicted)
    fields = ("tta", "scale", "nucleus_area", "extra_zooms", "tile_size", "flat_field", "denoise")
    assert {tuple(getattr(settings, name) for name in fields) for settings in grid} == {
        tuple(getattr(predicted, name) for name in fields)}
    assert {settings.threshold for settings in grid} == set(tuning.TUNE_THRESHOLDS)
    assert {(settings.min_score, settings.score_model) for settings in grid} == {(None, None)}


def test_tuning_finds_the_threshold_that_separates_the_nuclei():
    truth = disk_labels((60, 80), [(30, 20), (30, 44)], 10)  # 4 pixels of gap between them
    rows, cols = np.indices(truth.shape)
    # Probability 0.65 in the gap between the disks, 0.9 inside: only thresholds >= 0.65 keep them apart.
    probability = np.where(truth > 0, 0.9, np.where((rows > 20) & (rows < 40) & (cols > 28) & (cols < 36), 0.65, 0.0))
    maps = probability.astype(np.float32)[..., None]
    grid = [postprocessing.Postprocessing(threshold=t) for t in (0.3, 0.5, 0.7)]
    table = tuning.tune_postprocessing([maps], [truth], grid)
    assert table[0]["threshold"] == 0.7 and table[0]["mean_map"] == 1.0
    assert [row["mean_map"] for row in table] == sorted((row["mean_map"] for row in table), reverse=True)

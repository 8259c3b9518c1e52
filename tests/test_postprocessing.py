"""postprocessing.py: the settings (postprocessing.json) and maps -> instances."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import skimage.draw

from nucleunet import metrics, postprocessing, tiling
from nucleunet.errors import UserError

from conftest import disk_labels

# ---- instances -----------------------------------------------------------------------------


def test_watershed_splits_two_touchingdisk_labels():
    truth = disk_labels((60, 80), [(30, 28), (30, 50)], 12)  # centres 22 apart, radius 12: they overlap
    probability = (truth > 0).astype(np.float32)
    labels = postprocessing.probability_to_labels(probability, marker_height=2.0)
    assert labels.max() == 2
    assert metrics.score_image(truth, labels).ap50 == 1.0


def test_connected_components_keep_touching_disks_together():
    truth = disk_labels((60, 80), [(30, 28), (30, 50)], 12)
    labels = postprocessing.probability_to_labels((truth > 0).astype(np.float32), marker_height=None)
    assert labels.max() == 1


def test_specks_are_dropped_and_labels_are_sequential():
    probability = np.zeros((40, 40), np.float32)
    probability[2:4, 2:4] = 0.9  # 4 pixels
    probability[10:30, 10:30] = 0.9
    labels = postprocessing.probability_to_labels(probability, min_size=10)
    assert labels.dtype == np.int32 and sorted(np.unique(labels)) == [0, 1]
    assert labels[2, 2] == 0 and labels[20, 20] == 1


def test_threshold_is_strict():
    labels = postprocessing.probability_to_labels(np.full((30, 30), 0.5, np.float32), threshold=0.5, min_size=0)
    assert labels.max() == 0


def test_small_nuclei_are_kept_and_specks_dropped_at_any_magnification():
    """Nuclei of 21 pixels and specks of 1: 30 fixed pixels would drop them all, but a speck is never over a
    quarter of the typical area (5 pixels here), so the nuclei stay and the specks go."""
    small = np.zeros((60, 60), np.float32)
    for row, col in [(10, 10), (10, 30), (30, 10), (30, 30), (45, 45)]:
        rr, cc = skimage.draw.disk((row, col), 2.6, shape=small.shape)
        small[rr, cc] = 0.9
    small[55, 5] = small[5, 55] = 0.9  # specks
    fixed = postprocessing.probability_to_labels(small, min_size=30)
    assert fixed.max() == 5 and fixed[55, 5] == 0 and fixed[5, 55] == 0
    assert postprocessing.probability_to_labels(small, min_size=0).max() == 7
    assert postprocessing.typical_area(postprocessing.probability_to_labels(small, min_size=0)) == 21
    large = np.kron(small, np.ones((4, 4), np.float32))  # the same field at 4x: specks of 16 pixels
    assert postprocessing.probability_to_labels(large, min_size=10).max() == 7
    assert postprocessing.probability_to_labels(large, min_size=20).max() == 5
    assert postprocessing.typical_area(np.zeros((4, 4), int)) == 0.0


# ---- the contact channel -------------------------------------------------------------------

def test_contacts_split_touching_nuclei_that_components_merge():
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 5:30], truth[10:30, 30:55] = 1, 2
    probability = (truth > 0).astype(np.float32)
    contact = tiling.contact_map(truth).astype(np.float32)
    assert postprocessing.probability_to_labels(probability).max() == 1
    labels = postprocessing.probability_to_labels(probability, contact=contact)
    assert labels.max() == 2
    assert metrics.average_precision(truth, labels) > 0.9
    # Every foreground pixel is given to a nucleus: the contact band is grown back over.
    np.testing.assert_array_equal(labels > 0, truth > 0)


def test_contact_without_a_seed_keeps_its_nucleus():
    probability = np.zeros((20, 20), np.float32)
    probability[5:15, 5:15] = 1.0
    contact = probability.copy()  # all contact: no seed anywhere
    labels = postprocessing.probability_to_labels(probability, contact=contact, min_size=0)
    assert labels.max() == 1 and (labels > 0).sum() == 100


def test_contact_map_must_fit_and_excludes_a_marker_height():
    probability = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="contact map of shape"):
        postprocessing.probability_to_labels(probability, contact=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="not both"):
        postprocessing.probability_to_labels(probability, contact=np.zeros((10, 10)), marker_height=2.0)


def test_postprocessing_splits_by_contacts_unless_a_marker_height_is_set():
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 5:30], truth[10:30, 30:55] = 1, 2
    maps = np.stack([(truth > 0).astype(np.float32), tiling.contact_map(truth).astype(np.float32)], axis=-1)
    assert postprocessing.Postprocessing(min_size=0).labels(maps).max() == 2
    assert postprocessing.Postprocessing(min_size=0, marker_height=50.0).labels(maps).max() == 1  # no such marker
    assert postprocessing.Postprocessing(min_size=0).labels(maps[..., :1]).max() == 1


# ---- post-processing settings and tuning ---------------------------------------------------

def test_postprocessing_round_trips_through_its_file(tmp_path):
    settings = postprocessing.Postprocessing(threshold=0.6, min_size=15, marker_height=2.0, contact_threshold=0.3,
                                             tta=True, tta_extra_zooms=False)
    settings.save(tmp_path / "postprocessing.json")
    assert postprocessing.Postprocessing.load(tmp_path / "postprocessing.json") == settings
    assert json.loads((tmp_path / "postprocessing.json").read_text())["threshold"] == 0.6


@pytest.mark.parametrize("field, value", [("threshold", 1.0), ("contact_threshold", 0.0), ("min_size", -1),
                                          ("marker_height", 0.0), ("flat_field", "yes"), ("denoise", 1)])
def test_postprocessing_rejects_values_out_of_range(field, value):
    with pytest.raises(ValueError, match=field):
        postprocessing.Postprocessing(**{field: value})


def test_extra_zooms_round_trip_through_the_file_and_reject_bad_values(tmp_path):
    settings = postprocessing.Postprocessing(scale="auto", nucleus_area=300.0, extra_zooms=(1.5,))
    settings.save(tmp_path / "postprocessing.json")
    assert json.loads((tmp_path / "postprocessing.json").read_text())["extra_zooms"] == [1.5]
    assert postprocessing.Postprocessing.load(tmp_path / "postprocessing.json") == settings
    for bad in ([1.0], [0.0], [-2.0], ["x"], 1.5):
        with pytest.raises(UserError, match="extra_zooms"):
            postprocessing.Postprocessing(extra_zooms=bad)


def test_auto_scale_needs_the_training_nucleus_area():
    with pytest.raises(UserError, match="nucleus_area"):
        postprocessing.Postprocessing(scale="auto")
    with pytest.raises(UserError, match="scale must be a number in \\[0.05, 4.0\\] or 'auto'"):
        postprocessing.Postprocessing(scale="large")
    with pytest.raises(UserError, match="nucleus_area must be a number in"):
        postprocessing.Postprocessing(nucleus_area=0.0)
    settings = postprocessing.Postprocessing(scale="auto", nucleus_area=300.0)
    assert postprocessing.Postprocessing.from_dict(json.loads(json.dumps(settings.__dict__))) == settings


def test_a_settings_file_with_removed_fields_loads_with_one_warning_where_they_changed_anything(tmp_path, caplog):
    settings = postprocessing.Postprocessing(threshold=0.6, scale="auto", nucleus_area=300.0)
    written = {**dataclasses.asdict(settings), "min_size_relative": 0.2, "auto_gain": True, "gain": 1.0,
               "gain_base": 0.0}
    (tmp_path / "old.json").write_text(json.dumps(written))
    with caplog.at_level(logging.WARNING, logger="nucleunet.postprocessing"):
        assert postprocessing.Postprocessing.load(tmp_path / "old.json") == settings
    (warning,) = caplog.records
    assert "old.json" in warning.message and "auto_gain, min_size_relative" in warning.message
    # The removed fields as they were when off (the ready model's file has min_size_relative: null) change nothing:
    caplog.clear()
    off = {**dataclasses.asdict(settings), "min_size_relative": None, "auto_gain": False, "gain": 1.0, "gain_base": 0.0}
    (tmp_path / "off.json").write_text(json.dumps(off))
    assert postprocessing.Postprocessing.load(tmp_path / "off.json") == settings and not caplog.records

"""A distance-aware U-Net: the distance target, its storage, its loss, its seeds, and a model trained with it."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

import dsb
import unet
from nucleunet import augment, postprocessing, tiling, training
from nucleunet.config import TrainConfig
from nucleunet.errors import UserError


def _discs(shape, centres, radius, *, one_label=False) -> np.ndarray:
    """Discs of ``radius`` at ``centres``, numbered 1.. (each its own nucleus), or all 1 with ``one_label``; where two
    overlap, the later one keeps the pixel."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for number, (row, col) in enumerate(centres, start=1):
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = 1 if one_label else number
    return labels


def test_the_distance_map_rises_to_one_in_each_nucleus_and_falls_to_zero_where_they_touch():
    labels = _discs((40, 60), [(20, 15), (20, 33)], 10)  # two touching discs of different areas
    labels[labels == 0] = 0
    distance = tiling.distance_map(labels)
    assert distance.dtype == np.float32 and distance.min() == 0.0
    for number in (1, 2):
        assert distance[labels == number].max() == pytest.approx(1.0)
    assert (distance[labels == 0] == 0).all()
    touching = (labels == 1) & np.roll(labels == 2, -1, axis=1)  # nucleus 1's pixels with nucleus 2 to their right
    assert touching.any() and (distance[touching] == 0).all()
    assert tiling.distance_map(np.zeros((5, 5), int)).max() == 0
    with pytest.raises(ValueError, match="shape"):
        tiling.distance_map(np.zeros((2, 2, 2), int))


def test_the_stored_distance_target_reads_back_within_its_step():
    labels = _discs((48, 48), [(16, 16), (30, 30), (40, 10)], 9)
    stored = tiling.training_target(labels, contacts=True, distance=True)
    channels = training.target_channels(stored[None], contacts=True, distance=True)[0]
    assert channels.shape == (48, 48, 3)
    np.testing.assert_array_equal(channels[..., 0], labels > 0)
    np.testing.assert_array_equal(channels[..., 1], tiling.contact_map(labels))
    np.testing.assert_allclose(channels[..., 2], tiling.distance_map(labels), atol=0.5 / tiling.DISTANCE_LEVELS)
    # Without distance the stored tiles and their channels are as before.
    assert tiling.training_target(labels, contacts=True).max() <= 3
    assert training.target_channels(stored[None], contacts=True).shape[-1] == 2
    # A training crop's targets hold the same values as the stored tiles'.
    np.testing.assert_array_equal(augment.crop_targets(labels, True, distance=True), channels)


def test_the_loss_is_least_where_the_distance_channel_equals_its_target():
    rng = np.random.default_rng(0)
    truth = np.zeros((2, 16, 16, 3), np.float32)
    truth[..., 0] = rng.random((2, 16, 16)) > 0.5
    truth[..., 2] = truth[..., 0] * rng.uniform(0.1, 0.9, (2, 16, 16))  # a share, not a class
    predicted = np.clip(truth + 0.05, 0.02, 0.98).astype(np.float32)
    def total(loss, offset):
        moved = predicted.copy()
        moved[..., 2] = truth[..., 2] + offset
        return float(keras.ops.mean(loss(keras.ops.convert_to_tensor(truth), keras.ops.convert_to_tensor(moved))))

    for loss in (unet.bce_dice_loss, unet.ContactWeightedLoss(5.0)):
        assert total(loss, 0.0) < total(loss, 0.05) and total(loss, 0.0) < total(loss, -0.05)


def test_each_dome_seeds_one_nucleus():
    touching = _discs((40, 60), [(20, 18), (20, 38)], 10)  # two nuclei whose union has a wide neck
    lobed = _discs((40, 60), [(20, 26), (20, 34)], 10, one_label=True)  # one nucleus of two shallow lobes
    for truth, count in ((touching, 2), (lobed, 1)):
        probability = (truth > 0).astype(np.float32)
        no_contact = np.zeros_like(probability)
        labels = postprocessing.probability_to_labels(probability, contact=no_contact,
                                                      distance=tiling.distance_map(truth), min_size=0)
        assert labels.max() == count
        assert (labels > 0).sum() == (truth > 0).sum()  # the whole foreground is assigned
    # The contact channel alone (all below the contact threshold) leaves the touching pair as one.
    assert postprocessing.probability_to_labels((touching > 0).astype(np.float32), contact=no_contact,
                                                min_size=0).max() == 1


def test_a_distance_map_needs_a_contact_map_of_the_same_shape():
    probability = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="needs a contact map"):
        postprocessing.probability_to_labels(probability, distance=probability)
    with pytest.raises(ValueError, match="distance map of shape"):
        postprocessing.probability_to_labels(probability, contact=probability, distance=np.ones((4, 4)))


def test_the_settings_split_three_channel_maps_by_their_distance_channel():
    truth = _discs((40, 60), [(20, 18), (20, 38)], 10)
    maps = np.stack([(truth > 0).astype(np.float32), np.zeros(truth.shape, np.float32),
                     tiling.distance_map(truth)], axis=-1)
    settings = postprocessing.Postprocessing(min_size=0)
    assert settings.labels(maps).max() == 2
    assert settings.labels(maps[..., :2]).max() == 1


def test_distance_needs_contacts_and_adds_an_output_channel():
    assert TrainConfig.from_preset("cpu", distance=True).output_channels == 3
    assert TrainConfig.from_preset("cpu").output_channels == 2
    with pytest.raises(UserError, match="distance needs contacts"):
        TrainConfig.from_preset("cpu", contacts=False, distance=True)


def test_a_distance_aware_model_trains_and_loads(synthetic_folder, tmp_path):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    ids = [record.image_id for record in records]
    split = pd.DataFrame({"image_id": ids, "cluster": [0] * len(ids),
                          "subset": ["train"] * 8 + ["cv"] * 2 + ["test"] * 2})
    config = TrainConfig.from_dict(dict(
        preset="smoke", epochs=1, steps_per_epoch=2, batch_size=2, depth=2, base_filters=2, tile_size=64,
        min_overlap=16, loss="bce_dice", contacts=True, contact_weight=5.0, distance=True, sampling="crop",
        crop_size=32))
    checkpoint = training.train(config, tmp_path, training.prepare_training_data(records, split, config),
                                progress=False)
    model = unet.load_model(checkpoint)
    assert model.output_shape[-1] == 3
    assert np.isfinite(pd.read_csv(tmp_path / "history.csv")["val_loss"]).all()

"""unet.py: shapes, arguments, the Dice metric and the loss on hand-computed arrays."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import unet


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (256, 256)])
def test_output_shape_follows_input(size):
    model = unet.build_unet((None, None, 1), depth=3, base_filters=4)
    x = np.zeros((2, *size, 1), np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, *size, 1)
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_reference_architecture_has_64_to_1024_filters():
    model = unet.build_unet((256, 256, 1), depth=5, base_filters=64)
    assert model.get_layer("down0_conv1").filters == 64
    assert model.get_layer("down4_conv2").filters == 1024
    assert model.get_layer("up0_conv2").filters == 64
    assert model.output_shape == (None, 256, 256, 1)


def test_batch_norm_and_dropout_are_optional():
    plain = unet.build_unet((64, 64, 1), depth=3, base_filters=4)
    full = unet.build_unet((64, 64, 1), depth=3, base_filters=4, batch_norm=True, dropout=0.3)
    kinds = lambda model: {type(layer).__name__ for layer in model.layers}  # noqa: E731
    assert "BatchNormalization" not in kinds(plain) and "Dropout" not in kinds(plain)
    assert {"BatchNormalization", "Dropout"} <= kinds(full)


def test_input_size_must_fit_the_depth():
    with pytest.raises(ValueError, match="divisible by 16"):
        unet.build_unet((100, 100, 1), depth=5)


@pytest.mark.parametrize("argument, value", [("depth", 0), ("base_filters", 0), ("dropout", 1.0)])
def test_bad_arguments_are_rejected(argument, value):
    with pytest.raises(ValueError, match=argument):
        unet.build_unet((64, 64, 1), **{argument: value})


def _dice(y_true, y_pred, batches=1):
    """The metric on masks of shape (rows, cols), given to it with the channel axis last."""
    metric = unet.DiceCoefficient()
    for t, p in zip(np.array_split(y_true, batches), np.array_split(y_pred, batches)):
        metric.update_state(t[..., None].astype(np.float32), p[..., None].astype(np.float32))
    return float(metric.result())


def test_dice_metric_on_hand_computed_masks():
    truth = np.array([[1, 1, 0, 0]], np.float32)
    predicted = np.array([[0.9, 0.2, 0.7, 0.1]], np.float32)  # thresholded: 1 0 1 0
    assert _dice(truth, predicted) == pytest.approx(2 * 1 / (2 + 2))


def test_dice_metric_perfect_disjoint_and_empty():
    truth = np.array([[0, 1, 1, 0]], np.float32)
    assert _dice(truth, truth) == pytest.approx(1.0)
    assert _dice(truth, 1 - truth) == pytest.approx(0.0)
    assert _dice(np.zeros((1, 4)), np.zeros((1, 4))) == pytest.approx(1.0)


def test_dice_metric_accumulates_pixels_not_batch_means():
    truth = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.float32)
    predicted = np.array([[1, 1, 1, 1], [0, 0, 0, 1]], np.float32)
    # Over all pixels: 2*4 / (5 + 5) = 0.8; a mean of per-batch Dice would give (1 + 0) / 2.
    assert _dice(truth, predicted, batches=2) == pytest.approx(0.8)


def test_bce_dice_loss_is_small_for_a_good_prediction_and_large_for_a_bad_one():
    truth = np.array([[[1.0], [0.0], [1.0], [0.0]]], np.float32)
    (good,) = np.asarray(unet.bce_dice_loss(truth, np.clip(truth, 0.01, 0.99)))
    (bad,) = np.asarray(unet.bce_dice_loss(truth, np.clip(1 - truth, 0.01, 0.99)))
    expected_good = -np.log(0.99) + 1 - (2 * 1.98 + 1) / (2 + 2 * 0.99 + 0.02 + 1)  # hand-computed
    assert good == pytest.approx(expected_good, rel=1e-4)
    assert bad > 4.0


def test_metric_and_loss_with_a_contact_channel():
    # Channel 0 = nuclei, channel 1 = contacts: the metric reads only the nuclei; the loss adds a Dice term per channel.
    nuclei = np.array([[1, 1, 0, 0]], np.float32)
    contacts = np.array([[0, 1, 0, 0]], np.float32)
    truth = np.stack([nuclei, contacts], -1)
    wrong_contacts = np.stack([nuclei, 1 - contacts], -1)
    metric = unet.DiceCoefficient()
    metric.update_state(truth, wrong_contacts)
    assert float(metric.result()) == pytest.approx(1.0)
    clipped = np.clip(truth, 0.01, 0.99)

    def loss(t, p):
        return float(np.mean(np.asarray(unet.bce_dice_loss(t, p))))

    assert loss(truth, clipped) > loss(truth[..., :1], clipped[..., :1])
    assert loss(truth, np.clip(wrong_contacts, 0.01, 0.99)) > loss(truth, clipped) + 1


def test_bce_dice_loss_gives_each_sample_its_bce_plus_the_batch_dice_term():
    truth = np.zeros((2, 2, 2, 1), np.float32)
    truth[0, 0, 0] = 1.0
    predicted = np.full_like(truth, 0.2)
    losses = np.asarray(unet.bce_dice_loss(truth, predicted))
    bce = [-(np.log(0.2) + 3 * np.log(0.8)) / 4, -np.log(0.8)]  # hand-computed, per sample
    dice = (2 * 0.2 + 1) / (1 + 8 * 0.2 + 1)  # over the whole batch
    np.testing.assert_allclose(losses, [bce[0] + 1 - dice, bce[1] + 1 - dice], rtol=1e-5)


def test_model_with_custom_objects_saves_and_loads(tmp_path):
    model = unet.build_unet((32, 32, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss=unet.bce_dice_loss, metrics=[unet.DiceCoefficient()])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).random((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_contact_weighted_loss_weighs_the_pixels_where_nuclei_touch():
    rng = np.random.default_rng(0)
    truth = np.zeros((2, 8, 8, 2), np.float32)
    truth[:, 2:6, 1:7, 0] = 1
    truth[:, 2:6, 3:5, 1] = 1  # the contact band between two nuclei
    predicted = rng.uniform(0.05, 0.95, truth.shape).astype(np.float32)
    plain = np.asarray(unet.bce_dice_loss(truth, predicted))
    same = unet.ContactWeightedLoss(1.0)
    np.testing.assert_allclose(float(same(truth, predicted)), plain.mean(), rtol=1e-5)
    # An error in the band costs more with the weight; the same error elsewhere costs the same.
    wrong_in_band, wrong_elsewhere = predicted.copy(), predicted.copy()
    wrong_in_band[:, 3, 3, 0], wrong_elsewhere[:, 7, 7, 0] = 0.01, 0.99
    weighted = unet.ContactWeightedLoss(5.0)
    band_cost = float(weighted(truth, wrong_in_band)) - float(weighted(truth, predicted))
    plain_band_cost = float(same(truth, wrong_in_band)) - float(same(truth, predicted))
    assert band_cost > 3 * plain_band_cost > 0
    elsewhere_cost = float(weighted(truth, wrong_elsewhere)) - float(weighted(truth, predicted))
    plain_elsewhere_cost = float(same(truth, wrong_elsewhere)) - float(same(truth, predicted))
    np.testing.assert_allclose(elsewhere_cost, plain_elsewhere_cost, rtol=1e-3)
    assert unet.ContactWeightedLoss.from_config(weighted.get_config()).weight == 5.0
    with pytest.raises(ValueError, match="contact channel"):
        weighted(truth[..., :1], predicted[..., :1])

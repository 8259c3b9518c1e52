"""segment.py: tiled full-image prediction and pixel Dice."""

from __future__ import annotations

import numpy as np
import pytest

import segment


def test_identity_model_gives_the_image_back_for_many_sizes():
    rng = np.random.default_rng(0)
    for shape in [(64, 80), (256, 256), (257, 300), (520, 696), (31, 500)]:
        image = rng.random(shape).astype(np.float32)
        rebuilt = segment.predict_probability(lambda tiles: tiles, image, tile_size=128, min_overlap=16)
        np.testing.assert_allclose(rebuilt, image, atol=1e-6, err_msg=str(shape))


def test_tiles_reach_the_model_in_batches_of_the_right_shape():
    seen = []

    def model(tiles):
        seen.append(tiles.shape)
        return np.full_like(tiles, 0.25)

    probability = segment.predict_probability(model, np.zeros((300, 600), np.float32), tile_size=256)
    assert seen == [(6, 256, 256, 1)]
    assert probability.shape == (300, 600) and np.all(probability == 0.25)


def test_a_model_returning_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="the model returned shape"):
        segment.predict_probability(lambda tiles: tiles[:, :10], np.zeros((64, 64), np.float32), tile_size=64)


def test_pixel_dice_hand_computed():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 pixels
    predicted = np.zeros((4, 4), bool)
    predicted[1:3] = True  # 8 pixels, 4 shared
    assert segment.pixel_dice(truth, predicted) == pytest.approx(0.5)


def test_pixel_dice_empty_cases():
    empty, full = np.zeros((3, 3)), np.ones((3, 3))
    assert segment.pixel_dice(empty, empty) == 1.0
    assert segment.pixel_dice(full, empty) == 0.0
    assert segment.pixel_dice(empty, full) == 0.0


def test_pixel_dice_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"truth \(2, 2\), predicted \(3, 3\)"):
        segment.pixel_dice(np.zeros((2, 2)), np.zeros((3, 3)))

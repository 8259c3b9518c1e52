"""robustness.py: the controlled shifts a model is scored under, each doing what it says."""

from __future__ import annotations

import numpy as np
import pytest

from nucleunet import robustness


def _image(shape=(40, 60), colour=False):
    rng = np.random.default_rng(0)
    gray = (rng.random(shape) * 200).astype(np.uint8)
    if not colour:
        return gray
    return np.dstack([gray, gray // 2, gray // 3, np.full(shape, 255, np.uint8)])  # RGBA, channels differ


def test_none_returns_the_image_scaled_to_unit_floats():
    image = _image()
    shifted, labels = robustness.perturb(image, np.ones(image.shape, int), "none")
    np.testing.assert_allclose(shifted, image / 255, atol=1e-7)
    assert labels.shape == image.shape


@pytest.mark.parametrize("shift, factor", [("scale0.5", 0.5), ("scale0.75", 0.75), ("scale1.5", 1.5), ("scale2", 2)])
def test_scale_resizes_image_and_labels_together(shift, factor):
    image = _image(colour=True)
    labels = np.zeros(image.shape[:2], np.int32)
    labels[10:30, 20:40] = 3
    shifted, shifted_labels = robustness.perturb(image, labels, shift)
    expected = (round(40 * factor), round(60 * factor))
    assert shifted.shape == expected + (3,) and shifted_labels.shape == expected
    assert set(np.unique(shifted_labels)) == {0, 3}  # nearest neighbour: no new label values
    assert (shifted_labels == 3).sum() == pytest.approx(400 * factor**2, rel=0.15)


def test_intensity_shifts_change_what_they_say():
    image = _image()
    unit = image / 255
    assert np.allclose(robustness.perturb(image, image, "gamma2")[0], unit**2, atol=1e-6)
    assert np.allclose(robustness.perturb(image, image, "inverted")[0], 1 - unit, atol=1e-6)
    halved = robustness.perturb(image, image, "contrast0.5")[0]
    assert halved.std() == pytest.approx(unit.std() / 2, rel=1e-4) and halved.mean() == pytest.approx(unit.mean())
    blurred = robustness.perturb(image, image, "blur")[0]
    assert blurred.std() < unit.std() / 2
    noisy, again = robustness.perturb(image, image, "noise", seed=1)[0], robustness.perturb(image, image, "noise", 1)[0]
    np.testing.assert_array_equal(noisy, again)
    assert 0.05 < (noisy - unit).std() < 0.1


def test_blur_and_noise_together_is_the_blur_then_noise_of_its_range():
    image = _image()
    blurred = robustness.perturb(image, image, "blur")[0]
    both = robustness.perturb(image, image, "blur+noise", seed=3)[0]
    np.testing.assert_array_equal(both, robustness.perturb(image, image, "blur+noise", seed=3)[0])
    low, high = np.percentile(blurred, (1, 99))
    assert (both - blurred).std() == pytest.approx(0.1 * (high - low), rel=0.05)
    assert abs((both - blurred).mean()) < 0.01 * (high - low)


@pytest.mark.parametrize("colour", [False, True])
def test_uneven_illumination_shifts_rise_to_the_right_and_fall_to_the_corners(colour):
    image = _image(colour=colour)
    unit = robustness.as_unit_float(image)
    ramped = robustness.perturb(image, image[..., 0] if colour else image, "background")[0]
    added = ramped - unit
    low, high = np.percentile(unit, (1, 99))
    np.testing.assert_allclose(added[:, 0], 0, atol=1e-6)
    np.testing.assert_allclose(added[:, -1], 0.5 * (high - low), rtol=1e-5)
    assert np.all(np.diff(added, axis=1) > 0)  # rises steadily from left to right, the same in every row
    np.testing.assert_allclose(added, np.broadcast_to(added[:1], added.shape), atol=1e-6)
    shaded = robustness.perturb(image, image[..., 0] if colour else image, "shading")[0]
    np.testing.assert_allclose(shaded[0, 0], 0.4 * unit[0, 0], rtol=1e-5)
    np.testing.assert_allclose(shaded[-1, -1], 0.4 * unit[-1, -1], rtol=1e-5)
    assert shaded.shape == unit.shape and np.all(shaded <= unit + 1e-7)
    centre = robustness.vignette(unit.shape[:2], 0.4)[19:21, 29:31]
    assert centre.min() > 0.99


def test_channels_are_permuted_only_in_colour_images():
    colour = _image(colour=True)
    permuted = robustness.perturb(colour, colour[..., 0], "channels")[0]
    np.testing.assert_allclose(permuted[..., 1], colour[..., 0] / 255, atol=1e-6)  # red moved to green
    gray = _image()
    np.testing.assert_allclose(robustness.perturb(gray, gray, "channels")[0], gray / 255, atol=1e-7)


def test_unknown_shift_is_an_error():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        robustness.perturb(_image(), _image(), "fog")

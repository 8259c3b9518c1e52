"""imaging.py: grayscale, inversion, contrast, statistics of any image."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_synthetic_image

import imaging

# ---- preprocessing -------------------------------------------------------------------------

def test_grayscale_of_gray_rgba_is_the_channel_scaled():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    np.testing.assert_array_equal(imaging.to_grayscale(rgba), gray.astype(np.float32) / 255)


def test_grayscale_of_colour_uses_luminance():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(imaging.to_grayscale(red), 0.2125, atol=1e-4)


def test_grayscale_scales_16_bit_by_its_range():
    image = np.full((3, 3), 65535, np.uint16)
    image[0, 0] = 0
    gray = imaging.to_grayscale(image)
    assert gray.dtype == np.float32 and gray[0, 0] == 0.0 and gray[1, 1] == 1.0


def test_grayscale_rejects_five_channels():
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 5\)"):
        imaging.to_grayscale(np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("kind", ["fluorescence", "brightfield", "histology", "gray"])
def test_preprocess_makes_nuclei_bright(kind):
    image, masks = make_synthetic_image(np.random.default_rng(2), (96, 96), nuclei=3, kind=kind)
    gray = imaging.preprocess(image)
    inside = np.any(np.stack(masks) > 0, axis=0)
    assert gray[inside].mean() > gray[~inside].mean() + 0.4
    assert gray.min() == 0.0 and gray.max() == 1.0


def test_preprocess_16_bit_matches_8_bit():
    image, _ = make_synthetic_image(np.random.default_rng(4), (64, 64), kind="gray")
    wide = image.astype(np.uint16) * 257  # the same picture on the 16-bit scale
    np.testing.assert_allclose(imaging.preprocess(wide), imaging.preprocess(image), atol=1e-6)


def test_brightfield_is_detected_as_dark_on_light():
    bright, _ = make_synthetic_image(np.random.default_rng(5), kind="brightfield")
    dark, _ = make_synthetic_image(np.random.default_rng(5), kind="fluorescence")
    assert imaging.is_dark_on_light(imaging.to_grayscale(bright))
    assert not imaging.is_dark_on_light(imaging.to_grayscale(dark))


def test_stats_tell_histology_from_gray():
    rng = np.random.default_rng(6)
    histology = imaging.image_stats(make_synthetic_image(rng, kind="histology")[0])
    fluorescence = imaging.image_stats(make_synthetic_image(rng, kind="fluorescence")[0])
    assert histology["saturation"] > 0.1 and fluorescence["saturation"] == 0.0
    assert histology["median"] > 0.5 > fluorescence["median"]
    assert set(histology) == set(imaging.STAT_COLUMNS)


def _three_disks(side: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    disks = np.zeros((side, side), np.float32)
    for cy, cx in ((30, 30), (30, 90), (90, 60)):
        disks[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = 1.0
    return disks


def test_edge_sharpness_falls_with_blur_rises_with_shrinking_and_is_zero_without_edges():
    from scipy import ndimage

    disks = _three_disks()
    sharp = imaging.edge_sharpness(disks)
    blurred = imaging.edge_sharpness(ndimage.gaussian_filter(disks, 2.0))
    assert 0 < blurred < sharp / 2
    soft = ndimage.gaussian_filter(disks, 1.0)
    assert imaging.edge_sharpness(soft[::2, ::2]) > imaging.edge_sharpness(soft)
    assert imaging.edge_sharpness(np.full((32, 32), 0.5)) == 0.0
    assert imaging.edge_sharpness(np.dstack([disks, disks])) == sharp


def test_edge_sharpness_is_not_fooled_by_noise():
    """Noise adds fine detail of its own: a blurred, noisy image must still measure blurred (the automatic zoom then
    keeps it at 1x), and a sharp, noisy one sharp."""
    from scipy import ndimage

    import segment

    disks, noise = _three_disks(), np.random.default_rng(0).normal(0, 0.1, (128, 128))
    blurred = ndimage.gaussian_filter(disks, 2.0)
    assert imaging.edge_sharpness(disks + noise) == pytest.approx(imaging.edge_sharpness(disks), rel=0.05)
    assert imaging.edge_sharpness(blurred + noise) == pytest.approx(imaging.edge_sharpness(blurred), rel=0.25)
    limit = segment.MIN_ZOOM_IN_SHARPNESS
    assert imaging.edge_sharpness(blurred + noise) < limit < imaging.edge_sharpness(disks + noise)


def test_noise_sigma_measures_the_noise_and_not_the_edges():
    disks = _three_disks()
    assert imaging.noise_sigma(disks) == 0.0
    for sigma in (0.02, 0.1):
        noisy = disks + np.random.default_rng(1).normal(0, sigma, disks.shape)
        assert imaging.noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)


# ---- uneven background -----------------------------------------------------------------------

def _nuclei_image(shape=(192, 256), seed=0):
    """Bright disks of radius 8 on a dark, noisy, evenly lit background, in [0, 1] as ``preprocess`` gives."""
    from conftest import disk_labels

    rng = np.random.default_rng(seed)
    centres = [(row, col) for row in range(20, shape[0] - 10, 40) for col in range(20, shape[1] - 10, 45)]
    labels = disk_labels(shape, centres, 8)
    image = 0.1 + 0.6 * (labels > 0) + rng.normal(0, 0.02, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def test_background_unevenness_is_near_zero_when_evenly_lit_and_measures_a_ramp():
    import segment

    image, _ = _nuclei_image()
    assert imaging.background_unevenness(image) < 0.01
    ramp = np.linspace(0.0, 0.3, image.shape[1], dtype=np.float32)
    uneven = imaging.background_unevenness(image + ramp)
    assert 0.15 < uneven < 0.3  # the blocks' levels span most of the ramp: their centres lie inside the image
    assert imaging.background_unevenness(image) < segment.MAX_BACKGROUND_UNEVENNESS < uneven
    with pytest.raises(ValueError, match="grayscale"):
        imaging.background_grid(np.dstack([image, image]))


def test_flatten_background_removes_a_ramp_reduces_a_vignette_and_keeps_the_nuclei():
    import robustness

    image, labels = _nuclei_image()
    ramped = imaging.flatten_background(image + np.linspace(0.0, 0.8, image.shape[1], dtype=np.float32))
    assert ramped.dtype == np.float32 and ramped.shape == image.shape and 0 <= ramped.min() and ramped.max() <= 1
    assert imaging.background_unevenness(ramped) < 0.02
    # one threshold separates nuclei from background everywhere again: no background pixel on the ramp's bright side
    # reaches the dimmest nuclei (without flattening the brightest background is above them)
    assert np.percentile(ramped[labels == 0], 99.9) < np.percentile(ramped[labels > 0], 1)
    vignetted = (image + 0.3) * robustness.vignette(image.shape, 0.4).astype(np.float32)  # haze, dimmer at the corners
    before = imaging.background_unevenness(imaging.preprocess(vignetted))
    assert imaging.background_unevenness(imaging.flatten_background(vignetted)) < before / 2
    even = imaging.flatten_background(image)
    np.testing.assert_allclose(even, imaging.preprocess(image), atol=0.03)  # evenly lit: nearly unchanged

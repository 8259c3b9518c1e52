"""imaging.py: grayscale, inversion, contrast, statistics of any image."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.morphology

from nucleunet import imaging

from conftest import make_synthetic_image

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


def test_fluorescence_dense_with_nuclei_is_not_inverted_nor_one_with_saturated_nuclei():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:120, :160]
    dense = np.zeros((120, 160), bool)
    for cy in range(10, 120, 22):  # packed nuclei: about two thirds of the pixels
        for cx in range(10, 160, 22):
            dense |= (yy - cy) ** 2 + (xx - cx) ** 2 < 11 ** 2
    image = np.where(dense, rng.uniform(0.4, 1.0, dense.shape), 0.05) + rng.normal(0, 0.01, dense.shape)
    assert dense.mean() > 0.6 and np.median(image) > 0.4  # the median alone would call it a light background
    gray = imaging.preprocess(image.astype(np.float32))
    assert gray[dense].mean() > gray[~dense].mean() + 0.3
    saturated = np.where(dense & (xx < 50), 1.0, 0.05) + rng.normal(0, 0.02, dense.shape)  # a peak at the top
    gray = imaging.preprocess(np.clip(saturated, 0, 1).astype(np.float32))
    assert gray[dense & (xx < 50)].min() > 0.9


def _stained_slide(stroma_share: float) -> tuple[np.ndarray, np.ndarray]:
    """A pale background, pink stroma over ``stroma_share`` of the rows (as dark as the nuclei in luminance), and
    purple nuclei: (RGB uint8, nucleus mask)."""
    image = np.empty((80, 100, 3), np.uint8)
    image[:] = (240, 205, 225)
    image[: int(80 * stroma_share)] = (200, 30, 60)
    yy, xx = np.mgrid[:80, :100]
    nuclei = np.zeros((80, 100), bool)
    for cy, cx in ((20, 20), (20, 70), (60, 45), (65, 85)):
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 < 8 ** 2
    image[nuclei] = (90, 40, 140)
    return image, nuclei


@pytest.mark.parametrize("stroma_share", [0.0, 0.3, 0.7])
def test_stained_slide_is_inverted_even_where_stroma_darkens_its_luminance(stroma_share):
    image, nuclei = _stained_slide(stroma_share)
    gray = imaging.preprocess(image)
    assert gray[nuclei].mean() > gray[~nuclei].mean() + 0.2
    if stroma_share > 0.5:  # luminance alone would keep the nuclei dark
        assert not imaging.is_dark_on_light(imaging.stretch(imaging.to_grayscale(image)))


def test_colour_fluorescence_composite_is_not_inverted():
    image, nuclei = _stained_slide(0.0)
    composite = np.zeros_like(image)
    composite[nuclei, 2] = 200  # blue nuclei (a DAPI channel) on black
    composite[:10, :, 1] = 90  # and some green signal
    gray = imaging.preprocess(composite)
    assert gray[nuclei].min() > 0.1 and gray[10:][~nuclei[10:]].max() == 0.0  # dark where nothing shines


def test_is_colour_and_colour_value():
    gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    assert not imaging.is_colour(gray) and not imaging.is_colour(np.dstack([gray, gray]))
    assert not imaging.is_colour(np.dstack([gray, gray, gray, np.full_like(gray, 255)]))
    colour = np.dstack([gray, gray // 2, np.zeros_like(gray)])
    assert imaging.is_colour(colour)
    np.testing.assert_array_equal(imaging.colour_value(colour), gray / np.float32(255))
    assert imaging.colour_value(colour, most=300).shape == (20, 15)  # a grid of every 2nd pixel


def _composite(green_signal: bool = True) -> np.ndarray:
    """Blue nuclei (a DNA stain) on black, with green cytoplasm around them: a fluorescence composite (RGB uint8)."""
    _, nuclei = _stained_slide(0.0)
    rings = skimage.morphology.dilation(nuclei, skimage.morphology.disk(6)) & ~nuclei
    composite = np.zeros(nuclei.shape + (3,), np.uint8)
    composite[nuclei, 2] = 180
    if green_signal:
        composite[rings, 1] = 220
    noise = np.random.default_rng(3).integers(0, 6, composite.shape)
    return (composite + noise).astype(np.uint8)


def test_composite_channels_names_the_channels_of_different_signals():
    assert imaging.composite_channels(_composite()) == ("green", "blue")
    assert imaging.composite_channels(_composite(green_signal=False)) == ()  # one stain in blue
    cyan = _composite(green_signal=False)
    cyan[..., 1] = cyan[..., 2]  # one signal shown in a cyan colour table
    assert imaging.composite_channels(cyan) == ()
    assert imaging.composite_channels(_stained_slide(0.3)[0]) == ()  # a light background: a stained slide
    assert imaging.composite_channels(_composite()[..., 1]) == ()  # gray


def test_real_stained_images_with_large_dark_areas_get_bright_nuclei():
    """The two DSB training images whose luminance median is below the middle of their range (a dense stained image
    and one with a band of stroma): after preprocessing their nuclei are brighter than the rest."""
    import dsb

    from conftest import real_dataset_path

    ids = ["13f2bec0a24c70345372febb14c4352877b1b6c1b01896246048e83c345c0914",
           "4193474b2f1c72f735b13633b219d9cabdd43c21d9c2bb4dfc4809f104ba4c06"]
    for image_id, raw, labels in dsb.read_raw_images(real_dataset_path(), ids):
        gray = imaging.preprocess(raw)
        assert gray[labels > 0].mean() > gray[labels == 0].mean() + 0.1, image_id


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

    from nucleunet import adaptation

    disks, noise = _three_disks(), np.random.default_rng(0).normal(0, 0.1, (128, 128))
    blurred = ndimage.gaussian_filter(disks, 2.0)
    assert imaging.edge_sharpness(disks + noise) == pytest.approx(imaging.edge_sharpness(disks), rel=0.05)
    assert imaging.edge_sharpness(blurred + noise) == pytest.approx(imaging.edge_sharpness(blurred), rel=0.25)
    limit = adaptation.MIN_ZOOM_IN_SHARPNESS
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
    from nucleunet import adaptation

    image, _ = _nuclei_image()
    assert imaging.background_unevenness(image) < 0.01
    ramp = np.linspace(0.0, 0.3, image.shape[1], dtype=np.float32)
    uneven = imaging.background_unevenness(image + ramp)
    assert 0.15 < uneven < 0.3  # the blocks' levels span most of the ramp: their centres lie inside the image
    assert imaging.background_unevenness(image) < adaptation.MAX_BACKGROUND_UNEVENNESS < uneven
    with pytest.raises(ValueError, match="grayscale"):
        imaging.background_grid(np.dstack([image, image]))


def test_flatten_background_removes_a_ramp_reduces_a_vignette_and_keeps_the_nuclei():
    from nucleunet import robustness

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

"""adaptation.py: flat field, denoise and the automatic zoom, decided once per image."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.draw

from nucleunet import adaptation, imaging, postprocessing, prediction, tiling, tuning

from conftest import disk_labels

# ---- denoise ---------------------------------------------------------------------------------


def _noisy_nuclei(shape=(192, 256), noise=0.08, blur=0.0, seed=0):
    """Bright disks on a dark background, optionally blurred, with white noise of sigma ``noise``: (image, labels)."""
    labels = disk_labels(shape, [(row, col) for row in range(30, shape[0] - 20, 60)
                                 for col in range(30, shape[1] - 20, 60)], 12)
    image = 0.1 + 0.7 * (labels > 0).astype(np.float32)
    if blur:
        image = ndi.gaussian_filter(image, blur)
    image = image + np.random.default_rng(seed).normal(0.0, noise, shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def test_denoise_smooths_only_a_noisy_sharp_image_before_the_model_sees_it():
    settings = postprocessing.Postprocessing(denoise=True, flat_field=False)
    noisy, _ = _noisy_nuclei()
    clean, _ = _noisy_nuclei(noise=0.003)
    blurred, _ = _noisy_nuclei(blur=2.0)  # noisy but soft: not smoothed further
    assert adaptation.denoises(settings, noisy)
    assert not adaptation.denoises(settings, clean) and not adaptation.denoises(settings, blurred)
    assert not adaptation.denoises(postprocessing.Postprocessing(denoise=False), noisy)
    prepared = adaptation.prepare(noisy, settings)
    np.testing.assert_array_equal(prepared.image, imaging.denoise(noisy))
    assert imaging.noise_sigma(prepared.image) < imaging.noise_sigma(noisy) / 2
    assert prepared.settings == settings.replace(denoise=False) and prepared.smoothed and not prepared.flattened
    assert adaptation.prepare(clean, settings).image is clean and adaptation.prepare(blurred, settings).image is blurred
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    np.testing.assert_allclose(prediction.image_maps(identity, noisy, settings, tile_size=128, min_overlap=16)[..., 0],
                               imaging.denoise(noisy), atol=1e-5)


def test_denoise_is_off_by_default_and_kept_through_the_settings_file_and_the_tuning_grid(tmp_path):
    assert not postprocessing.Postprocessing().denoise  # also for a file written before the setting existed
    postprocessing.Postprocessing(denoise=True).save(tmp_path / "postprocessing.json")
    assert postprocessing.Postprocessing.load(tmp_path / "postprocessing.json").denoise
    assert all(grid.denoise for grid in tuning.tuning_grid(True, postprocessing.Postprocessing(denoise=True)))


def _disks(shape=(120, 160), radius=6):
    image = np.full(shape, 0.1, np.float32)
    for centre in [(30, 30), (30, 90), (80, 50), (90, 130)]:
        rr, cc = skimage.draw.disk(centre, radius, shape=shape)
        image[rr, cc] = 0.9
    return image


def test_auto_scale_zooms_each_image_toward_the_training_nucleus_area():
    """With the identity as the model, the nuclei found at 1x are the disks: nuclei a quarter of the training
    area are zoomed 2x, four times larger 0.5x, and the zoomed prediction finds the same 4 nuclei."""
    image = _disks()
    area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
    seen = []

    def model(tiles):
        seen.append(len(tiles))
        return tiles

    settings = postprocessing.Postprocessing(scale="auto", nucleus_area=4 * area, min_size=5)
    options = {"tile_size": 64, "min_overlap": 8}

    def zoom(settings, image):
        return adaptation.resolve(settings, image, prediction.first_pass(model, settings, **options))[0].scale

    assert zoom(settings, image) == 2.0
    assert zoom(settings.replace(nucleus_area=area / 4), image) == 0.5
    assert zoom(settings.replace(nucleus_area=area * 1.2), image) == 1.0
    assert zoom(settings, np.zeros((50, 50), np.float32)) == 1.0  # nothing found: 1x
    fixed = postprocessing.Postprocessing(scale=0.75)
    assert adaptation.resolve(fixed, image, prediction.first_pass(model, fixed, **options)) == (fixed, None)
    seen.clear()
    maps = prediction.image_maps(model, image, settings, **options)
    assert maps.shape == (120, 160, 1) and settings.labels(maps).max() == 4
    # a first pass at 1x, then the image at 2x
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8)) + len(tiling.tile_grid((240, 320), 64, 8))
    seen.clear()
    at_one = prediction.image_maps(model, image, settings.replace(nucleus_area=area), **options)  # the first pass
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8))
    np.testing.assert_allclose(at_one[..., 0], image, atol=1e-6)
    seen.clear()  # so is segment_image's, which says what zoom it used
    segmented = prediction.segment_image(model, image, settings.replace(nucleus_area=area), **options)
    assert sum(seen) == len(tiling.tile_grid((120, 160), 64, 8)) and segmented.scale == 1.0
    assert segmented.labels.max() == 4


def test_nuclei_smaller_than_the_speck_size_are_measured_and_zoomed_in():
    """Nuclei of 21 pixels under a speck size of 30, training nuclei 8 times larger: the first pass keeps them
    (a speck is never over a quarter of the typical area), so the image is zoomed 2.83x (the most
    ``AUTO_SCALES`` allows), and the 5 nuclei are found."""
    small = np.zeros((60, 60), np.float32)
    for row, col in [(10, 10), (10, 30), (30, 10), (30, 30), (45, 45)]:
        rr, cc = skimage.draw.disk((row, col), 2.6, shape=small.shape)
        small[rr, cc] = 0.9
    auto = postprocessing.Postprocessing(scale="auto", nucleus_area=8 * 21.0, min_size=30)
    found = prediction.segment_image(lambda tiles: tiles, small, auto, tile_size=64, min_overlap=8)
    assert found.scale == pytest.approx(2**1.5) == max(postprocessing.AUTO_SCALES) and found.labels.max() == 5


def test_an_image_of_single_bright_pixels_has_no_nuclei_and_is_not_zoomed():
    """Small nuclei are kept, but a pixel or three is a speck at any zoom: under 30 pixels as the model sees them
    at the largest automatic zoom (30 / 8)."""
    specks = np.zeros((80, 80), np.float32)
    specks[10, 10] = specks[40, 60] = specks[70, 20] = 0.9
    specks[20:22, 50] = 0.9  # 2 pixels
    auto = postprocessing.Postprocessing(scale="auto", nucleus_area=365.0, min_size=30)
    found = prediction.segment_image(lambda tiles: tiles, specks, auto, tile_size=64, min_overlap=8)
    assert found.scale == 1.0 and found.labels.max() == 0
    assert postprocessing.probability_to_labels(specks, min_size=0).max() == 4


def test_auto_scale_of_a_large_image_is_one_zoom_for_all_its_blocks():
    image = np.tile(_disks(), (2, 2))  # 240 x 320, in blocks of 100: the zoom comes from the central 100 x 100
    area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
    auto = postprocessing.Postprocessing(scale="auto", nucleus_area=4 * area, min_size=5)
    options = {"tile_size": 64, "min_overlap": 8, "block_size": 100, "margin": 20}
    found = prediction.segment_image(lambda tiles: tiles, image, auto, **options)
    fixed = prediction.segment_image(lambda tiles: tiles, image, auto.replace(scale=2.0), **options)
    np.testing.assert_array_equal(found.labels, fixed.labels)
    assert found.labels.max() == 16 and found.scale == 2.0


@pytest.mark.parametrize("tta, extra, tta_extra", [(False, (), True), (True, (), True), (False, (2 ** 0.5,), True),
                                                  (True, (2 ** 0.5,), True), (True, (2 ** 0.5,), False)])
@pytest.mark.parametrize("zoom_area", [1.0, 4.0])  # 4x the nuclei's area: zoomed 2x
def test_segment_image_reports_the_tiles_it_will_predict_at_the_zoom_it_chose(tta, extra, tta_extra, zoom_area):
    image = np.tile(_disks(), (2, 2))  # 240 x 320
    area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
    for block_size in (100, 2048):  # in blocks, and in one piece
        auto = postprocessing.Postprocessing(scale="auto", nucleus_area=zoom_area * area, min_size=5, tta=tta,
                                             extra_zooms=extra, tta_extra_zooms=tta_extra)
        totals, counted = [], []
        scale = prediction.segment_image(lambda tiles: tiles, image, auto, tile_size=64, min_overlap=8,
                                         block_size=block_size, margin=20, progress=counted.append,
                                         total=totals.append).scale
        assert scale == (2.0 if zoom_area == 4.0 else 1.0)
        assert len(totals) == 1 and totals[0] == sum(counted) > 0
        assert totals[0] == prediction.tile_count(image.shape, auto.replace(scale=scale), 64, 8, block_size, 20)


def test_auto_scale_zooms_no_blurred_image_in_but_still_zooms_it_out():
    """Zooming a blurred image in enlarges its blur: 'auto' keeps it at 1x, where the same nuclei, sharp, are
    zoomed 2x; a zoom out is not held back by blur."""
    sharp = _disks()
    blurred = ndi.gaussian_filter(sharp, 3.0)
    assert imaging.edge_sharpness(blurred) < adaptation.MIN_ZOOM_IN_SHARPNESS < imaging.edge_sharpness(sharp)
    options = {"tile_size": 64, "min_overlap": 8}

    def zoom(image, times):  # toward nuclei ``times`` the area of the image's own
        area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
        settings = postprocessing.Postprocessing(scale="auto", nucleus_area=times * area, min_size=5)
        identity = prediction.first_pass(lambda tiles: tiles, settings, **options)
        return adaptation.resolve(settings, image, identity)[0].scale

    assert zoom(sharp, 4) == 2.0 and zoom(blurred, 4) == 1.0
    assert zoom(blurred, 1 / 4) == 0.5
    area = postprocessing.typical_area(postprocessing.probability_to_labels(blurred, min_size=0))
    found = prediction.segment_image(lambda tiles: tiles, blurred,
                                     postprocessing.Postprocessing(scale="auto", nucleus_area=4 * area, min_size=5),
                                     **options)
    assert found.scale == 1.0 and found.labels.max() == 4


def test_the_second_zoom_zooms_no_blurred_image_in_either():
    """The rule of 'auto' holds for ``extra_zooms`` too: a blurred image is predicted at no zoom above 1x, where a
    sharp one gets both zooms; zooms out stay."""
    sharp = _disks()
    blurred = ndi.gaussian_filter(sharp, 3.0)

    def zooms(image, times):
        area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
        settings = postprocessing.Postprocessing(scale="auto", nucleus_area=times * area, min_size=5,
                                          extra_zooms=(2 ** 0.5, 0.5))
        identity = prediction.first_pass(lambda tiles: tiles, settings, tile_size=64, min_overlap=8)
        return adaptation.resolve(settings, image, identity)[0].zooms

    assert zooms(sharp, 1) == pytest.approx((1.0, 2 ** 0.5, 0.5))
    assert zooms(blurred, 1) == pytest.approx((1.0, 0.5))
    assert zooms(blurred, 4) == pytest.approx((1.0, 0.5))  # 2x chosen, 1x kept
    assert zooms(blurred, 1 / 2) == pytest.approx((2 ** -0.5, 1.0, 2 ** -1.5))  # 0.71 x 1.41 is 1x: kept
    assert zooms(sharp, 1 / 2) == pytest.approx((2 ** -0.5, 1.0, 2 ** -1.5))


# ---- flat field ------------------------------------------------------------------------------

def _ramped_nuclei(shape, slope=0.4):
    """Bright disks on a background that rises from 0.05 at the left edge by ``slope`` to the right edge, [0, 1]."""
    rows, cols = shape
    centres = [(row, col) for row in range(24, rows - 12, 48) for col in range(24, cols - 12, 48)]
    labels = disk_labels(shape, centres, 9)
    image = 0.05 + slope * np.linspace(0.0, 1.0, cols)[None, :] + 0.5 * (labels > 0)
    return (image / image.max()).astype(np.float32), labels


def test_flat_field_flattens_only_an_uneven_background_before_the_model_sees_it():
    ramped, labels = _ramped_nuclei((192, 256), slope=0.6)  # the right edge's background above the nuclei threshold
    even, _ = _ramped_nuclei((192, 256), slope=0.0)
    settings = postprocessing.Postprocessing(flat_field=True)
    prepared = adaptation.prepare(even, settings)
    assert prepared.image is even and not prepared.settings.flat_field  # evenly lit: left exactly as it is
    assert not prepared.flattened and prepared.unevenness <= adaptation.MAX_BACKGROUND_UNEVENNESS
    prepared = adaptation.prepare(ramped, settings)
    np.testing.assert_array_equal(prepared.image, imaging.flatten_background(ramped))
    assert prepared.settings == settings.replace(flat_field=False) and prepared.flattened
    assert prepared.unevenness == imaging.background_unevenness(ramped) > adaptation.MAX_BACKGROUND_UNEVENNESS
    off = postprocessing.Postprocessing(flat_field=False)
    unflattened = adaptation.prepare(ramped, off)
    assert unflattened.image is ramped and unflattened.settings == off and not unflattened.flattened
    assert unflattened.unevenness == prepared.unevenness  # measured all the same, for predict's counts.csv
    identity = lambda tiles: tiles  # noqa: E731 - the maps are the image the model was given
    np.testing.assert_allclose(prediction.image_maps(identity, ramped, settings, tile_size=128, min_overlap=16)[..., 0],
                               imaging.flatten_background(ramped), atol=1e-5)
    # with the ramp flattened, thresholding finds the nuclei and nothing of the bright side's background
    found = settings.labels(prediction.image_maps(identity, ramped, settings, tile_size=128, min_overlap=16))
    assert found.max() == labels.max()
    assert off.labels(prediction.image_maps(identity, ramped, off, tile_size=128, min_overlap=16)).max() < labels.max()


def test_segment_image_flattens_a_large_image_as_a_whole_not_block_by_block():
    ramped, _ = _ramped_nuclei((300, 420))
    settings = postprocessing.Postprocessing(flat_field=True)
    result = prediction.segment_image(lambda tiles: tiles, ramped, settings, tile_size=128, min_overlap=16,
                                   block_size=160, margin=32)
    np.testing.assert_allclose(result.probability.astype(np.float32), imaging.flatten_background(ramped), atol=2e-3)


def test_flat_field_is_kept_through_the_settings_file_and_the_tuning_grid(tmp_path):
    assert postprocessing.Postprocessing().flat_field  # on by default, also for a file written before it existed
    settings = postprocessing.Postprocessing(flat_field=False)
    settings.save(tmp_path / "postprocessing.json")
    assert not postprocessing.Postprocessing.load(tmp_path / "postprocessing.json").flat_field
    assert not any(grid.flat_field for grid in tuning.tuning_grid(True, settings))

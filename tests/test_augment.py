"""augment.py: crops at random scales keep image and labels aligned; intensity changes stay in range."""

from __future__ import annotations

import numpy as np
import pytest

from nucleunet import augment


def _disk_image(shape=(120, 160), centre=(60, 80), radius=20):
    rows, cols = np.indices(shape)
    labels = (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.int32)
    return labels.astype(np.float32) * 0.8 + 0.1, labels


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.0, 1.5, 2.0])
def test_crop_keeps_image_and_labels_aligned(scale):
    image, labels = _disk_image()
    rng = np.random.default_rng(int(scale * 10))
    for _ in range(5):
        crop, crop_labels = augment.random_crop(image, labels, 64, scale, rng)
        assert crop.shape == crop_labels.shape == (64, 64) and crop.dtype == np.float32
        inside, outside = crop[crop_labels > 0], crop[crop_labels == 0]
        if len(inside) > 20 and len(outside) > 20:  # the disk's edge pixels may fall either side
            assert np.median(inside) > 0.8 and np.median(outside) < 0.2


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_crop_zooms_the_content(scale):
    image, labels = _disk_image(shape=(400, 400), centre=(200, 200), radius=30)
    area = labels.sum()
    crop_size = 400 if scale > 1 else 160  # big enough to hold the whole disk wherever the crop falls
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(20):
        _, crop_labels = augment.random_crop(image, labels, crop_size, scale, rng)
        rows, cols = np.nonzero(crop_labels)
        touches_border = len(rows) and (rows.min() == 0 or cols.min() == 0 or rows.max() == crop_size - 1
                                        or cols.max() == crop_size - 1)
        if len(rows) and not touches_border:
            areas.append(len(rows))
    assert areas and np.median(areas) == pytest.approx(area * scale**2, rel=0.1)


def test_crop_of_an_image_smaller_than_the_crop_is_mirrored():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    crop, labels = augment.random_crop(image, np.ones((3, 4), int), 8, 1.0, np.random.default_rng(0))
    assert crop.shape == (8, 8) and labels.all()
    assert crop[:3, :4].tolist() == image.tolist() and crop[3, :4].tolist() == image[1].tolist()


def test_intensity_changes_stay_in_range_and_are_seeded():
    image, _ = _disk_image()
    settings = augment.Augmentation(gamma=(0.5, 2.0), contrast=(0.5, 1.5), noise=0.1, blur=2.0)
    first = augment.change_intensities(image, settings, np.random.default_rng(3))
    again = augment.change_intensities(image, settings, np.random.default_rng(3))
    assert first.min() >= 0 and first.max() <= 1 and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, image)


def test_no_augmentation_leaves_intensities_alone():
    image, _ = _disk_image()
    assert augment.change_intensities(image, augment.Augmentation(), np.random.default_rng(0)) is image


def test_targets_are_made_after_zooming():
    labels = np.zeros((32, 32), np.int32)
    labels[8:24, 4:16], labels[8:24, 16:28] = 1, 2
    targets = augment.crop_targets(labels, contacts=True)
    assert targets.shape == (32, 32, 2) and targets.dtype == np.float32
    assert targets[..., 0].sum() == (labels > 0).sum() and targets[12, 15:17, 1].tolist() == [1, 1]
    assert augment.crop_targets(labels, contacts=False).shape == (32, 32, 1)


def test_the_contact_band_widens_with_its_radius():
    labels = np.zeros((32, 32), np.int32)
    labels[8:24, 4:16], labels[8:24, 16:28] = 1, 2  # touching between columns 15 and 16
    narrow = augment.crop_targets(labels, contacts=True)[..., 1]
    wide = augment.crop_targets(labels, contacts=True, contact_radius=3)[..., 1]
    assert np.flatnonzero(narrow[12]).tolist() == [14, 15, 16, 17]
    assert np.flatnonzero(wide[12]).tolist() == [13, 14, 15, 16, 17, 18]


@pytest.mark.parametrize("field, value", [("scale", (2.0, 1.0)), ("gamma", (0.0, 1.0)), ("noise", -0.1)])
def test_bad_ranges_are_rejected(field, value):
    with pytest.raises(ValueError, match=field if field != "noise" else "noise"):
        augment.Augmentation(**{field: value})

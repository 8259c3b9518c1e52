"""Training crops drawn from whole images, at random positions, sizes, turns and intensities.

A nucleus image from another microscope differs from the training images in the size of its nuclei
(magnification, binning), in its intensities (exposure, gamma, background, noise)
and in its sharpness; a model trained on crops whose scale and intensities vary sees more of those than the
training set holds. ``Augmentation`` says how much they vary; ``random_crop`` cuts one training example out
of an image and its labels, ``crop_targets`` makes its training targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from nucleunet.tiling import CONTACT_RADIUS, contact_map


@dataclass(frozen=True)
class Augmentation:
    """How much training crops vary. Every range is sampled uniformly, scale log-uniformly.

    Attributes
    ----------
    scale : (float, float)
        Zoom of the crop's content: 2 shows nuclei twice as large as in the image, 0.5 half as large.
    gamma : (float, float)
        Intensity ``x ** gamma`` (x in [0, 1]); below 1 brightens dim structures.
    contrast : (float, float)
        Intensities scaled about the crop's background (its 10th percentile).
    noise : float
        Largest standard deviation of added Gaussian noise (intensity units); each crop draws one in [0, noise].
    blur : float
        Largest Gaussian blur sigma (pixels, after scaling); each crop draws one in [0, blur].
    """

    scale: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    blur: float = 0.0

    def __post_init__(self):
        for name in ("scale", "gamma", "contrast"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(low, high)}")
        if self.noise < 0 or self.blur < 0:
            raise ValueError(f"noise and blur must be non-negative, got {self.noise}, {self.blur}")

    @property
    def changes_intensities(self) -> bool:
        return self.gamma != (1.0, 1.0) or self.contrast != (1.0, 1.0) or self.noise > 0 or self.blur > 0


def random_crop(image: np.ndarray, labels: np.ndarray, size: int, scale: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop of ``image`` and ``labels`` at a random place, its content zoomed by ``scale``.

    The crop covers ``size / scale`` source pixels; parts beyond the image are mirrored, as a tile at
    an image's border is padded. The image is interpolated linearly (smoothed first when shrunk, so
    fine texture does not alias), the labels by nearest neighbour.

    Parameters
    ----------
    image : ndarray, shape (H, W), float in [0, 1]
    labels : ndarray, shape (H, W), int, 0 = background
    size : int
    scale : float, > 0

    Returns
    -------
    image : ndarray, shape (size, size), float32
    labels : ndarray, shape (size, size), labels' dtype

    Examples
    --------
    >>> image = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> crop, _ = random_crop(image, np.zeros((4, 4), int), 4, 1.0, np.random.default_rng(0))
    >>> crop.tolist() == image.tolist()  # at scale 1 an image of the crop's size is the crop
    True
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    height, width = image.shape
    extent = size / scale  # source pixels covered by the crop
    top = rng.uniform(0, max(height - extent, 0))
    left = rng.uniform(0, max(width - extent, 0))
    if scale == 1.0:
        top, left = int(top), int(left)
        rows = _mirror(np.arange(top, top + size), height)
        cols = _mirror(np.arange(left, left + size), width)
        return image[np.ix_(rows, cols)].astype(np.float32), labels[np.ix_(rows, cols)]
    # Source coordinates of the output pixel centres; only a window around them is read (mirrored at borders).
    rows = top + (np.arange(size) + 0.5) / scale - 0.5
    cols = left + (np.arange(size) + 0.5) / scale - 0.5
    first_row, first_col = int(np.floor(rows[0])) - 3, int(np.floor(cols[0])) - 3
    window_rows = _mirror(np.arange(first_row, int(np.floor(rows[-1])) + 5), height)
    window_cols = _mirror(np.arange(first_col, int(np.floor(cols[-1])) + 5), width)
    window = image[np.ix_(window_rows, window_cols)].astype(np.float32)
    if scale < 1.0:  # shrinking: smooth first, so the sampling does not alias fine texture
        window = ndi.gaussian_filter(window, sigma=0.5 * (1 / scale - 1) ** 0.5 + 0.25)
    grid = np.meshgrid(rows - first_row, cols - first_col, indexing="ij")
    crop = ndi.map_coordinates(window, grid, order=1, mode="nearest").astype(np.float32)
    nearest = [_mirror(np.round(axis).astype(int), length) for axis, length in zip((rows, cols), (height, width))]
    return crop, labels[np.ix_(*nearest)]


def _mirror(index: np.ndarray, length: int) -> np.ndarray:
    """Indices folded back into [0, length) by reflection (``np.pad``'s 'reflect', repeated as needed)."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    index = np.mod(index, period)
    return np.where(index < length, index, period - index)


def change_intensities(crop: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast about the background, blur and noise, drawn from ``augmentation``; the result is
    clipped to [0, 1]: ndarray of the crop's shape, float32."""
    if not augmentation.changes_intensities:
        return crop
    gamma = rng.uniform(*augmentation.gamma)
    contrast = rng.uniform(*augmentation.contrast)
    sigma_blur = rng.uniform(0, augmentation.blur)
    sigma_noise = rng.uniform(0, augmentation.noise)
    out = np.clip(crop, 0, 1) ** gamma
    background = np.percentile(out, 10)
    out = background + (out - background) * contrast
    if sigma_blur > 0.3:
        out = ndi.gaussian_filter(out, sigma_blur)
    if sigma_noise > 0:
        out = out + rng.normal(0, sigma_noise, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def crop_targets(labels: np.ndarray, contacts: bool, contact_radius: int = CONTACT_RADIUS) -> np.ndarray:
    """The training targets of a crop, made after zooming so that the contact band keeps its width
    (``contact_radius`` pixels of the crop: ``tiling.contact_map``).

    Returns
    -------
    ndarray, shape (size, size, C), float32: nucleus [, contact]
    """
    channels = [labels > 0]
    if contacts:
        channels.append(contact_map(labels, contact_radius))
    return np.stack(channels, axis=-1).astype(np.float32)


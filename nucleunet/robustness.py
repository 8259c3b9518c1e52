"""Controlled shifts of images, our stand-in for microscope images of other kinds than the training set's.

Images from another lab differ in nucleus size (magnification), in intensities (exposure, gamma, contrast,
noise), in sharpness, in polarity and in colour. ``perturb`` applies one such shift to a raw image (as
read from its file, before ``imaging.preprocess``) and its labels; ``evaluation.evaluate_run`` with
``perturb=True`` scores a model on every shift of ``SHIFTS``, one column each.
"""

from __future__ import annotations

import zlib

import numpy as np
import scipy.ndimage as ndi
import skimage.transform

# Each shift: (kind, value). 'none' is the images as they are.
SHIFTS: dict[str, tuple[str, float]] = {
    "none": ("none", 1.0),
    "scale0.5": ("scale", 0.5),
    "scale0.75": ("scale", 0.75),
    "scale1.5": ("scale", 1.5),
    "scale2": ("scale", 2.0),
    "gamma0.5": ("gamma", 0.5),
    "gamma2": ("gamma", 2.0),
    "contrast0.5": ("contrast", 0.5),
    "noise": ("noise", 0.1),
    "blur": ("blur", 2.0),
    "blur+noise": ("blurnoise", 2.0),
    "background": ("ramp", 0.5),
    "shading": ("vignette", 0.4),
    "inverted": ("invert", 1.0),
    "channels": ("permute", 1.0),
}


def as_unit_float(raw: np.ndarray) -> np.ndarray:
    """A raw image as float32, integers scaled by their dtype's maximum, alpha dropped; floats kept as they are.

    Returns
    -------
    ndarray, shape (H, W) or (H, W, 3), float32
    """
    image = np.asarray(raw)
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    image = image.astype(np.float32)
    if image.ndim == 3 and image.shape[-1] in (2, 4):  # drop alpha
        image = image[..., :-1]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """An image and its labels resized by ``factor``: the image linearly (smoothed first when shrinking), the
    labels by nearest neighbour. What the 'scale<s>' shifts of ``perturb`` do, for any factor.

    Examples
    --------
    >>> image, labels = rescale(np.ones((4, 6), np.float32), np.ones((4, 6), int), 2.5)
    >>> image.shape, labels.shape
    ((10, 15), (10, 15))
    """
    shape = tuple(max(int(round(side * factor)), 1) for side in labels.shape)
    image = skimage.transform.resize(image, shape + image.shape[2:], order=1, anti_aliasing=factor < 1,
                                     preserve_range=True).astype(np.float32)
    labels = skimage.transform.resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True
                                      ).astype(labels.dtype)
    return image, labels


def image_seed(image_id: str) -> int:
    """The noise seed of an image's shifts, from its id: the same noise in every run and script.

    >>> image_seed("a") == image_seed("a") != image_seed("b")
    True
    """
    return zlib.crc32(image_id.encode())


def add_noise(image: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``image`` plus Gaussian noise, sigma ``share`` times its intensity range between the 1st and 99th percentiles."""
    low, high = np.percentile(image, (1, 99))
    return image + np.random.default_rng(seed).normal(0, share * max(high - low, 1e-6), image.shape)


def background_ramp(image: np.ndarray, share: float) -> np.ndarray:
    """A background for ``image`` that rises linearly from 0 at its left edge to ``share`` times its intensity range
    between the 1st and 99th percentiles at its right edge; shape (H, W[, 1]), to add to the image.

    >>> background_ramp(np.array([[0.0, 0.5, 1.0]] * 2), 0.5).round(3).tolist()
    [[0.0, 0.25, 0.5], [0.0, 0.25, 0.5]]
    """
    low, high = np.percentile(image, (1, 99))
    width = image.shape[1]
    ramp = share * max(high - low, 1e-6) * np.linspace(0.0, 1.0, width) if width > 1 else np.zeros(1)
    ramp = np.broadcast_to(ramp, image.shape[:2])
    return ramp[..., None] if image.ndim == 3 else ramp


def vignette(shape: tuple[int, int], corner: float) -> np.ndarray:
    """A falloff of shape ``shape``: 1 at the centre, ``corner`` at the corners, quadratic in the distance from the
    centre; float64.

    >>> vignette((3, 3), 0.4).round(2).tolist()
    [[0.4, 0.7, 0.4], [0.7, 1.0, 0.7], [0.4, 0.7, 0.4]]
    """
    rows, cols = (np.arange(side) - (side - 1) / 2 for side in shape)
    squared = rows[:, None] ** 2 + cols[None, :] ** 2
    return 1 - (1 - corner) * squared / max(float(squared.max()), 1e-12)


def perturb(raw: np.ndarray, labels: np.ndarray, shift: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One shift of ``SHIFTS`` applied to a raw image and, for a change of scale, to its labels.

    Parameters
    ----------
    raw : ndarray, shape (H, W) or (H, W, C), as read from the file (any dtype)
    labels : ndarray, shape (H, W), int, 0 = background
    shift : str, a key of ``SHIFTS``
        'scale<s>': resized by s (linear, smoothed first when shrinking), the labels by nearest
        neighbour; 'gamma<g>': ``x ** g``; 'contrast0.5': halfway to the image's mean; 'noise':
        Gaussian, sigma 10 % of the intensity range between the 1st and 99th percentiles; 'blur':
        Gaussian, sigma 2 pixels; 'blur+noise': that blur, then that noise (out of focus in low light);
        'background': a background rising linearly from 0 at the left edge to half the intensity range between
        the 1st and 99th percentiles at the right edge, added (haze or stray light on one side); 'shading': the
        image multiplied by a falloff from 1 at the centre to 0.4 at the corners, quadratic in the distance from
        the centre (vignetting, an uneven lamp); 'inverted': ``1 - x``; 'channels': the colour channels permuted, RGB
        to BRG (a gray image is unchanged).
    seed : int
        Seeds the noise.

    Returns
    -------
    image : ndarray, shape (H', W'[, 3]), float32 (integers scaled to [0, 1])
    labels : ndarray, shape (H', W'), the labels' dtype

    Examples
    --------
    >>> image, labels = perturb(np.full((4, 6), 255, np.uint8), np.ones((4, 6), int), "scale0.5")
    >>> image.shape, labels.shape, float(image.max())
    ((2, 3), (2, 3), 1.0)
    """
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}: choose from {', '.join(SHIFTS)}")
    kind, value = SHIFTS[shift]
    image = as_unit_float(raw)
    if kind == "scale":
        image, labels = rescale(image, labels, value)
    elif kind == "gamma":
        image = np.clip(image, 0, None) ** value
    elif kind == "contrast":
        mean = image.mean(axis=(0, 1))
        image = mean + (image - mean) * value
    elif kind == "noise":
        image = add_noise(image, value, seed)
    elif kind in ("blur", "blurnoise"):
        sigma = (value, value, 0) if image.ndim == 3 else value
        image = ndi.gaussian_filter(image, sigma)
        if kind == "blurnoise":
            image = add_noise(image, SHIFTS["noise"][1], seed)
    elif kind == "ramp":
        image = image + background_ramp(image, value)
    elif kind == "vignette":
        image = image * vignette(image.shape[:2], value)[(...,) + (None,) * (image.ndim - 2)]
    elif kind == "invert":
        image = 1 - image
    elif kind == "permute" and image.ndim == 3:
        image = image[..., [2, 0, 1]]
    return image.astype(np.float32), labels

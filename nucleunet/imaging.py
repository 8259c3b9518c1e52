"""Reading and normalising microscope images: any file to a grayscale image the U-Net takes.

NumPy and scikit-image only. ``preprocess`` is the one rule for training images and for the
images a user segments: grayscale, non-finite pixels replaced, contrast stretched, dark-on-light
images inverted so that nuclei are bright.
"""

from __future__ import annotations

import functools
import logging
from pathlib import PurePosixPath

import imageio.v3
import numpy as np
import skimage.color

from nucleunet.errors import UserError

log = logging.getLogger("imaging")

# The intensity stretch of ``preprocess``: the minimum to 0, the 99.95th percentile to 1.
DEFAULT_PERCENTILES = (0.0, 99.95)

# The image files that a folder of images to segment is searched for.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

STAT_COLUMNS = (
    "min", "max", "mean", "std", "width", "height",
    "mean_red", "mean_green", "mean_blue", "saturation", "channel_spread", "median",
)


def _scale_to_unit(image: np.ndarray) -> np.ndarray:
    """Integer images to float32 [0, 1] by their dtype's range; floats keep their values (any range:
    ``preprocess`` stretches every image by its own percentiles)."""
    if np.issubdtype(image.dtype, np.integer):
        scaled = image.astype(np.float32)
        scaled /= np.float32(np.iinfo(image.dtype).max)  # in place: one float copy of a large image, not two
        return scaled
    if np.issubdtype(image.dtype, np.floating) or image.dtype == bool:
        return image.astype(np.float32)
    raise UserError(f"unsupported image dtype {image.dtype}")


def replace_nonfinite(image: np.ndarray, *, name: str = "image") -> tuple[np.ndarray, int]:
    """Replace NaN and infinite pixels by the median of the finite ones.

    Float TIFFs from microscopes can hold NaN or infinity (outside the field of view, after
    registration or stitching, saturated or masked pixels). Such pixels never reach the model as
    arbitrary numbers: they take the median of the image's finite values, which on a nucleus image
    is background (the background covers most of it), so they add no nuclei. This is the one rule
    for training data and for prediction.

    Parameters
    ----------
    image : ndarray, any shape, any dtype
    name : str
        Names the image in the error.

    Returns
    -------
    image : ndarray, same shape and dtype; the input itself when every pixel is finite (integer
        images always are)
    count : int
        How many values were replaced.

    Raises
    ------
    ValueError
        When no pixel is finite: there is nothing to segment or to learn from.

    Examples
    --------
    >>> fixed, count = replace_nonfinite(np.array([[0.0, np.nan], [0.2, np.inf]], np.float32))
    >>> fixed.tolist(), count
    ([[0.0, 0.10000000149011612], [0.20000000298023224, 0.10000000149011612]], 2)
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        return image, 0
    finite = np.isfinite(image)
    count = int(finite.size - np.count_nonzero(finite))
    if count == 0:
        return image, 0
    if count == finite.size:
        raise UserError(f"{name}: all {count} pixel values are NaN or infinite; nothing to segment")
    fixed = image.copy()
    fixed[~finite] = np.median(image[finite])
    return fixed, count


def _check_layout(image: np.ndarray) -> None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4)):
        raise UserError(f"expected an image of shape (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise UserError(f"empty image of shape {image.shape}")


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """Any supported layout to shape (H, W, 3) float32 (alpha dropped, gray repeated)."""
    _check_layout(image)
    if image.ndim == 2:
        image = image[..., None]
    image = _scale_to_unit(image)
    channels = image.shape[-1]
    if channels in (1, 2):  # gray, or gray + alpha
        return np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def to_grayscale(image: np.ndarray, colour: bool | None = None) -> np.ndarray:
    """Convert an image of any supported layout to grayscale.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C) with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)
        uint8, uint16 (scaled by the dtype's maximum) or float (kept as it is).
    colour : bool, optional
        ``is_colour(image)``, where the caller knows it already (it compares whole channels).

    Returns
    -------
    gray : ndarray, shape (H, W), float32 (in [0, 1] for integer images)
        Luminance (ITU-R 709 weights), or the one channel of gray stored as RGB; alpha is ignored.
        A gray image is only scaled: no colour copy of it is made (it may be large).

    Examples
    --------
    >>> to_grayscale(np.full((2, 2, 4), 255, np.uint8)).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    image = np.asarray(image)
    _check_layout(image)
    if image.ndim == 2:
        return _scale_to_unit(image)
    if image.shape[-1] in (1, 2):  # gray, or gray + alpha
        return _scale_to_unit(image[..., 0])
    if not (is_colour(image) if colour is None else colour):
        return _scale_to_unit(image[..., 0])  # gray stored as RGB: keep its values exactly
    return skimage.color.rgb2gray(_scale_to_unit(image[..., :3])).astype(np.float32)


def is_dark_on_light(gray: np.ndarray) -> bool:
    """Whether the background is brighter than the nuclei (brightfield, stained histology).

    The background covers most of a DSB image and is its most common intensity, so both decide: the median and the
    peak of the intensity histogram (``_histogram_peak``) must lie above the middle of the image's own range for a
    light background. The peak keeps an image dense with bright nuclei (more than half its pixels, as in a packed
    tissue section) from being taken for a light background; the median keeps one with many saturated nuclei (a peak
    at the top) from it. For a colour image, pass its ``colour_value``: its luminance can mislead (``preprocess``).
    """
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return False
    middle = (low + high) / 2
    sample = _sample(gray)
    return float(np.median(sample)) > middle and _histogram_peak(sample, low, high) > middle


def _histogram_peak(values: np.ndarray, low: float, high: float, bins: int = 64) -> float:
    """The most common value of ``values`` (in [low, high]): the centre of the highest bin of their histogram, smoothed
    over about 1.5 bins so that noise does not pick a stray bin."""
    from scipy import ndimage

    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    peak = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(np.float64), 1.5)))
    return float(edges[peak] + edges[peak + 1]) / 2


def is_colour(image: np.ndarray) -> bool:
    """Whether ``image`` has colour: three or four channels that are not all the same (not gray stored as RGB)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 3:
        return False
    return not (np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def colour_value(image: np.ndarray, most: int = 2**22) -> np.ndarray:
    """A colour image's brightest channel at each pixel (HSV value), float32, on a grid of at most ``most`` pixels.

    What tells a stained slide from a fluorescence composite: the slide's background is near white, light in
    every channel, and its stains darken some channels only (pink stroma stays bright in red, where its luminance
    is as dark as the nuclei); a composite's background is dark in every channel.
    """
    return _scale_to_unit(_grid(image, most)[..., :3].max(axis=-1))


def _grid(image: np.ndarray, most: int) -> np.ndarray:
    """A view of ``image`` (H, W, ...) on a regular grid of every few rows and columns: at most ``most`` pixels."""
    image = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / most))))
    return image[::step, ::step]


def light_background(image: np.ndarray, gray: np.ndarray | None = None,
                     percentiles: tuple[float, float] = DEFAULT_PERCENTILES, colour: bool | None = None) -> bool:
    """Whether ``image`` (as read, any layout) shows dark nuclei on a light background: ``preprocess`` inverts it.

    Decided by ``is_dark_on_light`` on the stretched grayscale (``gray``, if already made), or for a colour image on
    its ``colour_value``: a stained slide whose pink stroma or dense nuclei cover more than half of it has a dark
    luminance median, but its brightest channel still shows the light background (two such images of the DSB
    training set were left uninverted when luminance decided). ``colour``: ``is_colour(image)``, if already known.
    """
    if is_colour(image) if colour is None else colour:
        return is_dark_on_light(stretch(colour_value(image), percentiles))
    return is_dark_on_light(stretch(to_grayscale(image), percentiles) if gray is None else gray)


# ``composite_channels``: a channel carries signal when its 1st-99.95th percentile range is at least this share of the
# widest channel's; two channels whose values correlate above ``LUT_CORRELATION`` are one signal in a colour table.
SIGNAL_SHARE = 0.25
LUT_CORRELATION = 0.98
CHANNEL_NAMES = ("red", "green", "blue")


def composite_channels(image: np.ndarray, most: int = 2**20) -> tuple[str, ...]:
    """The channels of a fluorescence composite that carry different signals: () unless ``image`` is colour, has a
    dark background (``light_background`` false) and two or more of its red, green and blue channels carry signal
    that is not the same signal in a colour table (cyan is green and blue alike).

    Such an image is converted to gray by luminance, which weighs blue, where a DNA stain often is, 0.07: the
    nuclei may be lost among the other channels' signal, and ``--channel N`` should pick the nuclear one.
    """
    if not is_colour(image) or light_background(image):
        return ()
    channels = _scale_to_unit(_grid(image, most)[..., :3]).reshape(-1, 3)
    low, high = np.percentile(channels, [1, 99.95], axis=0)
    spread = high - low
    if spread.max() <= 0:
        return ()
    signal = [index for index in range(3) if spread[index] >= SIGNAL_SHARE * spread.max()]
    distinct = []
    for index in signal:
        if not any(abs(np.corrcoef(channels[:, index], channels[:, kept])[0, 1]) > LUT_CORRELATION
                   for kept in distinct):
            distinct.append(index)
    return tuple(CHANNEL_NAMES[index] for index in distinct) if len(distinct) > 1 else ()


def preprocess(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Grayscale, stretch to [0, 1], and invert dark-on-light images so nuclei are bright.

    Which images are inverted: ``light_background``.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), uint8, uint16 or float (any range)
        NaN and infinite values are replaced as ``replace_nonfinite`` says (with a warning); an
        image with no finite value is a ``UserError``.
    percentiles : (low, high)
        The stretch maps the ``low`` percentile (0: the minimum) to 0 and the ``high`` one to 1, values
        beyond them clipped: a few hot pixels do not squash the rest, and dim and bright exposures, 8 bit,
        16 bit or float, look alike to the model.

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]

    Examples
    --------
    >>> preprocess(np.array([[0, 100], [200, 200]], np.uint8)).round(2).tolist()  # light background
    [[1.0, 0.5], [0.0, 0.0]]
    """
    image, count = replace_nonfinite(image)
    if count:
        log.warning("%d pixel values are NaN or infinite; replaced by the median of the others", count)
    colour = is_colour(image)
    gray = stretch(to_grayscale(image, colour), percentiles)  # a new array, stretched in place: no further copies
    if light_background(image, gray, percentiles, colour):
        np.subtract(1.0, gray, out=gray)
    return gray


def stretch(gray: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """``gray`` (float) stretched in place, the intensities at the two ``percentiles`` (``robust_range``) to 0 and 1 and
    those beyond clipped, and returned; all zeros (a new array) if the two are equal."""
    low, high = robust_range(gray, percentiles)
    if high <= low:
        return np.zeros_like(gray)
    np.clip(gray, low, high, out=gray)
    gray -= low
    gray /= high - low
    return gray


def _sample(gray: np.ndarray, most: int = 2**24) -> np.ndarray:
    """``gray`` itself, or every few of its pixels when it has more than ``most``: percentiles and medians of a
    very large image without a sorted copy of it."""
    return gray if gray.size <= most else gray.ravel()[:: int(np.ceil(gray.size / most))]


def robust_range(gray: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """The intensities at the two percentiles (0: the minimum); images over 16 MP are sampled every few pixels,
    so that a very large image needs no sorted copy of itself."""
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    sample = _sample(gray)
    low_value = float(gray.min()) if low == 0 else float(np.percentile(sample, low))
    return low_value, float(np.percentile(sample, high))


# ``edge_sharpness``: the scale of its derivatives (fine enough to see a blur of 2 pixels, coarse enough that the
# image's noise can be subtracted; sigma in pixels), the scale at which its strongest edges are found (where noise
# hardly moves them), and the share of the pixels that count as edges.
SHARPNESS_SCALE = 0.7
SHARPNESS_EDGE_SCALE = 2.0
SHARPNESS_EDGE_SHARE = 0.05


def noise_sigma(gray: np.ndarray) -> float:
    """The standard deviation of an image's pixel noise, assumed white (independent from pixel to pixel).

    Immerkaer's kernel (1, -2, 1) x (1, -2, 1) cancels every structure up to a quadric's, so what it leaves is mostly
    noise; the median of its absolute response (not the mean) keeps the edges that it does not cancel from counting.
    0 for a noiseless image. J. Immerkaer, "Fast noise variance estimation", CVIU 64 (1996) 300-302.

    gray : ndarray, shape (H, W), float; at least 3 x 3

    >>> round(noise_sigma(np.random.default_rng(0).normal(0.5, 0.1, (256, 256))), 2)
    0.1
    """
    from scipy import ndimage

    kernel = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])  # its squares sum to 36: white noise of sigma s gives 6 s
    response = ndimage.convolve(np.asarray(gray, dtype=np.float64), kernel, mode="reflect")[1:-1, 1:-1]
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))  # a normal's median absolute value: 0.6745 sigma


@functools.lru_cache
def _white_noise_power(scale: float) -> tuple[float, float]:
    """What white noise of sigma 1 adds, on average, to the squared gradient magnitude and to the squared Laplacian
    of Gaussian at ``scale``: the sums of the squared (discrete) filter kernels."""
    from scipy import ndimage

    impulse = np.zeros((8 * int(np.ceil(scale)) + 9,) * 2)
    impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
    gradient = sum(float((ndimage.gaussian_filter(impulse, scale, order=order) ** 2).sum())
                   for order in ((0, 1), (1, 0)))
    return gradient, float((ndimage.gaussian_laplace(impulse, scale) ** 2).sum())


def edge_sharpness(image: np.ndarray) -> float:
    """How sharp an image's edges are, whatever its pixel noise: blur and enlarging lower it, shrinking raises it.

    Over its strongest edges (the 5 % of pixels of highest gradient magnitude at scale 2), the root-mean-square
    Laplacian of Gaussian over the root-mean-square gradient magnitude, both at scale 0.7, each with the power that the
    image's noise (``noise_sigma``) adds to it on average removed; 0 for an image without edges. Noise raises both
    derivatives, so without that correction a blurred, noisy image would measure as sharp as a clean, sharp one.
    On the CV images of our split (bench/sharpness.py): 0.35-0.82 as they are, 0.20-0.46 under a Gaussian blur of
    sigma 2 (0.09-0.45 with noise added too), 0.51 and more shrunk to half size or less (noisy or not).

    image : ndarray, shape (H, W) or (H, W, C), preprocessed (``preprocess``); the first channel is used
    """
    from scipy import ndimage

    gray = np.asarray(image, dtype=np.float64)
    gray = gray[..., 0] if gray.ndim == 3 else gray
    strength = ndimage.gaussian_gradient_magnitude(gray, SHARPNESS_EDGE_SCALE)
    edges = strength > np.percentile(strength, 100 * (1 - SHARPNESS_EDGE_SHARE))
    if not edges.any():
        return 0.0
    noise = noise_sigma(gray) ** 2 if min(gray.shape) >= 3 else 0.0
    gradient_noise, laplace_noise = _white_noise_power(SHARPNESS_SCALE)
    gradient = np.mean(ndimage.gaussian_gradient_magnitude(gray, SHARPNESS_SCALE)[edges] ** 2) - noise * gradient_noise
    laplace = np.mean(ndimage.gaussian_laplace(gray, SHARPNESS_SCALE)[edges] ** 2) - noise * laplace_noise
    if gradient <= 0:
        return 0.0  # edges no stronger than the noise
    return float(np.sqrt(max(laplace, 0.0) / gradient))


# ``background_grid``: blocks across the image's shorter side, and the percentile of each block that is its background
# (nuclei cover less than this share of most blocks of a DSB image).
BACKGROUND_BLOCKS = 4
BACKGROUND_PERCENTILE = 5.0
FLATTEN_BAND = 512  # rows of the background made at a time by ``flatten_background``: no full-size background array


def _block_edges(length: int, side: int) -> np.ndarray:
    """Where the blocks of about ``side`` pixels along an axis of ``length`` pixels start and end."""
    return np.linspace(0, length, max(int(round(length / side)), 1) + 1).astype(int)


def background_grid(gray: np.ndarray, blocks: int = BACKGROUND_BLOCKS,
                    percentile: float = BACKGROUND_PERCENTILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The background level of an image over a coarse grid of blocks: ``blocks`` blocks across its shorter side
    (square, at least 8 pixels), each block's ``percentile``-th percentile, then the median of each block and its
    eight neighbours, so that a block filled by a nucleus or a cluster of them does not count as background.

    gray : ndarray, shape (H, W), float; a preprocessed image (``preprocess``: nuclei bright)

    Returns
    -------
    grid : ndarray, shape (rows, cols), float64: the level of each block
    row_edges, col_edges : ndarray, shapes (rows + 1,) and (cols + 1,), int: where the blocks start and end

    >>> ramp = np.tile(np.arange(64.0), (32, 1))
    >>> grid, row_edges, col_edges = background_grid(ramp, blocks=2)
    >>> grid.tolist(), row_edges.tolist(), col_edges.tolist()
    ([[0.0, 16.0, 32.0, 48.0], [0.0, 16.0, 32.0, 48.0]], [0, 16, 32], [0, 16, 32, 48, 64])
    """
    from scipy import ndimage

    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a grayscale image of shape (H, W), got shape {gray.shape}")
    side = max(int(np.ceil(min(gray.shape) / blocks)), 8)
    rows, cols = _block_edges(gray.shape[0], side), _block_edges(gray.shape[1], side)
    step = max(int(np.sqrt(side * side / 2**18)), 1)  # a very large block: the percentile of every few pixels
    grid = np.array([[np.percentile(gray[top:bottom:step, left:right:step], percentile)
                      for left, right in zip(cols[:-1], cols[1:])] for top, bottom in zip(rows[:-1], rows[1:])])
    return ndimage.median_filter(grid, size=3, mode="nearest"), rows, cols


def background_unevenness(gray: np.ndarray) -> float:
    """How much an image's background level varies across it: the highest minus the lowest level of
    ``background_grid``, in the image's intensity units (a preprocessed image: its range is 0-1).

    About 0 for an evenly lit image; a background ramp or vignetting raises it. ``flatten_background`` removes it.
    """
    grid = background_grid(gray)[0]
    return float(grid.max() - grid.min())


def _interpolation_weights(edges: np.ndarray) -> np.ndarray:
    """Weights, shape (pixels, blocks), that interpolate values at the blocks' centres linearly to every pixel along
    an axis, and extrapolate them linearly beyond the outer centres."""
    centres = (edges[:-1] + edges[1:] - 1) / 2
    pixels = np.arange(edges[-1], dtype=np.float64)
    weights = np.zeros((len(pixels), len(centres)))
    if len(centres) == 1:
        weights[:, 0] = 1.0
        return weights
    lower = np.clip(np.searchsorted(centres, pixels, side="right") - 1, 0, len(centres) - 2)
    share = (pixels - centres[lower]) / (centres[lower + 1] - centres[lower])
    weights[np.arange(len(pixels)), lower] = 1 - share
    weights[np.arange(len(pixels)), lower + 1] = share
    return weights


def flatten_background(gray: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """A preprocessed image with its uneven background subtracted, then stretched again as ``preprocess`` stretches.

    The background is ``background_grid`` interpolated linearly between the blocks' centres (and extrapolated beyond
    the outer ones): smooth at the scale of a quarter of the image, so nuclei are left as they are, while a background
    ramp or vignetting (a flat-field error) is removed.

    gray : ndarray, shape (H, W), float32 in [0, 1] (``preprocess``)

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]

    >>> ramp = np.tile(np.linspace(0.0, 0.5, 64, dtype=np.float32), (64, 1))
    >>> ramp[20:30, 50:60] += 0.5  # a nucleus on the bright side
    >>> flat = flatten_background(ramp)
    >>> round(background_unevenness(ramp), 2), round(background_unevenness(flat), 2), round(float(flat[25, 55]), 2)
    (0.38, 0.0, 1.0)
    """
    grid, rows, cols = background_grid(gray)
    along_rows = (_interpolation_weights(rows) @ grid).astype(np.float32)  # (H, cols)
    across = _interpolation_weights(cols).T.astype(np.float32)  # (cols, W)
    flat = np.array(gray, dtype=np.float32)  # the one full-size copy: the background is subtracted a band at a time
    for top in range(0, flat.shape[0], FLATTEN_BAND):
        flat[top:top + FLATTEN_BAND] -= along_rows[top:top + FLATTEN_BAND] @ across
    return stretch(flat, percentiles)


# ``denoise``: the Gaussian's sigma in pixels.
DENOISE_SIGMA = 1.0


def central(image: np.ndarray, most: int = 2048) -> np.ndarray:
    """A view of the central ``most`` x ``most`` pixels of ``image`` (all of it where it is smaller): where an image
    is measured (its noise, its edges, its nuclei's size) without reading every pixel of a very large one."""
    height, width = image.shape[:2]
    top, left = max((height - most) // 2, 0), max((width - most) // 2, 0)
    return image[top:top + most, left:left + most]


def denoise(gray: np.ndarray, sigma: float = DENOISE_SIGMA) -> np.ndarray:
    """``gray`` smoothed by a Gaussian of ``sigma`` pixels (a new float32 array, in the same range): the pixel noise
    of a dim exposure is averaged out over a few pixels, at the cost of a little sharpness."""
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(gray, dtype=np.float32), sigma, mode="reflect")


def image_stats(image: np.ndarray) -> dict:
    """Statistics of a raw image that tell its kind apart (see ``STAT_COLUMNS``).

    The reference's min, max, mean, std, width and height (of the grayscale), and colour
    features: fluorescence is gray with a dark median, brightfield gray with a light median,
    stained histology coloured (saturation and channel spread well above zero).
    """
    rgb = _colour_channels(np.asarray(image))
    gray = skimage.color.rgb2gray(rgb)
    # HSV saturation as skimage.color.rgb2hsv computes it (spread / max, 0 where the spread is 0),
    # without the hue and value planes it also builds: rgb2hsv was most of a cold dataset load.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # elementwise: NumPy is slow over a last axis of 3
    top = np.maximum(np.maximum(red, green), blue)
    spread = top - np.minimum(np.minimum(red, green), blue)
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = np.where(spread == 0, np.float32(0), spread / top)
    return {
        "min": float(gray.min()),
        "max": float(gray.max()),
        "mean": float(gray.mean()),
        "std": float(gray.std()),
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "mean_red": float(red.mean()),
        "mean_green": float(green.mean()),
        "mean_blue": float(blue.mean()),
        "saturation": float(saturation.mean()),
        "channel_spread": float(spread.mean()),
        "median": float(np.median(gray)),
    }



def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode image file bytes; ``UserError`` naming ``where`` with a one-line reason if they are not an image."""
    if not data:
        raise UserError(f"cannot read {where}: empty file (0 bytes)")
    try:
        # imageio is scikit-image's reader; the suffix picks the right plugin for bytes.
        return np.asarray(imageio.v3.imread(data, extension=PurePosixPath(where).suffix.lower() or None))
    except Exception as error:  # noqa: BLE001 - decoders raise many types; name the file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot read {where}: not a readable image ({reason})") from error

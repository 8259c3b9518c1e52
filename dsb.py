"""Load the 2018 Data Science Bowl nuclei data, split it by image cluster, cut it into tiles.

NumPy, scikit-image, scikit-learn and pandas only: nothing here imports Keras.

The data flow (see ``../shared/docs/DESIGN.md``)::

    stage1_train(.zip) -> load_dataset() -> [ImageRecord(image_id, image, labels, stats)]
                       -> image_statistics() -> cluster_images() -> stratified_split() (saved, reused)
                       -> make_tiles() / stitch_tiles()

Run ``python dsb.py`` to find (or download) the training set and print where it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import imageio.v3
import numpy as np
import pandas as pd
import PIL.Image
import scipy.ndimage as ndi
import skimage.color
import skimage.exposure
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

log = logging.getLogger("dsb")

PROJECT_DIR = Path(__file__).resolve().parent
DATASETS_DIR = PROJECT_DIR / "datasets"
DEFAULT_CACHE_DIR = DATASETS_DIR / "cache"
DEFAULT_SPLIT_PATH = DATASETS_DIR / "split.csv"
TEAM_MIRROR = PROJECT_DIR.parent / "shared" / "datasets" / "stage1_train.zip"
PUBLIC_URL = "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip"

TILE_SIZE = 256
CONTACT_RADIUS = 2  # pixels: the width of the contact target on each side of where nuclei touch
N_CLUSTERS = 8
SUBSETS = ("train", "cv", "test")

# Bump when the decoded arrays change meaning, so older caches are not trusted.
CACHE_VERSION = 2

STAT_COLUMNS = (
    "min", "max", "mean", "std", "width", "height",
    "mean_red", "mean_green", "mean_blue", "saturation", "channel_spread", "median",
)


# --------------------------------------------------------------------------------------------
# Records and preprocessing
# --------------------------------------------------------------------------------------------

@dataclass
class ImageRecord:
    """One training image with its nuclei.

    Attributes
    ----------
    image_id : str
        The DSB ImageId (the folder name).
    image : ndarray, shape (H, W), float32 in [0, 1]
        Grayscale, contrast-stretched, nuclei bright (dark-on-light images are inverted).
    labels : ndarray, shape (H, W), int32, 0 = background
        One label per mask file, numbered 1..n in the sorted order of the mask file names.
    stats : dict
        Statistics of the raw image (see ``STAT_COLUMNS``), used for clustering.
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """Union of all nuclei: ndarray, shape (H, W), bool."""
        return self.labels > 0


def _scale_to_unit(image: np.ndarray) -> np.ndarray:
    """Integer images to float32 [0, 1] by their dtype's range; floats are clipped to [0, 1]."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    if np.issubdtype(image.dtype, np.floating) or image.dtype == bool:
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype}")


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
        raise ValueError(f"{name}: all {count} pixel values are NaN or infinite; nothing to segment")
    fixed = image.copy()
    fixed[~finite] = np.median(image[finite])
    return fixed, count


def _colour_channels(image: np.ndarray) -> np.ndarray:
    """Any supported layout to shape (H, W, 3) float32 in [0, 1] (alpha dropped, gray repeated)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"expected an image of shape (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    image = _scale_to_unit(image)
    channels = image.shape[-1]
    if channels in (1, 2):  # gray, or gray + alpha
        return np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Convert an image of any supported layout to grayscale.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C) with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA)
        uint8, uint16 (scaled by the dtype's maximum) or float in [0, 1].

    Returns
    -------
    gray : ndarray, shape (H, W), float32 in [0, 1]
        Luminance (ITU-R 709 weights), or the one channel of gray stored as RGB; alpha is ignored.

    Examples
    --------
    >>> to_grayscale(np.full((2, 2, 4), 255, np.uint8)).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    rgb = _colour_channels(np.asarray(image))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])  # gray stored as RGB: keep its values exactly
    return skimage.color.rgb2gray(rgb).astype(np.float32)


def is_dark_on_light(gray: np.ndarray) -> bool:
    """Whether the background is brighter than the nuclei (brightfield, stained histology).

    The background covers most of a DSB image, so the median decides: above the middle of the
    image's own intensity range means a light background.
    """
    low, high = float(gray.min()), float(gray.max())
    if high <= low:
        return False
    return float(np.median(gray)) > (low + high) / 2


def preprocess(image: np.ndarray) -> np.ndarray:
    """Grayscale, stretch to [0, 1], and invert dark-on-light images so nuclei are bright.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), uint8, uint16 or float in [0, 1]
        NaN and infinite values are replaced as ``replace_nonfinite`` says (with a warning); an
        image with no finite value is a ``ValueError``.

    Returns
    -------
    ndarray, shape (H, W), float32 in [0, 1]
        The stretch maps the minimum to 0 and the 99.95th percentile to 1 (a few hot pixels
        do not squash the rest), so dim and bright exposures look alike to the model.

    Examples
    --------
    >>> preprocess(np.array([[0, 100], [200, 200]], np.uint8)).round(2).tolist()  # light background
    [[1.0, 0.5], [0.0, 0.0]]
    """
    image, count = replace_nonfinite(image)
    if count:
        log.warning("%d pixel values are NaN or infinite; replaced by the median of the others", count)
    gray = to_grayscale(image)
    low, high = float(gray.min()), float(np.percentile(gray, 99.95))
    if high <= low:
        return np.zeros_like(gray)
    gray = skimage.exposure.rescale_intensity(gray, in_range=(low, high), out_range=(0.0, 1.0))
    gray = gray.astype(np.float32)
    if is_dark_on_light(gray):
        gray = 1.0 - gray
    return gray


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


# --------------------------------------------------------------------------------------------
# Finding and reading the DSB layout
# --------------------------------------------------------------------------------------------

def find_dataset(explicit: str | os.PathLike | None = None, *, download: bool = False) -> Path:
    """Locate the training set: a DSB-layout folder or zip.

    Order: ``explicit`` (``--data``), ``$DSB_DATA``, ``datasets/stage1_train/``,
    ``datasets/stage1_train.zip``, the team mirror ``../shared/datasets/stage1_train.zip``,
    and, when ``download`` is true, the public BBBC038 zip saved to ``datasets/``.

    Raises
    ------
    FileNotFoundError
        With every place looked at, when none holds the data.
    """
    for given in (explicit, os.environ.get("DSB_DATA") or None):
        if given is not None:
            path = Path(given).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"dataset path does not exist: {path}")
            return path
    candidates = [DATASETS_DIR / "stage1_train", DATASETS_DIR / "stage1_train.zip", TEAM_MIRROR]
    for path in candidates:
        if path.exists():
            return path
    tried = ", ".join(str(path) for path in candidates)
    if not download:
        raise FileNotFoundError(
            f"no DSB2018 training data found (looked at --data, $DSB_DATA, {tried}); "
            f"download {PUBLIC_URL} into {DATASETS_DIR}/ or set DSB_DATA"
        )
    target = DATASETS_DIR / "stage1_train.zip"
    log.info("downloading %s to %s", PUBLIC_URL, target)
    try:
        _download(PUBLIC_URL, target)
    except OSError as error:
        raise FileNotFoundError(
            f"no DSB2018 training data found (looked at $DSB_DATA, {tried}) and the download of "
            f"{PUBLIC_URL} failed: {error}"
        ) from error
    return target


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    partial.replace(target)


# Image and mask files of the DSB layout: the dataset's PNGs, and TIFFs (8, 16 bit or float) as microscopes write them.
LAYOUT_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class _Entry:
    """Where one image and its masks are, as paths relative to the dataset root (or zip members)."""

    image_id: str
    image: str
    masks: tuple[str, ...]


def _is_ignored(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.startswith(".") or base == "Thumbs.db" or "__MACOSX" in PurePosixPath(name).parts


def scan_layout(names: list[str], *, require_masks: bool = True) -> tuple[list[_Entry], dict[str, str]]:
    """Group the file names of a DSB-layout tree into images with their masks.

    Parameters
    ----------
    names : list of str
        Relative POSIX paths such as ``stage1_train/<id>/images/<id>.png`` or ``<id>/masks/<m>.png``
        (any top folder, or none). Files that are not PNG or TIFF, and hidden or system files (``.DS_Store``,
        ``Thumbs.db``, ``__MACOSX/``) are ignored.
    require_masks : bool
        Whether an image without ``masks/`` entries is unusable.

    Returns
    -------
    entries : list of _Entry, sorted by image id
    skipped : dict image_id -> reason, for image folders that cannot be used (no image file, no masks)

    Raises
    ------
    ValueError
        No DSB-layout image at all, or an ``images/`` folder with several images (which one is
        meant cannot be guessed).
    """
    images: dict[str, list[str]] = {}
    masks: dict[str, list[str]] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) < 3 or _is_ignored(name) or not name.lower().endswith(LAYOUT_SUFFIXES):
            continue
        image_id, kind = parts[-3], parts[-2]
        if kind == "images":
            images.setdefault(image_id, []).append(name)
        elif kind == "masks":
            masks.setdefault(image_id, []).append(name)
    if not images and not masks:
        raise ValueError("no DSB-layout images found (expected <ImageId>/images/<ImageId>.png)")
    entries, skipped = [], {}
    for image_id in sorted(set(images) | set(masks)):
        found = images.get(image_id, [])
        if len(found) > 1:
            raise ValueError(f"{image_id}: expected one file in images/, found {len(found)} ({', '.join(sorted(found))})")
        if not found:
            skipped[image_id] = "no image file in images/"
        elif require_masks and not masks.get(image_id):
            skipped[image_id] = "no mask files in masks/"
        else:
            entries.append(_Entry(image_id, found[0], tuple(sorted(masks.get(image_id, [])))))
    return entries, skipped


def _list_source(source: Path) -> list[str]:
    if source.is_dir():
        return [path.relative_to(source).as_posix() for path in sorted(source.rglob("*")) if path.is_file()]
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    if source.suffix.lower() == ".zip":
        raise ValueError(f"{source} is not a readable zip file (truncated or corrupt?)")
    raise ValueError(f"{source} is neither a folder nor a zip file")


class _Reader:
    """Reads files from a folder or a zip; keeps one open zip per thread."""

    _local = threading.local()

    def __init__(self, source: Path):
        self.source = Path(source)
        self.is_zip = self.source.is_file()

    def _archive(self) -> zipfile.ZipFile:
        archives = self._local.__dict__.setdefault("archives", {})
        key = str(self.source.resolve())
        if key not in archives:
            archives[key] = zipfile.ZipFile(self.source)
        return archives[key]

    def where(self, name: str) -> str:
        """A name for messages: ``zip:member`` or the path."""
        return f"{self.source}:{name}" if self.is_zip else str(self.source / name)

    def read_bytes(self, name: str) -> tuple[bytes, str]:
        """The file's bytes and a name for messages (``where``)."""
        where = self.where(name)
        try:
            data = self._archive().read(name) if self.is_zip else (self.source / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            raise ValueError(f"cannot read {where}: {error}") from error
        return data, where

    def read(self, name: str) -> np.ndarray:
        return decode_image(*self.read_bytes(name))

    def read_mask(self, name: str) -> "_MaskPixels":
        """The nonzero pixels of one mask file, without building a full-size array for them.

        A DSB mask is a full-size 8-bit PNG with one small nucleus, so ~30,000 of them are
        dominated by per-pixel work: PIL's ``getbbox`` (C) finds the nucleus and only that
        crop reaches NumPy. Any other layout, or a file PIL cannot read, goes through
        ``decode_image``, which decides and words errors exactly as for images.
        """
        data, where = self.read_bytes(name)
        if data[:8] == _PNG_SIGNATURE:
            try:
                with PIL.Image.open(io.BytesIO(data)) as mask:
                    if mask.mode in ("L", "1", "I;16", "I"):
                        mask.load()
                        return _pixels_of_mask(mask)
            except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
                pass  # decode_image below raises the same error as before, or copes
        return _MaskPixels.from_array(decode_image(data, where))


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode image file bytes; ValueError naming ``where`` with a one-line reason if they are not an image."""
    if not data:
        raise ValueError(f"cannot read {where}: empty file (0 bytes)")
    try:
        # imageio is scikit-image's reader; the suffix picks the right plugin for bytes.
        return np.asarray(imageio.v3.imread(data, extension=PurePosixPath(where).suffix.lower() or None))
    except Exception as error:  # noqa: BLE001 - decoders raise many types; name the file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot read {where}: not a readable image ({reason})") from error


def labels_from_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Stack binary masks into one instance label image.

    Parameters
    ----------
    masks : list of ndarray, shape (H, W), any dtype, nonzero = nucleus
    shape : (H, W)

    Returns
    -------
    labels : ndarray, shape (H, W), int32, 0 = background
        The non-empty masks get labels 1..n in their order; where masks overlap, the later
        one wins (``mask_overlaps`` counts such pixels).

    Examples
    --------
    >>> labels_from_masks([np.eye(2), np.zeros((2, 2)), np.fliplr(np.eye(2))], (2, 2)).tolist()
    [[1, 2], [2, 1]]
    """
    return _stack_masks(masks, shape)[0]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _MaskPixels:
    """One mask as its shape and the (rows, cols) of its nonzero pixels (of channel 0)."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_array(cls, mask: np.ndarray) -> "_MaskPixels":
        if mask.ndim == 3:
            mask = mask[..., 0]
        rows, cols = np.nonzero(mask)
        return cls(tuple(mask.shape), rows, cols)


def _pixels_of_mask(mask) -> _MaskPixels:
    """``_MaskPixels`` of a loaded single-band PIL image."""
    shape = (mask.height, mask.width)
    box = mask.getbbox()
    if box is None:
        empty = np.zeros(0, np.intp)
        return _MaskPixels(shape, empty, empty)
    left, top, right, bottom = box
    rows, cols = np.nonzero(np.asarray(mask.crop(box)))
    return _MaskPixels(shape, rows + top, cols + left)


def _stack_masks(masks, shape) -> tuple[np.ndarray, int, int]:
    """Labels, number of empty masks, number of pixels claimed by more than one mask.

    ``masks`` holds arrays (see ``labels_from_masks``) or ``_MaskPixels``.
    """
    labels = np.zeros(shape, np.int32)
    empty = overlap = 0
    for index, mask in enumerate(masks, start=1):
        if not isinstance(mask, _MaskPixels):
            mask = _MaskPixels.from_array(np.asarray(mask))
        if mask.shape != tuple(shape):
            raise ValueError(f"mask {index} has shape {mask.shape}, image has shape {tuple(shape)}")
        if not len(mask.rows):
            empty += 1
            continue
        where = (mask.rows, mask.cols)
        overlap += int(np.count_nonzero(labels[where]))
        labels[where] = index - empty
    return labels, empty, overlap


def _load_entry(source: Path, entry: _Entry):
    """Decode one image and its masks: (image, labels, stats, notes), or a reason to skip it (str)."""
    reader = _Reader(source)
    try:
        raw, nonfinite = replace_nonfinite(reader.read(entry.image), name=reader.where(entry.image))
        image = preprocess(raw)
        stats = image_stats(raw)
        masks = [reader.read_mask(name) for name in entry.masks]
        labels, empty, overlap = _stack_masks(masks, image.shape)
    except ValueError as error:
        return str(error)
    return image, labels, stats, {"empty_masks": empty, "overlap_pixels": overlap, "nonfinite_pixels": nonfinite}


def _load_entry_star(args):
    return _load_entry(*args)


@dataclass
class LoadReport:
    """What loading a dataset met besides good images; ``warnings()`` words it for the user.

    Attributes
    ----------
    skipped : dict image_id -> reason
        Images left out: no image file, no masks, an unreadable (corrupt, truncated, empty)
        image or mask, or a mask whose size differs from its image.
    empty_masks : dict image_id -> count
        All-zero mask files, ignored.
    overlaps : dict image_id -> pixels
        Pixels claimed by more than one mask; they belong to the later mask (sorted by file name).
    nonfinite : dict image_id -> count
        NaN or infinite pixel values of float images, replaced (``replace_nonfinite``). An image
        with no finite value is skipped.
    """

    skipped: dict = field(default_factory=dict)
    empty_masks: dict = field(default_factory=dict)
    overlaps: dict = field(default_factory=dict)
    nonfinite: dict = field(default_factory=dict)

    def warnings(self) -> list[str]:
        lines = []
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unusable image(s): " + "; ".join(
                f"{image_id}: {reason}" for image_id, reason in sorted(self.skipped.items())[:10])
                + (" ..." if len(self.skipped) > 10 else ""))
        if self.empty_masks:
            lines.append(f"ignored {sum(self.empty_masks.values())} empty mask file(s) in "
                         f"{len(self.empty_masks)} image(s): {', '.join(sorted(self.empty_masks)[:5])}")
        if self.overlaps:
            lines.append(f"{len(self.overlaps)} image(s) have overlapping masks ({sum(self.overlaps.values())} "
                         f"pixels, given to the later mask): {', '.join(sorted(self.overlaps)[:5])}")
        if self.nonfinite:
            lines.append(f"{len(self.nonfinite)} image(s) have NaN or infinite pixels ({sum(self.nonfinite.values())} "
                         f"values, replaced by the median of the others): "
                         + ", ".join(f"{image_id} ({count})" for image_id, count in sorted(self.nonfinite.items())[:5]))
        return lines


def source_fingerprint(source: Path) -> str:
    """A hash that changes when the dataset's files change (zip: size and mtime; folder: every file's)."""
    source = Path(source).resolve()
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{source}".encode())
    if source.is_file():
        stat = source.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_dataset(
    source: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    workers: int | None = None,
    progress: bool = True,
    processes: bool = False,
) -> list[ImageRecord]:
    """Load a DSB-layout training set from a folder or a zip; problems are logged as warnings.

    Parameters
    ----------
    source : path, optional
        Folder or zip; by default found with ``find_dataset()``.
    cache_dir : path or None
        Where decoded arrays are kept between runs, keyed by ``source_fingerprint``; None: no cache.
    workers : int, optional
        Decoding threads; default: the number of CPUs (at most 8). 1 decodes in the calling thread.
    progress : bool
        Show a progress bar while decoding.
    processes : bool
        Decode in ``workers`` processes instead of threads: about twice as fast on two cores
        (PNG decoding holds the GIL). They are started with 'forkserver' (safe after TensorFlow
        has started threads), which re-imports the calling script: it needs an
        ``if __name__ == "__main__":`` guard, as the multiprocessing docs ask.

    Returns
    -------
    list of ImageRecord, sorted by image id. See ``read_dataset`` for what is skipped.
    """
    records, report = read_dataset(source, cache_dir=cache_dir, workers=workers, progress=progress,
                                   processes=processes)
    for line in report.warnings():
        log.warning(line)
    return records


def read_dataset(
    source: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    workers: int | None = None,
    progress: bool = True,
    processes: bool = False,
) -> tuple[list[ImageRecord], LoadReport]:
    """``load_dataset`` that also returns the ``LoadReport``.

    Unusable images (no image, no masks, unreadable files, masks of the wrong size) are skipped
    and reported; empty masks are ignored and overlapping masks counted. A path that does not
    exist, a folder or zip without any DSB-layout image, two images in one ``images/`` folder,
    or nothing usable at all raise ``FileNotFoundError`` / ``ValueError``. ``processes``: see
    ``load_dataset``.
    """
    source = find_dataset(source)
    cache_path = None
    if cache_dir is not None:
        cache_path = cache_file(cache_dir, source)
        if cache_path.exists():
            try:
                records, report = _read_cache(cache_path)
                log.info("loaded %d images from cache %s", len(records), cache_path)
                return records, report
            except (OSError, ValueError, KeyError) as error:
                log.warning("ignoring unreadable cache %s: %s", cache_path, error)
    try:
        entries, skipped = scan_layout(_list_source(source))
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error
    report = LoadReport(skipped=dict(skipped))
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    jobs = [(source, entry) for entry in entries]
    bar = dict(total=len(jobs), desc="decode images", unit="img", disable=not progress)
    if workers <= 1:
        results = [_load_entry(*job) for job in tqdm(jobs, **bar)]
    elif processes:
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(tqdm(pool.map(_load_entry_star, jobs, chunksize=4), **bar))
    else:
        # Threads by default: they need no main-module guard in the caller's script nor pickling
        # of arrays, and overlap zip reads and NumPy; PIL's PNG decoding holds the GIL, though.
        with ThreadPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_load_entry_star, jobs), **bar))
    records = []
    for entry, result in zip(entries, results):
        if isinstance(result, str):
            report.skipped[entry.image_id] = result
            continue
        image, labels, stats, notes = result
        records.append(ImageRecord(entry.image_id, image, labels, stats))
        if notes["empty_masks"]:
            report.empty_masks[entry.image_id] = notes["empty_masks"]
        if notes["overlap_pixels"]:
            report.overlaps[entry.image_id] = notes["overlap_pixels"]
        if notes["nonfinite_pixels"]:
            report.nonfinite[entry.image_id] = notes["nonfinite_pixels"]
    if not records:
        raise ValueError(f"{source}: no usable images ({'; '.join(report.warnings())})")
    if cache_path is not None:
        _write_cache(cache_path, records, report)
        _remove_stale_caches(cache_path)
    return records, report


def cache_file(cache_dir: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Where the decoded arrays of ``source`` are cached: ``dsb-<path key>-<source_fingerprint>.npz``.

    The path key (a hash of the resolved path) names the dataset, the fingerprint its content, so
    a newer cache of the same dataset can replace the older ones.
    """
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"dsb-{key}-{source_fingerprint(source)}.npz"


def _remove_stale_caches(current: Path) -> None:
    """Delete the caches ``current`` replaces: older versions of the same dataset, and files of the
    previous naming (``dsb-<fingerprint>.npz``, which no version reads any more). Each is 0.6 GB for
    the full training set, and a dataset whose files are touched (copied, synced) gets a new one."""
    key = current.name.split("-")[1]
    stale = [path for path in current.parent.glob("dsb-*.npz") if path != current and (
        path.name.startswith(f"dsb-{key}-") or re.fullmatch(r"dsb-[0-9a-f]{20}\.npz", path.name))]
    for path in stale:
        with contextlib.suppress(OSError):  # another process may have removed it already
            path.unlink()
    if stale:
        log.info("removed %d stale cache file(s) from %s", len(stale), current.parent)


def _write_cache(path: Path, records: list[ImageRecord], report: LoadReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = np.array([record.image.shape for record in records], np.int64)
    label_dtype = np.uint16 if max(int(r.labels.max(initial=0)) for r in records) < 2**16 else np.int32
    arrays = dict(
        image_ids=np.array([record.image_id for record in records]),
        shapes=shapes,
        images=np.concatenate([record.image.ravel() for record in records]),
        labels=np.concatenate([record.labels.ravel().astype(label_dtype) for record in records]),
        stats=np.array(json.dumps([record.stats for record in records])),
        report=np.array(json.dumps(dataclasses.asdict(report))),
    )
    # Written under a temporary name and renamed, so a killed run never leaves a half cache.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        np.savez(handle, **arrays)
    os.replace(handle.name, path)


def _read_cache(path: Path) -> tuple[list[ImageRecord], LoadReport]:
    with np.load(path, allow_pickle=False) as data:
        ids, shapes = data["image_ids"], data["shapes"]
        images, labels = data["images"], data["labels"]
        stats = json.loads(str(data["stats"]))
        report = LoadReport(**json.loads(str(data["report"])))
    if len(ids) != len(shapes) or len(stats) != len(ids):
        raise ValueError("inconsistent cache")
    records, offset = [], 0
    for image_id, (height, width), stat in zip(ids, shapes, stats):
        size = int(height * width)
        records.append(ImageRecord(
            str(image_id),
            images[offset:offset + size].reshape(height, width),
            labels[offset:offset + size].reshape(height, width).astype(np.int32),
            stat,
        ))
        offset += size
    if offset != images.size:
        raise ValueError("inconsistent cache")
    return records, report


# --------------------------------------------------------------------------------------------
# Statistics, clusters, split
# --------------------------------------------------------------------------------------------

def image_statistics(records: list[ImageRecord]) -> pd.DataFrame:
    """Per-image statistics (``STAT_COLUMNS``) and nuclei count, indexed by image id."""
    table = pd.DataFrame([record.stats for record in records], columns=list(STAT_COLUMNS))
    table.index = pd.Index([record.image_id for record in records], name="image_id")
    table["nuclei"] = [int(record.labels.max(initial=0)) for record in records]
    return table


def cluster_images(stats: pd.DataFrame, *, n_clusters: int = N_CLUSTERS, seed: int = 0) -> np.ndarray:
    """KMeans on the standardized ``STAT_COLUMNS``.

    Returns
    -------
    clusters : ndarray, shape (n_images,), int, in 0..n_clusters-1
        Renumbered so cluster 0 is the largest, for stable names across runs.
    """
    if len(stats) < n_clusters:
        raise ValueError(f"cannot make {n_clusters} clusters from {len(stats)} images")
    features = StandardScaler().fit_transform(stats[list(STAT_COLUMNS)].to_numpy(np.float64))
    raw = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(features)
    counts = np.bincount(raw, minlength=n_clusters)
    order = sorted(range(n_clusters), key=lambda c: (-counts[c], c))
    renumber = np.empty(n_clusters, int)
    renumber[order] = np.arange(n_clusters)
    return renumber[raw]


def stratified_split(
    image_ids, clusters, *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> pd.DataFrame:
    """Split images into train / CV / test with each cluster in the same proportions.

    Each cluster is shuffled (seeded) and cut by ``fractions``, rounding to whole images; a
    cluster of three or more images gets at least one CV and one test image. (scikit-learn's
    stratified splitters refuse clusters of one image and do not guarantee that minimum.)

    Returns
    -------
    DataFrame with columns image_id, cluster, subset ('train', 'cv' or 'test'), sorted by image_id.
    """
    image_ids, clusters = np.asarray(image_ids), np.asarray(clusters)
    if len(image_ids) != len(clusters):
        raise ValueError(f"{len(image_ids)} image ids but {len(clusters)} cluster labels")
    if len(set(image_ids.tolist())) != len(image_ids):
        raise ValueError("image ids are not unique")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    subset = np.empty(len(image_ids), object)
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        members = members[np.argsort(image_ids[members])]  # input order must not matter
        rng.shuffle(members)
        n = len(members)
        n_cv, n_test = (int(round(n * f)) for f in fractions[1:])
        if n >= 3:
            n_cv, n_test = max(n_cv, int(fractions[1] > 0)), max(n_test, int(fractions[2] > 0))
        n_test = min(n_test, n)
        n_cv = min(n_cv, n - n_test)
        subset[members[:n_test]] = "test"
        subset[members[n_test:n_test + n_cv]] = "cv"
        subset[members[n_test + n_cv:]] = "train"
    table = pd.DataFrame({"image_id": image_ids, "cluster": clusters.astype(int), "subset": subset})
    return table.sort_values("image_id").reset_index(drop=True)


class DatasetChangedError(ValueError):
    """The saved split does not list the same images as the dataset."""


def load_or_make_split(
    stats: pd.DataFrame,
    path: str | os.PathLike = DEFAULT_SPLIT_PATH,
    *,
    seed: int = 0,
    n_clusters: int = N_CLUSTERS,
) -> pd.DataFrame:
    """Reuse the split saved at ``path``, or cluster, split and save it there.

    A saved split that lists other images than ``stats`` raises ``DatasetChangedError``
    instead of silently re-splitting, which could move test images into training.
    """
    path = Path(path)
    ids = set(stats.index)
    if path.exists():
        split = pd.read_csv(path, dtype={"image_id": str})
        if list(split.columns[:3]) != ["image_id", "cluster", "subset"]:
            raise ValueError(f"{path}: not a split file (columns {list(split.columns)})")
        saved = set(split["image_id"])
        if saved != ids:
            added, removed = sorted(ids - saved), sorted(saved - ids)
            raise DatasetChangedError(
                f"the dataset no longer matches the split saved in {path}: {len(added)} images "
                f"added (e.g. {added[:3]}), {len(removed)} removed (e.g. {removed[:3]}). Re-splitting "
                f"could move test images into training; to start a new split, pass another split "
                f"path or delete {path}."
            )
        return split.sort_values("image_id").reset_index(drop=True)
    clusters = cluster_images(stats, n_clusters=n_clusters, seed=seed)
    split = stratified_split(stats.index.to_numpy(), clusters, seed=seed)
    save_csv(split, path)
    log.info("saved a new split of %d images to %s", len(split), path)
    return split


def save_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV under a temporary name and rename it, so no reader sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(temporary, index=False)
    os.replace(temporary, path)


def fit_cluster_model(stats: pd.DataFrame, split: pd.DataFrame) -> dict:
    """The clusters of ``split`` as a nearest-centroid model, to place images outside the dataset.

    KMeans centres are the means of their members, so the centroids of the split's clusters in
    the standardized ``STAT_COLUMNS`` reproduce the clustering. JSON-serializable.
    """
    features = stats.loc[split["image_id"], list(STAT_COLUMNS)].to_numpy(np.float64)
    scaler = StandardScaler().fit(features)
    scaled = scaler.transform(features)
    clusters = split["cluster"].to_numpy()
    centres = [scaled[clusters == c].mean(axis=0).tolist() for c in sorted(set(clusters.tolist()))]
    return {"columns": list(STAT_COLUMNS), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "clusters": sorted(set(int(c) for c in clusters)), "centres": centres}


def assign_clusters(stats: pd.DataFrame, model: dict) -> np.ndarray:
    """Nearest centroid of ``fit_cluster_model``'s model for each row of ``stats``: ndarray (n,), int."""
    features = stats[model["columns"]].to_numpy(np.float64)
    scaled = (features - np.asarray(model["mean"])) / np.asarray(model["scale"])
    distances = ((scaled[:, None, :] - np.asarray(model["centres"])[None]) ** 2).sum(axis=-1)
    return np.asarray(model["clusters"])[distances.argmin(axis=1)]


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def find_images(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """Images to segment in a folder: the DSB layout (``<id>/images/<id>.png``) or plain image files.

    Plain files are PNG, TIFF or JPEG directly in ``folder``; hidden files are skipped.

    Returns
    -------
    list of (image_id, path), sorted by image id; the id is the file name without its suffix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"not a folder: {folder}")
    nested = [p.relative_to(folder).as_posix() for p in folder.glob("*/images/*") if p.is_file()]
    if nested:
        entries, skipped = scan_layout(nested, require_masks=False)
        for image_id, reason in skipped.items():
            log.warning("skipping %s: %s", image_id, reason)
        return [(entry.image_id, folder / entry.image) for entry in entries]
    found = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not _is_ignored(p.name)]
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems = [p.stem for p in found]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"several files share the name {duplicates[0]!r} in {folder}; rename one")
    return [(p.stem, p) for p in found]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file (PNG, TIFF, JPEG) as stored; ValueError naming the file if it cannot."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    return decode_image(data, str(path))


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------

def tile_starts(length: int, tile_size: int = TILE_SIZE, min_overlap: int = 32) -> np.ndarray:
    """Start offsets of evenly spaced tiles covering ``length`` pixels, the last flush with the end.

    ``length`` below ``tile_size`` gets one tile (the image is padded up to a tile). Neighbouring
    tiles overlap by at least ``min_overlap`` pixels.

    Examples
    --------
    >>> tile_starts(696, 256, 32).tolist()  # 3 tiles: overlaps of 36 and 36 pixels
    [0, 220, 440]
    >>> tile_starts(100, 256, 32).tolist()
    [0]
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= min_overlap < tile_size:
        raise ValueError(f"min_overlap must be in [0, tile_size), got {min_overlap}")
    if length <= tile_size:
        return np.zeros(1, int)
    stride = tile_size - min_overlap
    count = int(np.ceil((length - tile_size) / stride)) + 1
    return np.round(np.linspace(0, length - tile_size, count)).astype(int)


def pad_to_tile(image: np.ndarray, tile_size: int = TILE_SIZE) -> np.ndarray:
    """Reflect-pad the bottom and right so both sides are at least ``tile_size``."""
    pad_rows = max(tile_size - image.shape[0], 0)
    pad_cols = max(tile_size - image.shape[1], 0)
    if not pad_rows and not pad_cols:
        return image
    widths = [(0, pad_rows), (0, pad_cols)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="reflect" if min(image.shape[:2]) > 1 else "edge")


def tile_grid(shape: tuple[int, ...], tile_size: int = TILE_SIZE, min_overlap: int = 32) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the tiles for an image of ``shape`` (after ``pad_to_tile``)."""
    rows = tile_starts(max(shape[0], tile_size), tile_size, min_overlap)
    cols = tile_starts(max(shape[1], tile_size), tile_size, min_overlap)
    return [(int(r), int(c)) for r in rows for c in cols]


def make_tiles(image: np.ndarray, tile_size: int = TILE_SIZE, min_overlap: int = 32):
    """Cut an image into overlapping tiles.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), any dtype
    tile_size, min_overlap : int

    Returns
    -------
    tiles : ndarray, shape (N, tile_size, tile_size[, C]), the image's dtype
    corners : list of (row, col)
        Pass both, with the image's shape, to ``stitch_tiles``.

    Examples
    --------
    >>> tiles, corners = make_tiles(np.zeros((300, 100)), 256, 32)
    >>> tiles.shape, corners
    ((2, 256, 256), [(0, 0), (44, 0)])
    """
    padded = pad_to_tile(np.asarray(image), tile_size)
    corners = tile_grid(image.shape, tile_size, min_overlap)
    tiles = np.stack([padded[r:r + tile_size, c:c + tile_size] for r, c in corners])
    return tiles, corners


def tile_weights(tile_size: int = TILE_SIZE, ramp: int | None = None) -> np.ndarray:
    """Blending weights for one tile: 1 in the middle, tapering linearly over ``ramp`` pixels
    towards each border, and never zero (the outermost pixel weighs ``1 / ramp``).

    Returns
    -------
    ndarray, shape (tile_size, tile_size), float32 in (0, 1]
    """
    ramp = max(tile_size // 8, 1) if ramp is None else ramp
    if ramp < 1:
        raise ValueError(f"ramp must be at least 1, got {ramp}")
    distance = np.minimum(np.arange(tile_size), np.arange(tile_size)[::-1]) + 1
    profile = np.minimum(distance / ramp, 1.0)
    return np.outer(profile, profile).astype(np.float32)


def stitch_tiles(
    tiles: np.ndarray, corners, shape: tuple[int, int], tile_size: int = TILE_SIZE, *, ramp: int | None = None
) -> np.ndarray:
    """Blend tile predictions back into one image, the inverse of ``make_tiles``.

    Parameters
    ----------
    tiles : ndarray, shape (N, tile_size, tile_size[, C]), float
    corners : list of (row, col), from ``make_tiles``
    shape : (H, W), the original image's size

    Returns
    -------
    ndarray, shape (H, W[, C]), float32
        ``sum(tile * w) / sum(w)`` with ``tile_weights`` as ``w``; where tiles agree the
        result equals them.
    """
    tiles = np.asarray(tiles)
    if len(tiles) != len(corners):
        raise ValueError(f"{len(tiles)} tiles but {len(corners)} corners")
    if tiles.shape[1:3] != (tile_size, tile_size):
        raise ValueError(f"tiles have shape {tiles.shape}, expected (N, {tile_size}, {tile_size}, ...)")
    height, width = max(shape[0], tile_size), max(shape[1], tile_size)
    extra = tiles.shape[3:]
    weights = tile_weights(tile_size, ramp).astype(np.float64).reshape((tile_size, tile_size) + (1,) * len(extra))
    total = np.zeros((height, width) + extra, np.float64)
    weight_sum = np.zeros((height, width) + (1,) * len(extra), np.float64)
    for tile, (row, col) in zip(tiles, corners):
        total[row:row + tile_size, col:col + tile_size] += tile * weights
        weight_sum[row:row + tile_size, col:col + tile_size] += weights
    return (total / weight_sum)[: shape[0], : shape[1]].astype(np.float32)


def contact_map(labels: np.ndarray, radius: int = CONTACT_RADIUS) -> np.ndarray:
    """Where two nuclei touch: pixels within ``radius`` (chessboard distance) of two different nuclei.

    The second training target of a contact-aware U-Net: removing these pixels from the foreground
    leaves one seed per nucleus, even where nuclei touch (see ``segment.probability_to_labels``).

    Parameters
    ----------
    labels : ndarray, shape (H, W), int, 0 = background
    radius : int

    Returns
    -------
    ndarray, shape (H, W), bool: nucleus pixels and gap pixels between nuclei that are that close

    Examples
    --------
    >>> contact_map(np.array([[1, 1, 2, 2, 0, 0, 3]]), radius=1).astype(int).tolist()
    [[0, 1, 1, 0, 0, 0, 0]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected labels of shape (H, W), got shape {labels.shape}")
    if radius < 1:
        raise ValueError(f"radius must be at least 1, got {radius}")
    size = 2 * radius + 1
    largest = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    background = int(labels.max(initial=0)) + 1  # stands for "no nucleus" in the minimum
    smallest = ndi.minimum_filter(np.where(labels > 0, labels, background), size=size,
                                  mode="constant", cval=background)
    return (smallest != background) & (largest > smallest)


def training_targets(record: ImageRecord, contacts: bool = False) -> np.ndarray:
    """The training target of one image, shape (H, W), uint8: bit 0 = nucleus, bit 1 = contact."""
    target = record.mask.astype(np.uint8)
    if contacts:
        target |= contact_map(record.labels).astype(np.uint8) << 1
    return target


def tiles_for_records(
    records: list[ImageRecord], tile_size: int = TILE_SIZE, min_overlap: int = 32, *, contacts: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training tiles of many images, stored compactly.

    Returns
    -------
    images : ndarray, shape (N, tile_size, tile_size), float16 in [0, 1]
    masks : ndarray, shape (N, tile_size, tile_size), uint8: 0 or 1 (nucleus); with ``contacts``,
        plus 2 where nuclei touch (``training_targets``)
    owner : ndarray, shape (N,), int, index into ``records`` of each tile's image

    Records that were not loaded by ``load_dataset`` may hold NaN or infinite pixels: those are
    replaced as ``replace_nonfinite`` says, with a warning, and a record with no finite pixel is
    left out, with a warning that names it.
    """
    images, masks, owner = [], [], []
    for index, record in enumerate(records):
        try:
            image, count = replace_nonfinite(record.image, name=record.image_id)
        except ValueError as error:
            log.warning("left out of training: %s", error)
            continue
        if count:
            log.warning("%s: %d pixel values are NaN or infinite; replaced by the median of the others",
                        record.image_id, count)
        image_tiles, _ = make_tiles(image.astype(np.float16), tile_size, min_overlap)
        mask_tiles, _ = make_tiles(training_targets(record, contacts), tile_size, min_overlap)
        images.append(image_tiles)
        masks.append(mask_tiles)
        owner.extend([index] * len(image_tiles))
    if not images:
        empty = np.zeros((0, tile_size, tile_size))
        return empty.astype(np.float16), empty.astype(np.uint8), np.zeros(0, int)
    return np.concatenate(images), np.concatenate(masks), np.asarray(owner)


def main(argv: list[str] | None = None) -> int:
    """``python dsb.py [PATH]``: find (or download) the training set and print where it is."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = find_dataset(argv[0] if argv else None, download=True)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

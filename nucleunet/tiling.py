"""Overlapping tiles of an image, their blending back into one, and the training targets cut with them.

NumPy and SciPy only. The model sees fixed-size tiles; ``make_tiles`` cuts an image of any size into
tiles that overlap by at least ``MIN_OVERLAP`` pixels, the last flush with the border, and
``stitch_tiles`` blends per-tile results back with weights that taper towards tile borders.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.ndimage as ndi

from nucleunet.imaging import replace_nonfinite

log = logging.getLogger("tiling")

TILE_SIZE = 256
MIN_OVERLAP = 32  # pixels shared by neighbouring tiles, in training and in prediction
CONTACT_RADIUS = 2  # pixels: the width of the contact target on each side of where nuclei touch


def tile_starts(length: int, tile_size: int = TILE_SIZE, min_overlap: int = MIN_OVERLAP) -> np.ndarray:
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


def _pair(tile_size) -> tuple[int, int]:
    """(rows, cols) of a tile size given as one side or as a pair."""
    rows, cols = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
    return int(rows), int(cols)


def pad_to_tile(image: np.ndarray, tile_size=TILE_SIZE) -> np.ndarray:
    """Reflect-pad the bottom and right so the image is at least a tile high and wide."""
    tile_rows, tile_cols = _pair(tile_size)
    pad_rows = max(tile_rows - image.shape[0], 0)
    pad_cols = max(tile_cols - image.shape[1], 0)
    if not pad_rows and not pad_cols:
        return image
    widths = [(0, pad_rows), (0, pad_cols)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="reflect" if min(image.shape[:2]) > 1 else "edge")


def tile_grid(shape: tuple[int, ...], tile_size=TILE_SIZE, min_overlap: int = MIN_OVERLAP) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the tiles for an image of ``shape`` (after ``pad_to_tile``).

    ``tile_size`` is one side (square tiles) or (rows, cols).
    """
    tile_rows, tile_cols = _pair(tile_size)
    rows = tile_starts(max(shape[0], tile_rows), tile_rows, min_overlap)
    cols = tile_starts(max(shape[1], tile_cols), tile_cols, min_overlap)
    return [(int(r), int(c)) for r in rows for c in cols]


def make_tiles(image: np.ndarray, tile_size=TILE_SIZE, min_overlap: int = MIN_OVERLAP):
    """Cut an image into overlapping tiles.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), any dtype
    tile_size : int, or (rows, cols) for rectangular tiles
    min_overlap : int

    Returns
    -------
    tiles : ndarray, shape (N, tile rows, tile cols[, C]), the image's dtype
    corners : list of (row, col)
        Pass both, with the image's shape, to ``stitch_tiles``.

    Examples
    --------
    >>> tiles, corners = make_tiles(np.zeros((300, 100)), 256, 32)
    >>> tiles.shape, corners
    ((2, 256, 256), [(0, 0), (44, 0)])
    """
    tile_rows, tile_cols = _pair(tile_size)
    padded = pad_to_tile(np.asarray(image), tile_size)
    corners = tile_grid(image.shape, tile_size, min_overlap)
    tiles = np.stack([padded[r:r + tile_rows, c:c + tile_cols] for r, c in corners])
    return tiles, corners


def tile_weights(tile_size=TILE_SIZE, ramp: int | None = None) -> np.ndarray:
    """Blending weights for one tile: 1 in the middle, tapering linearly over ``ramp`` pixels
    (default: an eighth of the shorter side) towards each border, and never zero (the outermost pixel
    weighs ``1 / ramp``).

    Returns
    -------
    ndarray, shape (tile rows, tile cols), float32 in (0, 1]
    """
    tile_rows, tile_cols = _pair(tile_size)
    ramp = max(min(tile_rows, tile_cols) // 8, 1) if ramp is None else ramp
    if ramp < 1:
        raise ValueError(f"ramp must be at least 1, got {ramp}")

    def profile(length):
        distance = np.minimum(np.arange(length), np.arange(length)[::-1]) + 1
        return np.minimum(distance / ramp, 1.0)

    return np.outer(profile(tile_rows), profile(tile_cols)).astype(np.float32)


def stitch_tiles(tiles: np.ndarray, corners, shape: tuple[int, int], tile_size=TILE_SIZE, *,
                 ramp: int | None = None) -> np.ndarray:
    """Blend tile predictions back into one image, the inverse of ``make_tiles``.

    Parameters
    ----------
    tiles : ndarray, shape (N, tile rows, tile cols[, C]), float
    corners : list of (row, col), from ``make_tiles``
    shape : (H, W), the original image's size

    Returns
    -------
    ndarray, shape (H, W[, C]), float32
        ``sum(tile * w) / sum(w)`` with ``tile_weights`` as ``w``; where tiles agree the
        result equals them.
    """
    tiles = np.asarray(tiles)
    tile_rows, tile_cols = _pair(tile_size)
    if len(tiles) != len(corners):
        raise ValueError(f"{len(tiles)} tiles but {len(corners)} corners")
    if tiles.shape[1:3] != (tile_rows, tile_cols):
        raise ValueError(f"tiles have shape {tiles.shape}, expected (N, {tile_rows}, {tile_cols}, ...)")
    if len(corners) == 1:  # one tile covers the image: nothing to blend (the weights cancel exactly)
        return tiles[0, : shape[0], : shape[1]].astype(np.float32)
    height, width = max(shape[0], tile_rows), max(shape[1], tile_cols)
    extra = tiles.shape[3:]
    # float32 throughout, in place: float64 sums of a large image took 4-17x the time (measured once on a 4096 x 4096
    # image of 361 tiles, 2 channels), for differences of about 1e-7
    flat = tile_weights(tile_size, ramp)
    weights = flat.reshape((tile_rows, tile_cols) + (1,) * len(extra))
    total = np.zeros((height, width) + extra, np.float32)
    weight_sum = np.zeros((height, width), np.float32)
    weighted = np.empty((tile_rows, tile_cols) + extra, np.float32)
    for tile, (row, col) in zip(tiles, corners):
        np.multiply(tile, weights, out=weighted, casting="unsafe")
        total[row:row + tile_rows, col:col + tile_cols] += weighted
        weight_sum[row:row + tile_rows, col:col + tile_cols] += flat
    total /= weight_sum.reshape(weight_sum.shape + (1,) * len(extra))
    return np.ascontiguousarray(total[: shape[0], : shape[1]])


def inference_tile_size(shape: tuple[int, int], max_side: int, min_overlap: int = MIN_OVERLAP,
                        multiple: int = 32) -> tuple[int, int]:
    """The (rows, cols) of the fewest, least overlapping tiles of at most ``max_side`` that cover ``shape``.

    Each side is the smallest multiple of ``multiple`` (what the U-Net's poolings need) with which
    ``ceil((length - min_overlap) / (max_side - min_overlap))`` tiles cover the image: one tile of about
    the image's own size when it fits.

    Examples
    --------
    >>> inference_tile_size((256, 320), 1024)
    (256, 320)
    >>> inference_tile_size((2000, 2000), 1024)  # 2 x 2 tiles
    (1024, 1024)
    >>> inference_tile_size((1040, 1388), 1024)
    (544, 736)
    """
    sides = []
    for length in shape:
        count = max(int(np.ceil((length - min_overlap) / (max_side - min_overlap))), 1)
        side = max(int(np.ceil((length + (count - 1) * min_overlap) / count)), min_overlap + 1)
        sides.append(min(int(np.ceil(side / multiple)) * multiple, max(max_side, multiple)))
    return sides[0], sides[1]


def contact_map(labels: np.ndarray, radius: int = CONTACT_RADIUS) -> np.ndarray:
    """Where two nuclei touch: pixels within ``radius`` (chessboard distance) of two different nuclei.

    The second training target of a contact-aware U-Net: removing these pixels from the foreground
    leaves one seed per nucleus, even where nuclei touch (see ``postprocessing.probability_to_labels``).

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


def training_target(labels: np.ndarray, contacts: bool = False, radius: int = CONTACT_RADIUS) -> np.ndarray:
    """The training target of one image: bit 0 = nucleus, bit 1 = where nuclei touch (with ``contacts``).

    Parameters
    ----------
    labels : ndarray, shape (H, W), int, 0 = background
    contacts : bool
    radius : int
        Of the contact band (``contact_map``).

    Returns
    -------
    ndarray, shape (H, W), uint8 in {0, 1, 2, 3}

    Examples
    --------
    >>> training_target(np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0]]), contacts=True).tolist()
    [[1, 1, 3, 3, 3, 3, 1, 1, 0, 0]]
    """
    target = (np.asarray(labels) > 0).astype(np.uint8)
    if contacts:
        target |= contact_map(labels, radius).astype(np.uint8) << 1
    return target


def finite_image(record) -> np.ndarray | None:
    """A record's image for training: NaN and infinite pixels replaced as ``imaging.replace_nonfinite`` says,
    with a warning that counts them; None, with a warning that names the image, when no pixel is finite."""
    try:
        image, count = replace_nonfinite(record.image, name=record.image_id)
    except ValueError as error:
        log.warning("left out of training: %s", error)
        return None
    if count:
        log.warning("%s: %d pixel values are NaN or infinite; replaced by the median of the others",
                    record.image_id, count)
    return image


def tiles_for_records(
    records: list, tile_size: int = TILE_SIZE, min_overlap: int = MIN_OVERLAP, *, contacts: bool = False,
    contact_radius: int = CONTACT_RADIUS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training tiles of many ``dsb.ImageRecord`` s, stored compactly.

    Returns
    -------
    images : ndarray, shape (N, tile_size, tile_size), float16 in [0, 1]
    masks : ndarray, shape (N, tile_size, tile_size), uint8: 0 or 1 (nucleus); with ``contacts``,
        plus 2 where nuclei touch (``training_target``, a band of ``contact_radius``)
    owner : ndarray, shape (N,), int, index into ``records`` of each tile's image

    Records that were not loaded by ``dsb.load_dataset`` may hold NaN or infinite pixels: those are
    replaced as ``imaging.replace_nonfinite`` says, with a warning, and a record with no finite pixel is
    left out, with a warning that names it.
    """
    images, masks, owner = [], [], []
    for index, record in enumerate(records):
        image = finite_image(record)
        if image is None:
            continue
        image_tiles, _ = make_tiles(image.astype(np.float16), tile_size, min_overlap)
        mask_tiles, _ = make_tiles(training_target(record.labels, contacts, contact_radius), tile_size,
                                   min_overlap)
        images.append(image_tiles)
        masks.append(mask_tiles)
        owner.extend([index] * len(image_tiles))
    if not images:
        empty = np.zeros((0, tile_size, tile_size))
        return empty.astype(np.float16), empty.astype(np.uint8), np.zeros(0, int)
    return np.concatenate(images), np.concatenate(masks), np.asarray(owner)

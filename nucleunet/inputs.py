"""The images a user asks to segment: files, folders, zips and globs; channels and z-stacks.

    items, skipped = list_inputs(["my_images/", "plate.zip", "scans/*.tif"], recursive=True)
    for item in items:
        raw, axes, calibration = read_input(item)
        for suffix, plane in planes(raw, axes, channel=None, stack="planes", name=item.where):
            ...  # plane: (H, W) or (H, W, 3|4), as stored; item.key + suffix names the outputs

Every image gets a key, its path relative to the folder, zip or glob it was found in, without its
suffix: outputs keep the inputs' relative paths, so ``a/b/img.tif`` gives ``labels/a/b/img.tif``. A key never
leaves the run folder: zip members with absolute paths, drive letters or ``..`` parts are skipped with the reason.
Reading is bounded: a file of more than ``MAX_PIXELS`` pixels (known from its header, before any pixel is decoded)
and a zip member that would decompress to too much (``member_problem``) are refused with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import PIL.Image
import tifffile

from nucleunet import layouts
from nucleunet.calibration import UNKNOWN, Calibration, from_tiff
from nucleunet.errors import MissingPathError, UserError
from nucleunet.imaging import IMAGE_SUFFIXES, decode_image

log = logging.getLogger("nucleunet.inputs")

STACK_MODES = ("planes", "max")

# The most pixels one input file may hold (all its planes, channels not counted); --max-pixels changes it.
MAX_PIXELS = 10**9
# A zip member is refused above this uncompressed size, or above LARGE_MEMBER_BYTES and MAX_COMPRESSION_RATIO times
# its compressed size (a zip bomb: image files compress far less).
MAX_MEMBER_BYTES = 4 * 2**30
LARGE_MEMBER_BYTES = 100 * 2**20
MAX_COMPRESSION_RATIO = 200
# A trailing axis this short, unnamed in a TIFF, on planes at least this large, holds channels ('YXC'), not columns.
CHANNEL_AXIS_LENGTHS = (2, 3, 4)
MIN_PLANE_SIDE = 16


@dataclass(frozen=True)
class InputImage:
    """One image to segment.

    Attributes
    ----------
    key : str
        Names its outputs: the path relative to the folder, zip or glob it came from, without the
        suffix (POSIX separators; never absolute, never with a ``..`` part).
    path : Path
        The file, or the zip that holds it.
    member : str or None
        The zip member, for an image inside a zip.
    """

    key: str
    path: Path
    member: str | None = None

    @property
    def where(self) -> str:
        """For messages: the path, or ``zip:member``."""
        return f"{self.path}:{self.member}" if self.member else str(self.path)


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and not layouts.is_ignored(name)


def _key(relative: str) -> str:
    return str(PurePosixPath(relative).with_suffix(""))


def unsafe_name(name: str) -> str | None:
    """Why a path inside a zip (a member's name) must not name outputs, or None if it is safe: an absolute path,
    a drive letter, or a ``..`` part would lead out of the run folder. Backslashes count as separators.

    Examples
    --------
    >>> [unsafe_name(name) for name in ("a/b.png", "/tmp/abs.png", "C:/x.png")]
    [None, 'an absolute path', 'an absolute path with a drive letter']
    >>> unsafe_name("../../escape.png")
    "a '..' part, which leads out of its folder"
    >>> unsafe_name(r"a\\..\\b.png") == unsafe_name("a/../b.png")
    True
    """
    name = name.replace("\\", "/")
    if name.startswith("/"):
        return "an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "an absolute path with a drive letter"
    if ".." in PurePosixPath(name).parts:
        return "a '..' part, which leads out of its folder"
    return None


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is not read because of what it would decompress to, or None."""
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > MAX_MEMBER_BYTES:
        return f"it decompresses to {size:,} bytes, over the limit of {MAX_MEMBER_BYTES:,}"
    if size > LARGE_MEMBER_BYTES and size > MAX_COMPRESSION_RATIO * packed:
        return (f"it decompresses to {size:,} bytes from {packed:,} ({size // packed}x, over "
                f"{MAX_COMPRESSION_RATIO}x): a zip bomb, not an image")
    return None


def _from_names(names: list[str], make) -> list[InputImage]:
    """Images among the relative ``names`` of a folder or zip: the DSB layout if there is one, else every image file."""
    layout = [name for name in names if _is_image_name(name)
              and len(PurePosixPath(name).parts) >= 3 and PurePosixPath(name).parts[-2] == "images"]
    if layout:
        entries, skipped = layouts.scan_layout(layout, require_masks=False)
        for image_id, reason in skipped.items():
            log.warning("skipping %s: %s", image_id, reason)
        return [make(entry.image_id, entry.image) for entry in entries]
    return [make(_key(name), name) for name in sorted(names) if _is_image_name(name)]


def _folder(folder: Path, recursive: bool) -> list[InputImage]:
    if recursive:
        names = [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*")) if path.is_file()]
    else:
        names = [path.name for path in sorted(folder.iterdir()) if path.is_file()]
        nested = [path.relative_to(folder).as_posix() for path in folder.glob("*/images/*") if path.is_file()]
        names += nested
        subfolders = [path.name for path in folder.iterdir() if path.is_dir() and not layouts.is_ignored(path.name)]
        if subfolders and not nested:
            log.warning("%s: %d subfolder(s) not searched (%s); pass --recursive to segment their images too",
                        folder, len(subfolders), ", ".join(sorted(subfolders)[:3]))
    found = _from_names(names, lambda key, name: InputImage(key, folder / name))
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}"
                        + ("" if recursive else " (its subfolders were not searched: pass --recursive)"))
    return found


def _zip(archive: Path, skipped: dict) -> list[InputImage]:
    """The images in a zip; a member whose name is unsafe or that would decompress to too much is left out and
    named in ``skipped`` (``archive:member`` -> why)."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [info for info in opened.infolist() if not info.is_dir() and _is_image_name(info.filename)]
    except zipfile.BadZipFile as error:
        raise UserError(f"{archive} is not a readable zip file: {error}") from error
    by_name = {}  # with forward slashes -> as stored
    for info in members:
        if problem := unsafe_name(info.filename) or member_problem(info):
            skipped[f"{archive}:{info.filename}"] = f"not read: {problem}"
        else:
            by_name[info.filename.replace("\\", "/")] = info.filename
    found = _from_names(list(by_name), lambda key, name: InputImage(key, archive, by_name[name]))
    if not found and not members:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {archive}")
    return found


def _glob(pattern: str) -> list[InputImage]:
    paths = [Path(path) for path in sorted(glob.glob(pattern, recursive=True)) if Path(path).is_file()]
    paths = [path for path in paths if _is_image_name(path.name)]
    if not paths:
        raise MissingPathError(f"no image files match {pattern}")
    root = Path(os.path.commonpath([path.parent for path in paths])) if len(paths) > 1 else paths[0].parent
    return [InputImage(_key(path.relative_to(root).as_posix()), path) for path in paths]


def list_inputs(inputs: list, *, recursive: bool = False) -> tuple[list[InputImage], dict[str, str]]:
    """Every image to segment, in the order given (folders, zips and globs sorted by name), and the files left out.

    Parameters
    ----------
    inputs : list of path or str
        Image files (PNG, TIFF, JPEG), folders of them (plain files, or the DSB layout
        ``<id>/images/<id>.png``), zips of either, or glob patterns (``scans/**/*.tif``).
    recursive : bool
        Also the images in subfolders of a folder (a DSB-layout folder is always read whole).

    Returns
    -------
    images : list of InputImage
    skipped : dict, where -> why: zip members that are unsafe or too large, and an image whose key another image
        has already (keys compare without regard to case, as on the file systems of Windows and macOS)

    Raises
    ------
    UserError
        An input that does not exist or holds no image.
    """
    found: list[InputImage] = []
    skipped: dict[str, str] = {}
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found += _folder(path, recursive)
        elif path.is_file() and path.suffix.lower() == ".zip":
            found += _zip(path, skipped)
        elif path.is_file():
            found.append(InputImage(path.stem, path))
        elif glob.has_magic(str(given)):
            found += _glob(str(given))
        else:
            raise MissingPathError(f"input not found: {given}")
    images, keys = [], KeyRegister()
    for item in found:
        if other := keys.claim(item.key, item.where):
            skipped[item.where] = (f"its outputs would be named {item.key!r}, as those of {other} (names compare "
                                   f"without regard to case); rename one")
        else:
            images.append(item)
    return images, skipped


class KeyRegister:
    """The output names taken so far in a run, compared without regard to case."""

    def __init__(self):
        self.taken: dict[str, str] = {}

    def claim(self, key: str, where: str) -> str | None:
        """Take ``key`` for the image at ``where``; if an image took it already, leave it and return that one."""
        other = self.taken.get(key.casefold())
        if other is None:
            self.taken[key.casefold()] = where
        return other


@contextlib.contextmanager
def _pil_limit(pixels: int):
    """PIL's own decompression-bomb limit set to ``pixels`` for the block (the header was checked already)."""
    before = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = before


def _check_pixels(shape: tuple[int, ...], axes: str, where: str, max_pixels: int) -> None:
    pixels = int(np.prod([side for side, axis in zip(shape, axes) if axis not in "CS"], dtype=np.float64))
    if pixels > max_pixels:
        raise UserError(f"cannot read {where}: {pixels:,} pixels (shape {tuple(shape)}), over the limit of "
                        f"{max_pixels:,} (--max-pixels)")


def _read_bytes(item: InputImage) -> bytes:
    """The file's bytes; of a zip member, never more than its header declares."""
    if item.member is None:
        return item.path.read_bytes()
    with zipfile.ZipFile(item.path) as archive:
        info = archive.getinfo(item.member)
        if problem := member_problem(info):
            raise UserError(f"not read: {problem}")
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise UserError("not read: it decompresses to more than its zip header says")
    return data


class Read(NamedTuple):
    """What ``read_input`` returns: the image as stored, the names of its axes, and its pixel size."""

    raw: np.ndarray
    axes: str
    calibration: Calibration


def read_input(item: InputImage, *, max_pixels: int = MAX_PIXELS) -> Read:
    """The image as stored, the names of its axes, and the pixel size its file states (``calibration.from_tiff``).

    TIFFs are read with tifffile, which knows their axes (``'YX'``, ``'YXS'`` for RGB, ``'CYX'`` for
    channel planes, ``'ZYX'`` for a z-stack, ...); other files get ``'YX'`` or ``'YXS'``. A TIFF whose planes tifffile
    cannot name but whose last axis is 2-4 long on large planes (``np.zeros((512, 512, 2))`` saved as is) is read
    as channels (``'YXC'``), with a warning. The pixel count is checked from the file's header, before decoding.

    Returns
    -------
    Read: raw, ndarray, any dtype; axes, str, one letter per axis of ``raw``; calibration, ``Calibration``

    Raises
    ------
    UserError
        A file that cannot be read, is not an image, or holds more than ``max_pixels`` pixels.
    """
    try:
        data = _read_bytes(item)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read {item.where}: {error}") from error
    except UserError as error:
        raise UserError(f"cannot read {item.where}: {error}") from None
    if PurePosixPath(item.member or item.path.name).suffix.lower() in (".tif", ".tiff") and data[:2] in (b"II", b"MM"):
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                series = tiff.series[0]
                shape, axes = tuple(series.shape), series.axes
                _check_pixels(shape, axes, item.where, max_pixels)
                raw = series.asarray()
                pixels = from_tiff(tiff, item.where)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - tifffile raises many types for a broken file
            raise UserError(f"cannot read {item.where}: not a readable TIFF ({error})") from error
        return Read(raw, _channels_axis(raw, axes, item.where), pixels)
    try:
        with PIL.Image.open(io.BytesIO(data)) as header:
            _check_pixels((header.height, header.width), "YX", item.where, max_pixels)
    except UserError:
        raise
    except Exception:  # noqa: BLE001, S110 - not for PIL: decode_image names the file and the reason
        pass
    with _pil_limit(max_pixels):
        raw = decode_image(data, item.where)
    return Read(raw, "YX" if raw.ndim == 2 else "YXS", UNKNOWN)


def _channels_axis(raw: np.ndarray, axes: str, where: str) -> str:
    """``axes``, with a trailing column axis of 2-4 on large planes that tifffile could not name read as channels."""
    if (len(axes) == 3 and axes[0] in "QI" and axes[1:] == "YX" and raw.shape[2] in CHANNEL_AXIS_LENGTHS
            and min(raw.shape[:2]) >= MIN_PLANE_SIDE):
        log.warning("%s: read as one image of %d x %d pixels with %d channels (its TIFF does not name its axes); "
                    "choose the nuclear one with --channel N", where, raw.shape[0], raw.shape[1], raw.shape[2])
        return "YXC"
    return axes


def planes(raw: np.ndarray, axes: str, *, channel: int | None = None, stack: str = "planes",
           name: str = "image") -> list[tuple[str, np.ndarray]]:
    """The 2-D images to segment in one file: (key suffix, image) pairs.

    Parameters
    ----------
    raw : ndarray, as ``read_input`` returns it
    axes : str
        Its axes: Y and X, S (colour samples), C (channel planes), and any other letter (Z, T, Q, ...)
        counts as a stack of planes.
    channel : int, optional
        The nuclear channel (0-based) of a multichannel image (C or S axis). Without it, RGB or RGBA
        images are converted by luminance, and other multichannel images are an error.
    stack : 'planes' or 'max'
        A stack is segmented plane by plane (suffixes ``_z000``, ``_z001``, ...) or as its maximum
        projection.

    Returns
    -------
    list of (suffix, image): image (H, W), or (H, W, 3|4) for RGB(A) kept for luminance

    Examples
    --------
    >>> [(suffix, image.shape) for suffix, image in planes(np.zeros((3, 8, 9)), "ZYX")]
    [('_z000', (8, 9)), ('_z001', (8, 9)), ('_z002', (8, 9))]
    >>> [(suffix, image.shape) for suffix, image in planes(np.zeros((2, 8, 9)), "CYX", channel=1)]
    [('', (8, 9))]
    """
    if stack not in STACK_MODES:
        raise ValueError(f"stack must be one of {STACK_MODES}, got {stack!r}")
    if len(axes) != raw.ndim or "Y" not in axes or "X" not in axes:
        raise UserError(f"{name}: cannot tell its axes {axes!r} for an array of shape {raw.shape}")
    # Order the axes as (stack..., Y, X, channels), dropping stack axes of length 1.
    channel_axes = [index for index, axis in enumerate(axes) if axis in "CS"]
    if len(channel_axes) > 1:
        raise UserError(f"{name}: both colour samples and channel planes (axes {axes}); save one channel per file")
    stack_axes = [index for index, axis in enumerate(axes) if axis not in "YXCS"]
    order = stack_axes + [axes.index("Y"), axes.index("X")] + channel_axes
    image = np.transpose(raw, order)
    stack_shape = image.shape[:len(stack_axes)]
    image = image.reshape((int(np.prod(stack_shape, dtype=int)),) + image.shape[len(stack_axes):])
    if channel_axes:
        channels = image.shape[-1]
        if channel is not None:
            if not 0 <= channel < channels:
                raise UserError(f"{name}: --channel {channel} but the image has {channels} channel(s) "
                                f"(0..{channels - 1})")
            image = image[..., channel]
        elif axes[channel_axes[0]] == "S" and channels in (3, 4):
            pass  # RGB(A): converted by luminance
        elif axes[channel_axes[0]] == "S" and channels == 2:
            image = image[..., 0]  # gray + alpha
        elif channels == 1:
            image = image[..., 0]
        else:
            raise UserError(f"{name}: {channels} channels; pass --channel N to choose the nuclear one (0-based)")
    elif channel not in (None, 0):
        raise UserError(f"{name}: --channel {channel} but the image has one channel")
    if len(image) == 1:
        return [("", image[0])]
    if stack == "max":
        return [("", image.max(axis=0))]
    return [(f"_z{index:03d}", plane) for index, plane in enumerate(image)]

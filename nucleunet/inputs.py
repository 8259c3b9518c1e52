"""The images a user asks to segment: files, folders, zips and globs; channels and z-stacks.

    items = list_inputs(["my_images/", "plate.zip", "scans/*.tif"], recursive=True)
    for item in items:
        for key, raw in planes(read_input(item), channel=None, stack="planes", name=item.key):
            ...  # raw: (H, W) or (H, W, 3|4), as stored; key names the outputs

Every image gets a key, its path relative to the folder, zip or glob it was found in, without its
suffix: outputs keep the inputs' relative paths, so ``a/b/img.tif`` gives ``labels/a/b/img.tif``.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile

from nucleunet import layouts
from nucleunet.errors import MissingPathError, UserError
from nucleunet.imaging import IMAGE_SUFFIXES, decode_image

log = logging.getLogger("inputs")

STACK_MODES = ("planes", "max")


@dataclass(frozen=True)
class InputImage:
    """One image to segment.

    Attributes
    ----------
    key : str
        Names its outputs: the path relative to the folder, zip or glob it came from, without the
        suffix (POSIX separators).
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


def _zip(archive: Path) -> list[InputImage]:
    try:
        with zipfile.ZipFile(archive) as opened:
            names = [info.filename for info in opened.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as error:
        raise UserError(f"{archive} is not a readable zip file: {error}") from error
    found = _from_names(names, lambda key, name: InputImage(key, archive, name))
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {archive}")
    return found


def _glob(pattern: str) -> list[InputImage]:
    paths = [Path(path) for path in sorted(glob.glob(pattern, recursive=True)) if Path(path).is_file()]
    paths = [path for path in paths if _is_image_name(path.name)]
    if not paths:
        raise MissingPathError(f"no image files match {pattern}")
    root = Path(os.path.commonpath([path.parent for path in paths])) if len(paths) > 1 else paths[0].parent
    return [InputImage(_key(path.relative_to(root).as_posix()), path) for path in paths]


def list_inputs(inputs: list, *, recursive: bool = False) -> list[InputImage]:
    """Every image to segment, in the order given (folders, zips and globs sorted by name).

    Parameters
    ----------
    inputs : list of path or str
        Image files (PNG, TIFF, JPEG), folders of them (plain files, or the DSB layout
        ``<id>/images/<id>.png``), zips of either, or glob patterns (``scans/**/*.tif``).
    recursive : bool
        Also the images in subfolders of a folder (a DSB-layout folder is always read whole).

    Raises
    ------
    UserError
        An input that does not exist or holds no image, or two images that would get the same key.
    """
    found: list[InputImage] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found += _folder(path, recursive)
        elif path.is_file() and path.suffix.lower() == ".zip":
            found += _zip(path)
        elif path.is_file():
            found.append(InputImage(path.stem, path))
        elif glob.has_magic(str(given)):
            found += _glob(str(given))
        else:
            raise MissingPathError(f"input not found: {given}")
    keys = [item.key for item in found]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UserError(f"several inputs would write outputs named {repeated[0]!r} (e.g. a.png and a.tif in one "
                        f"folder); rename one")
    return found


def read_input(item: InputImage) -> tuple[np.ndarray, str]:
    """The image as stored, and the names of its axes.

    TIFFs are read with tifffile, which knows their axes (``'YX'``, ``'YXS'`` for RGB, ``'CYX'`` for
    channel planes, ``'ZYX'`` for a z-stack, ...); other files get ``'YX'`` or ``'YXS'``.

    Returns
    -------
    raw : ndarray, any dtype
    axes : str, one letter per axis of ``raw``
    """
    try:
        if item.member is None:
            data = item.path.read_bytes()
        else:
            with zipfile.ZipFile(item.path) as archive:
                data = archive.read(item.member)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read {item.where}: {error}") from error
    if PurePosixPath(item.member or item.path.name).suffix.lower() in (".tif", ".tiff") and data[:2] in (b"II", b"MM"):
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tiff:
                series = tiff.series[0]
                return series.asarray(), series.axes
        except Exception as error:  # noqa: BLE001 - tifffile raises many types for a broken file
            raise UserError(f"cannot read {item.where}: not a readable TIFF ({error})") from error
    raw = decode_image(data, item.where)
    return raw, "YX" if raw.ndim == 2 else "YXS"


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

"""Folder layouts of annotated nucleus images: which file is an image, which files are its nuclei.

Three layouts, in a folder or a zip, with any top folder (or none):

- the DSB layout: ``<id>/images/<id>.png`` and ``<id>/masks/<mask>.png``, one binary mask per nucleus;
- the StarDist layout: ``images/<name>.tif`` and ``masks/<name>.tif``, a label image of the same name;
- the Cellpose layout: ``<name>.tif`` with ``<name>_masks.tif`` (or ``_masks.png``, ``_labels``, ``_label``,
  ``_mask``) beside it, a label image.

``scan_layout`` lists the images with their nuclei's files; ``DatasetReader`` reads them from the folder or
zip; ``read_labels`` makes the label image of one entry. NumPy, PIL and imageio only.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import PIL.Image
import skimage.segmentation

from nucleunet.errors import MissingPathError, UserError
from nucleunet.imaging import decode_image

LAYOUT_SUFFIXES = (".png", ".tif", ".tiff")


# Suffixes of the file names of label images beside their image (the Cellpose layout).
LABEL_SUFFIXES = ("_masks", "_mask", "_labels", "_label")


@dataclass(frozen=True)
class LayoutEntry:
    """Where one image and its nuclei are, as paths relative to the dataset root (or zip members).

    ``masks`` lists one binary mask file per nucleus (the DSB layout); ``label_image`` is one label image
    (the StarDist and Cellpose layouts). An entry has one or the other (or neither, for an image without
    annotations).
    """

    image_id: str
    image: str
    masks: tuple[str, ...] = ()
    label_image: str | None = None


def is_ignored(name: str) -> bool:
    """Hidden and system files (``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``), which no listing counts."""
    base = PurePosixPath(name).name
    return base.startswith(".") or base == "Thumbs.db" or "__MACOSX" in PurePosixPath(name).parts


def scan_layout(names: list[str], *, require_masks: bool = True) -> tuple[list[LayoutEntry], dict[str, str]]:
    """Group the file names of an annotated image tree into images with their nuclei (see the module's layouts).

    Parameters
    ----------
    names : list of str
        Relative POSIX paths such as ``stage1_train/<id>/images/<id>.png``, ``train/masks/a.tif`` or
        ``a_masks.png`` (any top folder, or none). Files that are not PNG or TIFF, and hidden or system
        files (``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``) are ignored.
    require_masks : bool
        Whether an image without masks or label image is unusable.

    Returns
    -------
    entries : list of LayoutEntry, sorted by image id
    skipped : dict image_id -> reason, for images that cannot be used (no image file, no masks)

    Raises
    ------
    UserError
        No image at all in any layout, or a DSB ``images/`` folder with several images (which one
        is meant cannot be guessed).
    """
    names = [name for name in names if not is_ignored(name) and name.lower().endswith(LAYOUT_SUFFIXES)]
    entries, rest = _label_image_pairs(names)
    images: dict[str, list[str]] = {}
    masks: dict[str, list[str]] = {}
    for name in rest:
        parts = PurePosixPath(name).parts
        if len(parts) < 3:
            continue
        image_id, kind = parts[-3], parts[-2]
        if kind == "images":
            images.setdefault(image_id, []).append(name)
        elif kind == "masks":
            masks.setdefault(image_id, []).append(name)
    if not images and not masks and not entries:
        raise UserError("no annotated images found (expected <ImageId>/images/<ImageId>.png with <ImageId>/masks/, "
                        "images/<name>.tif with masks/<name>.tif, or <name>.tif with <name>_masks.tif)")
    skipped = {}
    for image_id in sorted(set(images) | set(masks)):
        found = images.get(image_id, [])
        if len(found) > 1:
            raise UserError(f"{image_id}: expected one file in images/, found {len(found)} "
                            f"({', '.join(sorted(found))})")
        if not found:
            skipped[image_id] = "no image file in images/"
        elif require_masks and not masks.get(image_id):
            skipped[image_id] = "no mask files in masks/"
        else:
            entries.append(LayoutEntry(image_id, found[0], tuple(sorted(masks.get(image_id, [])))))
    ids = [entry.image_id for entry in entries]
    repeated = sorted({image_id for image_id in ids if ids.count(image_id) > 1})
    if repeated:
        raise UserError(f"two images have the name {repeated[0]!r}; rename one")
    return sorted(entries, key=lambda entry: entry.image_id), skipped


def _label_image_pairs(names: list[str]) -> tuple[list[LayoutEntry], list[str]]:
    """Entries of the StarDist and Cellpose layouts (an image and its label image), and the names left over."""
    by_stem = {str(PurePosixPath(name).with_suffix("")): name for name in names}
    entries, used = [], set()
    for name in names:
        path = PurePosixPath(name)
        stem = str(path.with_suffix(""))
        label = None
        dsb_image = len(path.parts) >= 3 and path.parts[-3] == path.stem  # <id>/images/<id>.png
        if path.parent.name == "images" and not dsb_image:  # StarDist: images/<name> and masks/<name>
            label = by_stem.get(str(path.parent.parent / "masks" / path.stem))
        if label is None and not any(stem.endswith(suffix) for suffix in LABEL_SUFFIXES):
            label = next((by_stem[stem + suffix] for suffix in LABEL_SUFFIXES if stem + suffix in by_stem), None)
        if label is not None:
            entries.append(LayoutEntry(path.stem, name, label_image=label))
            used.update((name, label))
    return entries, [name for name in names if name not in used]


def list_files(source: str | os.PathLike) -> list[str]:
    """Every file of a folder or zip, as relative POSIX paths (zip members)."""
    source = Path(source)
    if not source.exists():
        raise MissingPathError(f"dataset path does not exist: {source}")
    if source.is_dir():
        return [path.relative_to(source).as_posix() for path in sorted(source.rglob("*")) if path.is_file()]
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            return [info.filename for info in archive.infolist() if not info.is_dir()]
    if source.suffix.lower() == ".zip":
        raise UserError(f"{source} is not a readable zip file (truncated or corrupt?)")
    raise UserError(f"{source} is neither a folder nor a zip file")


def subset_zip(source: str | os.PathLike, image_ids, target: str | os.PathLike) -> Path:
    """A new zip at ``target`` holding the images ``image_ids`` of the dataset ``source`` (a folder or zip, any
    layout ``scan_layout`` reads) with their masks, under their own names: a smaller dataset of the same kind."""
    wanted = set(image_ids)
    entries, _ = scan_layout(list_files(source), require_masks=False)
    reader = DatasetReader(Path(source))
    with zipfile.ZipFile(target, "w") as archive:
        for entry in entries:
            if entry.image_id in wanted:
                for name in (entry.image, *entry.masks):
                    archive.writestr(name, reader.read_bytes(name)[0])
    return Path(target)


class DatasetReader:
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
            raise UserError(f"cannot read {where}: {error}") from error
        return data, where

    def read(self, name: str) -> np.ndarray:
        return decode_image(*self.read_bytes(name))

    def read_mask(self, name: str) -> _MaskPixels:
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _MaskPixels:
    """One mask as its shape and the (rows, cols) of its nonzero pixels (of channel 0)."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_array(cls, mask: np.ndarray) -> _MaskPixels:
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
    left, top = box[:2]
    rows, cols = np.nonzero(np.asarray(mask.crop(box)))
    return _MaskPixels(shape, rows + top, cols + left)


def _stack_masks(masks, shape) -> tuple[np.ndarray, int, int]:
    """Labels, number of empty masks, number of pixels claimed by more than one mask.

    ``masks`` holds arrays (H, W), nonzero = nucleus, or ``_MaskPixels``.
    """
    labels = np.zeros(shape, np.int32)
    empty = overlap = 0
    for index, mask in enumerate(masks, start=1):
        if not isinstance(mask, _MaskPixels):
            mask = _MaskPixels.from_array(np.asarray(mask))
        if mask.shape != tuple(shape):
            raise UserError(f"mask {index} has shape {mask.shape}, image has shape {tuple(shape)}")
        if not len(mask.rows):
            empty += 1
            continue
        where = (mask.rows, mask.cols)
        overlap += int(np.count_nonzero(labels[where]))
        labels[where] = index - empty
    return labels, empty, overlap


def read_labels(reader: DatasetReader, entry: LayoutEntry, shape: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """The label image of one entry: int32 (H, W), nuclei numbered 1..n; with the numbers of empty masks
    and of pixels claimed by two masks (both 0 for a label image).

    Raises ``UserError`` when a mask or the label image does not have the image's ``shape``.
    """
    if entry.label_image is None:
        return _stack_masks([reader.read_mask(name) for name in entry.masks], shape)
    labels = reader.read(entry.label_image)
    if labels.ndim == 3:  # a label image saved with colour channels: the first holds the labels
        labels = labels[..., 0]
    if labels.shape != tuple(shape):
        raise UserError(f"label image {reader.where(entry.label_image)} has shape {labels.shape}, image has shape "
                        f"{tuple(shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"label image {reader.where(entry.label_image)} holds {labels.dtype} values, not integers")
    relabelled, _, _ = skimage.segmentation.relabel_sequential(labels.astype(np.int64))
    return relabelled.astype(np.int32), 0, 0

"""The images a user asks to segment: files, and folders of plain images or of the DSB layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dsb
from errors import MissingPathError, UserError
from imaging import IMAGE_SUFFIXES

log = logging.getLogger("inputs")


def list_inputs(inputs: list[Path]) -> list[tuple[str, Path]]:
    """(image id, path) of every image to segment: files as given, folders as ``find_images`` lists them."""
    found = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += find_images(item)
        elif item.is_file():
            found.append((item.stem, item))
        else:
            raise MissingPathError(f"input not found: {item}")
    ids = [image_id for image_id, _ in found]
    repeated = sorted({image_id for image_id in ids if ids.count(image_id) > 1})
    if repeated:
        raise UserError(f"several inputs share the name {repeated[0]!r}; outputs are named by it, rename one")
    return found


def find_images(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """Images to segment in a folder: the DSB layout (``<id>/images/<id>.png``) or plain image files.

    Plain files are PNG, TIFF or JPEG directly in ``folder``; hidden files are skipped.

    Returns
    -------
    list of (image_id, path), sorted by image id; the id is the file name without its suffix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"not a folder: {folder}")
    nested = [p.relative_to(folder).as_posix() for p in folder.glob("*/images/*") if p.is_file()]
    if nested:
        entries, skipped = dsb.scan_layout(nested, require_masks=False)
        for image_id, reason in skipped.items():
            log.warning("skipping %s: %s", image_id, reason)
        return [(entry.image_id, folder / entry.image) for entry in entries]
    found = [p for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not dsb.is_ignored(p.name)]
    if not found:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    stems = [p.stem for p in found]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise UserError(f"several files share the name {duplicates[0]!r} in {folder}; rename one")
    return [(p.stem, p) for p in found]

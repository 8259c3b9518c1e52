"""What ``predict`` writes for each image, in formats that Fiji, napari and QuPath open.

NumPy, scikit-image, tifffile and roifile only. Every writer takes a label image (0 = background,
1..n = nuclei) and writes one file atomically (``runs.atomic_path``):

- ``write_label_tiff``: the labels as a compressed TIFF, 16-bit (32-bit above 65,535 nuclei), calibrated where the
  pixel size is known;
- ``write_roi_zip``: an ImageJ / Fiji ROI set, one polygon ROI per nucleus, named by its label;
- ``write_geojson``: a QuPath FeatureCollection of detection polygons with their measurements;
- ``measure``: the per-nucleus table (``skimage.measure.regionprops``' measures, for all nuclei at once);
- ``overlay_on``: the original image with every nucleus outlined in its own colour;
- ``write_submission``: the Kaggle submission CSV (run-length encoded nuclei), which
  ``read_labels_csv`` reads back, as it reads Kaggle's label files.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import roifile
import scipy.ndimage as ndi
import skimage.color
import skimage.io
import skimage.measure
import skimage.segmentation
import tifffile

from nucleunet import nucleus_score, runs
from nucleunet.errors import UserError

# The TIFF Software tag of the images this package writes.
SOFTWARE = "nucleunet"

FORMATS = ("labels", "tiff", "mask", "overlay", "roi", "geojson", "measurements", "probability")
DEFAULT_FORMATS = ("labels", "tiff", "mask", "overlay", "roi", "geojson", "measurements")

def label_dtype(labels: np.ndarray) -> type:
    """uint16 while the labels fit, else uint32."""
    return np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32


def write_tiff(path: str | os.PathLike, image: np.ndarray, pixel_size: float | None = None) -> None:
    """An image as a zlib-compressed TIFF that names this package as its software (``SOFTWARE``: how the napari
    reader knows its label images); with ``pixel_size`` (micrometres), calibrated as Fiji, napari and QuPath read it:
    ImageJ's unit and resolution where ImageJ can hold the data type (8, 16-bit, float32), else the TIFF resolution
    tags in centimetres."""
    options = {}
    if pixel_size is not None and image.dtype in (np.uint8, np.uint16, np.float32):
        options = dict(imagej=True, resolution=(1 / pixel_size, 1 / pixel_size), metadata={"unit": "um"})
    elif pixel_size is not None:
        options = dict(resolution=(1e4 / pixel_size, 1e4 / pixel_size), resolutionunit="CENTIMETER")
    with runs.atomic_path(path) as temporary:
        tifffile.imwrite(temporary, image, compression="zlib", software=SOFTWARE, **options)


def write_label_tiff(path: str | os.PathLike, labels: np.ndarray, pixel_size: float | None = None) -> None:
    """The labels as a compressed TIFF (16-bit, or 32-bit above 65,535 nuclei), calibrated with ``pixel_size``."""
    write_tiff(path, labels.astype(label_dtype(labels)), pixel_size)


def outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """The outline of every nucleus as a closed polygon.

    The contour at level 0.5 of the nucleus's own mask (``skimage.measure.find_contours``), so it runs
    halfway between the pixel centres inside and outside; a nucleus in several pieces gets the outline
    of its largest piece.

    Returns
    -------
    dict label -> ndarray, shape (N, 2), float: (x, y) = (column, row) vertices, first == last
    """
    found = {}
    for label, box in enumerate(ndi.find_objects(labels), start=1):  # no regionprops objects: 20 % faster
        if box is None:
            continue
        mask = np.pad(labels[box] == label, 1)  # a border of background, so every contour closes
        contours = skimage.measure.find_contours(mask.astype(np.float32), 0.5)
        if not contours:
            continue
        contour = max(contours, key=len)
        rows, cols = contour[:, 0] + box[0].start - 1, contour[:, 1] + box[1].start - 1
        found[label] = np.column_stack([cols, rows])
    return found


def write_roi_zip(path: str | os.PathLike, labels: np.ndarray, polygons: dict | None = None) -> int:
    """An ImageJ / Fiji ROI set (Analyze > Tools > ROI Manager > More > Open): one polygon per nucleus, named by
    its label. Returns the number of ROIs written."""
    polygons = outlines(labels) if polygons is None else polygons
    rois = []
    for label, points in polygons.items():
        roi = roifile.ImagejRoi.frompoints(points[:-1].astype(np.float32), name=str(label))
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)
    with runs.atomic_path(path) as temporary:
        if rois:
            roifile.roiwrite(temporary, rois)
        else:  # an image without nuclei: an empty ROI set
            import zipfile

            zipfile.ZipFile(temporary, "w").close()
    return len(rois)


def write_geojson(path: str | os.PathLike, labels: np.ndarray, table: pd.DataFrame | None = None,
                  polygons: dict | None = None) -> int:
    """A GeoJSON FeatureCollection that QuPath imports (File > Import objects): one detection per nucleus,
    its polygon in pixel coordinates (x right, y down) and the row of ``table`` as its measurements.
    Returns the number of features."""
    polygons = outlines(labels) if polygons is None else polygons
    rows = {} if table is None else table.set_index("label").to_dict("index")
    features = []
    for label, points in polygons.items():
        measurements = {name: float(value) for name, value in rows.get(label, {}).items()}
        features.append({
            "type": "Feature",
            "id": f"nucleus-{label}",
            "geometry": {"type": "Polygon", "coordinates": [np.round(points, 3).tolist()]},
            "properties": {"objectType": "detection", "name": str(label), "classification": {"name": "Nucleus"},
                           "measurements": measurements},
        })
    with runs.atomic_path(path) as temporary:
        temporary.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


# The per-nucleus columns of regionprops, computed for all nuclei at once
# (regionprops measures one region at a time: about 0.3 ms a nucleus and property, 24 s for the 30,000 nuclei
# of a 10,000 x 10,000 image). Same definitions as scikit-image's: centroid (mean pixel position), area (pixels),
# perimeter (skimage.measure.perimeter with 4-connectivity), equivalent diameter, eccentricity (of the ellipse
# with the same second central moments) and solidity (its own convex hull, per nucleus).
_BAND = 512  # rows per band: bounds the extra memory to a few arrays of 512 x width


def _perimeter_weights() -> np.ndarray:
    weights = np.zeros(50)
    weights[[5, 7, 15, 17, 25, 27]] = 1
    weights[[21, 33]] = np.sqrt(2)
    weights[[13, 23]] = (1 + np.sqrt(2)) / 2
    return weights


def _sums(labels: np.ndarray, intensity: np.ndarray | None, count: int) -> dict[str, np.ndarray]:
    """Per label 0..count: its bounding box's top and left (``top``, ``left``), pixel count, sums of row, col,
    row^2, col^2, row*col (rows and cols counted from the box's corner, so the sums are exact integers), perimeter
    (skimage's weights), and per intensity channel its sum and max; band by band."""
    height, width = labels.shape
    boxes = ndi.find_objects(labels, max_label=count)
    origin_row = np.array([0] + [box[0].start if box else 0 for box in boxes])
    origin_col = np.array([0] + [box[1].start if box else 0 for box in boxes])
    channels = 0 if intensity is None else (1 if intensity.ndim == 2 else intensity.shape[-1])
    sums = {name: np.zeros(count + 1) for name in ("n", "r", "c", "rr", "cc", "rc", "perimeter")}
    sums["sum"] = np.zeros((channels, count + 1))
    sums["max"] = np.full((channels, count + 1), -np.inf)
    weights = _perimeter_weights()
    for top in range(0, height, _BAND):
        bottom = min(top + _BAND, height)
        r0, r1 = max(top - 2, 0), min(bottom + 2, height)
        padded = np.pad(labels[r0:r1], 1)  # outside the image counts as background
        centre = padded[1:-1, 1:-1]
        interior = ((padded[:-2, 1:-1] == centre) & (padded[2:, 1:-1] == centre)
                    & (padded[1:-1, :-2] == centre) & (padded[1:-1, 2:] == centre))
        border = np.pad(np.where(interior, 0, centre), 1)  # each pixel on its nucleus's edge, as its label
        code = np.ones(centre.shape, np.uint8)  # at most 1 + 4 x 2 + 4 x 10
        for dr, dc, weight in ((0, 1, 2), (2, 1, 2), (1, 0, 2), (1, 2, 2), (0, 0, 10), (0, 2, 10), (2, 0, 10),
                               (2, 2, 10)):
            code += np.uint8(weight) * (border[dr:dr + centre.shape[0], dc:dc + centre.shape[1]] == centre)
        rows = slice(top - r0, bottom - r0)
        inner, on_edge = centre[rows], (border[1:-1, 1:-1] != 0)[rows]
        found = np.flatnonzero(inner)
        ids = inner.ravel()[found]
        r = (found // width + top - origin_row[ids]).astype(np.float64)
        c = (found % width - origin_col[ids]).astype(np.float64)
        sums["n"] += np.bincount(ids, minlength=count + 1)
        for name, values in (("r", r), ("c", c), ("rr", r * r), ("cc", c * c), ("rc", r * c)):
            sums[name] += np.bincount(ids, values, minlength=count + 1)
        edge = on_edge.ravel()[found]
        sums["perimeter"] += np.bincount(ids[edge], weights[code[rows].ravel()[found][edge]], minlength=count + 1)
        if channels:
            band = intensity[top:bottom].reshape(-1, channels)[found].astype(np.float64)
            for channel in range(channels):
                sums["sum"][channel] += np.bincount(ids, band[:, channel], minlength=count + 1)
                with np.errstate(invalid="ignore"):  # a NaN pixel makes its nucleus's max NaN, as in regionprops
                    np.maximum.at(sums["max"][channel], ids, band[:, channel])
    sums["top"], sums["left"] = origin_row, origin_col
    return sums


def measure(labels: np.ndarray, intensity: np.ndarray | None = None, *, pixel_size: float | None = None,
            solidity: np.ndarray | None = None) -> pd.DataFrame:
    """Per-nucleus measurements: label, centroid, area, perimeter, equivalent diameter, eccentricity,
    solidity, and the mean and max intensity of ``intensity`` (the original image, in its own units); with
    ``pixel_size`` (micrometres), also ``area_um2``, ``perimeter_um``, ``equivalent_diameter_um`` and
    ``pixel_size_um`` (the pixel columns stay in pixels).

    The values of ``skimage.measure.regionprops`` (``centroid``, ``area``, ``perimeter``,
    ``equivalent_diameter_area``, ``eccentricity``, ``solidity``, ``intensity_mean``, ``intensity_max``), computed
    for all nuclei at once where regionprops goes one nucleus at a time.

    Parameters
    ----------
    labels : ndarray, shape (H, W), int
    intensity : ndarray, shape (H, W) or (H, W, C), optional
        With C channels, one mean and one max column per channel (``mean_intensity_0``, ...).
    solidity : ndarray, shape (n,), float, optional
        The solidity of nucleus i + 1 at i where it is already known (the nucleus score measures it), NaN where
        not: only those are measured.

    Returns
    -------
    DataFrame, one row per nucleus that has pixels, in label order
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected labels of shape (H, W), got {labels.shape}")
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape[:2] != labels.shape or intensity.ndim not in (2, 3):
            raise ValueError(f"expected an intensity image of shape {labels.shape} or {labels.shape} + (C,), "
                             f"got {intensity.shape}")
    count = int(labels.max(initial=0))
    sums = _sums(labels, intensity, count)
    label = np.flatnonzero(sums["n"][1:]) + 1
    area, r, c = sums["n"][label], sums["r"][label], sums["c"][label]
    # second central moments times area squared, from exact integer sums; the inertia tensor is
    # [[cols, -both], [-both, rows]] / area^2 (skimage.measure.inertia_tensor)
    rows, cols, both = area * sums["rr"][label] - r * r, area * sums["cc"][label] - c * c, area * sums["rc"][label] - r * c
    middle, spread = (rows + cols) / 2, np.sqrt(((cols - rows) / 2) ** 2 + both**2)
    largest, smallest = np.clip(middle + spread, 0, None), np.clip(middle - spread, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(largest > 0, np.sqrt(np.clip(1 - smallest / largest, 0, None)), 0.0)
    table = {"label": label,
             "centroid_row": sums["top"][label] + r / area, "centroid_col": sums["left"][label] + c / area,
             "area": area, "perimeter": sums["perimeter"][label],
             "equivalent_diameter": np.sqrt(4 * area / np.pi), "eccentricity": eccentricity,
             "solidity": _solidity(labels, label, solidity)}
    if intensity is not None:
        names = [""] if intensity.ndim == 2 else [f"_{channel}" for channel in range(intensity.shape[-1])]
        for channel, suffix in enumerate(names):
            table[f"mean_intensity{suffix}"] = sums["sum"][channel][label] / area
        for channel, suffix in enumerate(names):
            table[f"max_intensity{suffix}"] = sums["max"][channel][label]
    table = pd.DataFrame(table)
    if pixel_size is not None:
        table["area_um2"] = table["area"] * pixel_size**2
        table["perimeter_um"] = table["perimeter"] * pixel_size
        table["equivalent_diameter_um"] = table["equivalent_diameter"] * pixel_size
        table["pixel_size_um"] = pixel_size
    return table


def _solidity(labels: np.ndarray, label: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """The solidity of the nuclei ``label``: from ``known`` (nucleus i + 1's at i, NaN where unknown), else
    regionprops' (each nucleus's own convex hull)."""
    values = np.full(len(label), np.nan)
    if known is not None:
        known = np.asarray(known, np.float64)
        inside = label <= len(known)
        values[inside] = known[label[inside] - 1]
    unknown = ~np.isfinite(values)
    if unknown.any():
        chosen = np.zeros(int(labels.max(initial=0)), bool)
        chosen[label[unknown] - 1] = True
        values[unknown] = nucleus_score.solidity_of(labels, chosen)[label[unknown] - 1]
    return values


def display_image(raw: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of a raw image: each channel stretched between its 1st and 99.8th percentiles.

    Parameters
    ----------
    raw : ndarray, shape (H, W) or (H, W, C), any dtype

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    image = np.asarray(raw, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    finite = np.isfinite(image)
    low, high = (np.percentile(image[finite], (1, 99.8)) if finite.any() else (0.0, 1.0))
    scaled = np.clip((np.where(finite, image, low) - low) / max(high - low, 1e-12), 0, 1)
    if scaled.shape[-1] == 1:
        scaled = np.repeat(scaled, 3, axis=-1)
    return (scaled * 255).astype(np.uint8)


def overlay_on(raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The original image (``display_image``) with each nucleus outlined in its own colour: (H, W, 3) uint8."""
    picture = display_image(raw)
    outline = skimage.segmentation.find_boundaries(labels, mode="inner")
    colours = (skimage.color.label2rgb(labels, bg_label=0) * 255).astype(np.uint8)
    picture[outline] = colours[outline]
    return picture


def output_path(run_dir: Path, folder: str, key: str, suffix: str) -> Path:
    """``run_dir/folder/<key><suffix>``, the key's sub-folders created: outputs keep the inputs' relative paths.

    The last guard against writing outside the run folder: a key that is absolute or has a ``..`` part is a
    ``UserError``, and so is a path that a symbolic link inside the run folder would lead out of it (links are
    never followed for writing)."""
    relative = PurePosixPath(key + suffix)
    if relative.is_absolute() or ".." in relative.parts or re.match(r"^[A-Za-z]:", key):
        raise UserError(f"refusing to write {key + suffix!r}: the name would lead out of the run folder")
    base = Path(run_dir) / folder
    path = base.joinpath(*relative.parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    inside, parent = Path(run_dir).resolve(), path.parent.resolve()
    if not (parent == inside or inside in parent.parents) or path.is_symlink():
        raise UserError(f"refusing to write {path}: a symbolic link would lead it out of the run folder")
    return path


def check_formats(formats) -> tuple[str, ...]:
    """``formats`` as a tuple of known names; ``UserError`` naming any other."""
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown output format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    return formats


def write_outputs(run_dir: Path, key: str, raw: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                  probability: np.ndarray | None, formats, *, measurements: pd.DataFrame | None = None,
                  pixel_size: float | None = None) -> pd.DataFrame | None:
    """Every output of one image that ``formats`` asks for, named by ``key`` (see ``FORMATS``):

    ``labels/<key>.png`` (16-bit; left out above 65,535 nuclei, which PNG cannot hold: use the TIFF),
    ``labels/<key>.tif``, ``masks/<key>.png`` (0/255), ``overlays/<key>.png`` (the original image with
    outlines), ``rois/<key>.zip`` (Fiji), ``geojson/<key>.geojson`` (QuPath), ``measurements/<key>.csv``,
    ``probabilities/<key>.tif`` (float32 nucleus probability).

    ``measurements``: the per-nucleus table (``api.Segmentation.measurements``) where the caller has it; else
    ``measure(labels, raw)`` is made where ``formats`` need it. ``pixel_size`` (micrometres) calibrates the TIFFs.

    Returns the measurements table (with ``measurements`` in ``formats``, else None).
    """
    formats = check_formats(formats)
    table = measurements
    if table is None and {"measurements", "geojson"} & set(formats):
        table = measure(labels, raw, pixel_size=pixel_size)
    polygons = outlines(labels) if {"roi", "geojson"} & set(formats) else None
    if "labels" in formats and label_dtype(labels) == np.uint16:
        _write_png(output_path(run_dir, "labels", key, ".png"), labels.astype(np.uint16))
    if "tiff" in formats:
        write_label_tiff(output_path(run_dir, "labels", key, ".tif"), labels, pixel_size)
    if "mask" in formats:
        _write_png(output_path(run_dir, "masks", key, ".png"), mask.astype(np.uint8) * 255)
    if "overlay" in formats:
        _write_png(output_path(run_dir, "overlays", key, ".png"), overlay_on(raw, labels))
    if "probability" in formats:
        write_tiff(output_path(run_dir, "probabilities", key, ".tif"), probability.astype(np.float32), pixel_size)
    if "roi" in formats:
        write_roi_zip(output_path(run_dir, "rois", key, ".zip"), labels, polygons)
    if "geojson" in formats:
        write_geojson(output_path(run_dir, "geojson", key, ".geojson"), labels, table, polygons)
    if "measurements" in formats:
        with runs.atomic_path(output_path(run_dir, "measurements", key, ".csv")) as temporary:
            table.to_csv(temporary, index=False)
        return table
    return None


def _write_png(path: Path, image: np.ndarray) -> None:
    with runs.atomic_path(path) as temporary:
        skimage.io.imsave(temporary, image, check_contrast=False)


# --------------------------------------------------------------------------------------------
# Kaggle run-length encoding
# --------------------------------------------------------------------------------------------

def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """A Kaggle run-length encoding (``"start length ..."``, pixels numbered from 1, column-major) as a mask:
    ndarray of ``shape``, bool.

    Raises ValueError for an odd number of values, unsorted or overlapping runs, or runs
    outside the image.
    """
    height, width = shape
    values = [int(value) for value in str(rle).split()]
    if len(values) % 2:
        raise ValueError(f"RLE has an odd number of values: {rle[:60]!r}")
    pixels = np.zeros(height * width, bool)
    previous_end = 0
    for start, length in zip(values[::2], values[1::2]):
        if start < 1 or length < 1 or start - 1 < previous_end or start - 1 + length > height * width:
            raise ValueError(f"bad run ({start}, {length}) for an image of {height}x{width} pixels")
        pixels[start - 1:start - 1 + length] = True
        previous_end = start - 1 + length
    return pixels.reshape(width, height).T


def submission_rows(image_id: str, labels: np.ndarray) -> list[tuple[str, str]]:
    """``(ImageId, EncodedPixels)`` rows, one per nucleus in label order; one row with empty pixels if none.

    Each nucleus is encoded from its bounding box: the same as encoding the mask ``labels == value``, without a
    full-image mask per nucleus (8,000 nuclei of a 4,000 x 4,000 image took 0.4 s on a 2-core EPYC).
    """
    labels = np.asarray(labels)
    height = labels.shape[0]
    rows = []
    for value, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        inside = np.pad((labels[box] == value).T, ((0, 0), (1, 1)))  # one row per column of the box
        steps = np.diff(inside.astype(np.int8), axis=1)
        columns, first = np.nonzero(steps == 1)
        _, after = np.nonzero(steps == -1)
        starts = (box[1].start + columns) * height + box[0].start + first + 1  # column-major, from 1
        ends = starts + (after - first)
        joined = np.flatnonzero(starts[1:] != ends[:-1])  # a run that goes on at the top of the next column
        starts = starts[np.concatenate([[0], joined + 1])]
        ends = ends[np.concatenate([joined, [len(ends) - 1]])]
        rows.append((image_id, " ".join(f"{start} {end - start}" for start, end in zip(starts, ends))))
    return rows or [(image_id, "")]


def write_submission(path: str | os.PathLike, rows) -> None:
    """Write ``ImageId,EncodedPixels`` rows as a Kaggle submission CSV, atomically."""
    with runs.atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)


def read_labels_csv(path: str | os.PathLike, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """Read a Kaggle labels CSV (``stage1_train_labels.csv`` or ``stage1_solution.csv``) into label images.

    Parameters
    ----------
    path : CSV with columns ImageId, EncodedPixels and, optionally, Height and Width.
    shapes : dict image_id -> (H, W), needed when the CSV has no Height/Width columns.

    Returns
    -------
    dict image_id -> labels, ndarray (H, W) int32, nuclei numbered 1..n in the order of the rows.
    """
    masks: dict[str, list[str]] = {}
    sizes: dict[str, tuple[int, int]] = dict(shapes or {})
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"ImageId", "EncodedPixels"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            image_id = row["ImageId"]
            masks.setdefault(image_id, [])
            if row.get("EncodedPixels", "").strip():
                masks[image_id].append(row["EncodedPixels"])
            if row.get("Height") and row.get("Width"):
                sizes[image_id] = (int(row["Height"]), int(row["Width"]))
    result = {}
    for image_id, rles in masks.items():
        if image_id not in sizes:
            raise ValueError(f"{path}: no Height/Width for {image_id}; pass its shape in `shapes`")
        labels = np.zeros(sizes[image_id], np.int32)
        for index, rle in enumerate(rles, start=1):
            mask = rle_decode(rle, sizes[image_id])
            if np.any(labels[mask]):
                raise ValueError(f"{path}: nuclei of {image_id} overlap (row {index})")
            labels[mask] = index
        result[image_id] = labels
    return result

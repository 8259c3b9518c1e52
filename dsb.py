"""Annotated nucleus images, the 2018 Data Science Bowl training set first: find them, load them, cache them.

NumPy and scikit-image only: nothing here imports Keras. The data flow::

    stage1_train(.zip) -> load_dataset() -> [ImageRecord(image_id, image, labels, stats)]
                       -> stratify.load_or_make_split() -> tiling.tiles_for_records() (training tiles)

``load_dataset`` reads any folder or zip in the layouts of ``layouts.py`` (DSB, StarDist, Cellpose).
Images are normalised by ``imaging.preprocess`` and cut by ``tiling``; the split lives in ``stratify``.
Run ``python dsb.py`` to find (or download) the training set and print where it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nucleunet import runs
from nucleunet.errors import MissingPathError, UserError
from nucleunet.imaging import DEFAULT_PERCENTILES, image_stats, preprocess, replace_nonfinite
from nucleunet.layouts import DatasetReader, LayoutEntry, list_files, read_labels, scan_layout

log = logging.getLogger("dsb")

# Relative to the folder a command runs in (the project's folder when run from a checkout).
DATASETS_DIR = Path("datasets")
DEFAULT_CACHE_DIR = DATASETS_DIR / "cache"
DEFAULT_SPLIT_PATH = DATASETS_DIR / "split.csv"
# A copy of the training set that CI and shared machines keep beside the checkout.
SHARED_COPY = Path("..") / "shared" / "datasets" / "stage1_train.zip"
PUBLIC_URL = "https://data.broadinstitute.org/bbbc/BBBC038/stage1_train.zip"

# Bump when the decoded arrays change meaning, so older caches are not trusted.
CACHE_VERSION = 3


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
        Statistics of the raw image (``imaging.image_stats``), used for clustering.
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """Union of all nuclei: ndarray, shape (H, W), bool."""
        return self.labels > 0


# --------------------------------------------------------------------------------------------
# Finding and reading the DSB layout
# --------------------------------------------------------------------------------------------

def find_dataset(explicit: str | os.PathLike | None = None, *, download: bool = False) -> Path:
    """Locate the training set: a DSB-layout folder or zip.

    Order: ``explicit`` (``--data``), ``$DSB_DATA``, ``datasets/stage1_train/``,
    ``datasets/stage1_train.zip``, a shared copy ``../shared/datasets/stage1_train.zip``,
    and, when ``download`` is true, the public BBBC038 zip saved to ``datasets/``.

    Raises
    ------
    MissingPathError
        A ``FileNotFoundError``, with every place looked at, when none holds the data.
    """
    for given in (explicit, os.environ.get("DSB_DATA") or None):
        if given is not None:
            path = Path(given).expanduser()
            if not path.exists():
                raise MissingPathError(f"dataset path does not exist: {path}")
            return path
    candidates = [DATASETS_DIR / "stage1_train", DATASETS_DIR / "stage1_train.zip", SHARED_COPY]
    for path in candidates:
        if path.exists():
            return path
    tried = ", ".join(str(path) for path in candidates)
    if not download:
        raise MissingPathError(
            f"no DSB2018 training data found (looked at --data, $DSB_DATA, {tried}); "
            f"download {PUBLIC_URL} into {DATASETS_DIR}/ or set DSB_DATA"
        )
    target = DATASETS_DIR / "stage1_train.zip"
    log.info("downloading %s to %s", PUBLIC_URL, target)
    try:
        _download(PUBLIC_URL, target)
    except OSError as error:
        raise MissingPathError(
            f"no DSB2018 training data found (looked at $DSB_DATA, {tried}) and the download of "
            f"{PUBLIC_URL} failed: {error}"
        ) from error
    return target


def _download(url: str, target: Path) -> None:
    with runs.atomic_path(target) as partial, urllib.request.urlopen(url, timeout=60) as response, \
            open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


# Image and mask files of the DSB layout: the dataset's PNGs, and TIFFs (8, 16 bit or float) as microscopes write them.

def _load_entry(source: Path, entry: LayoutEntry, percentiles=DEFAULT_PERCENTILES):
    """Decode one image and its masks: (image, labels, stats, notes), or a reason to skip it (str)."""
    reader = DatasetReader(source)
    try:
        raw, nonfinite = replace_nonfinite(reader.read(entry.image), name=reader.where(entry.image))
        image = preprocess(raw, percentiles)
        stats = image_stats(raw)
        labels, empty, overlap = read_labels(reader, entry, image.shape)
    except ValueError as error:
        return str(error)
    return image, labels, stats, {"empty_masks": empty, "overlap_pixels": overlap, "nonfinite_pixels": nonfinite}


def read_raw_images(source: str | os.PathLike, image_ids) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The chosen images as stored in their files (before ``preprocess``), with their labels.

    For shifts of the raw images (``robustness.perturb``); ``load_dataset`` gives the preprocessed ones.

    Returns
    -------
    list of (image_id, raw, labels), in ``image_ids``' sorted order: raw as decoded (any dtype, (H, W)
    or (H, W, C)), labels ndarray (H, W) int32.
    """
    wanted = set(image_ids)
    entries, _ = scan_layout(list_files(source))
    reader = DatasetReader(Path(source))
    found = []
    for entry in entries:
        if entry.image_id in wanted:
            raw = reader.read(entry.image)
            labels, _, _ = read_labels(reader, entry, raw.shape[:2])
            found.append((entry.image_id, raw, labels))
    missing = wanted - {image_id for image_id, _, _ in found}
    if missing:
        raise UserError(f"{source}: {len(missing)} of the images asked for are not there (e.g. {sorted(missing)[:3]})")
    return found


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


class Dataset(list):
    """What ``load_dataset`` returns: a list of ``ImageRecord``, sorted by image id, and ``report``, the
    ``LoadReport`` of what loading met besides good images."""

    def __init__(self, records: list[ImageRecord], report: LoadReport):
        super().__init__(records)
        self.report = report


def load_dataset(
    source: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    workers: int | None = None,
    progress: bool = True,
    processes: bool = False,
) -> Dataset:
    """Load a DSB-layout training set from a folder or a zip; what it met is logged as warnings and kept in the
    result's ``report``.

    Unusable images (no image, no masks, unreadable files, masks of the wrong size) are skipped and reported; empty
    masks are ignored and overlapping masks counted. A path that does not exist, a folder or zip without any
    DSB-layout image, two images in one ``images/`` folder, or nothing usable at all raise ``MissingPathError`` /
    ``UserError``.

    Parameters
    ----------
    source : path, optional
        Folder or zip; by default found with ``find_dataset()``.
    cache_dir : path or None
        Where decoded arrays are kept between runs, keyed by ``source_fingerprint``; None: no cache.
    percentiles : (low, high)
        The intensity stretch of ``imaging.preprocess`` (each choice is cached apart).
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
    Dataset: the records, sorted by image id, and the load report
    """
    records, report = _read_dataset(source, cache_dir=cache_dir, percentiles=percentiles, workers=workers,
                                    progress=progress, processes=processes)
    for line in report.warnings():
        log.warning(line)
    return Dataset(records, report)


def _read_dataset(source, *, cache_dir, percentiles, workers, progress,
                  processes) -> tuple[list[ImageRecord], LoadReport]:
    """``load_dataset``'s records and report, from the cache or decoded."""
    source = find_dataset() if source is None else Path(source)
    cache_path = None
    if cache_dir is not None:
        cache_path = cache_file(cache_dir, source, percentiles)
        if cache_path.exists():
            try:
                records, report = _read_cache(cache_path)
                log.info("loaded %d images from cache %s", len(records), cache_path)
                return records, report
            except (OSError, ValueError, KeyError) as error:
                log.warning("ignoring unreadable cache %s: %s", cache_path, error)
    files = list_files(source)  # its errors name the source already
    try:
        entries, skipped = scan_layout(files)
    except UserError as error:
        raise UserError(f"{source}: {error}") from error
    report = LoadReport(skipped=dict(skipped))
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    jobs = [(source, entry, tuple(percentiles)) for entry in entries]
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
        raise UserError(f"{source}: no usable images ({'; '.join(report.warnings())})")
    if cache_path is not None:
        write_cache(cache_path, records, report)
        _remove_stale_caches(cache_path)
    return records, report


def cache_file(cache_dir: str | os.PathLike, source: str | os.PathLike,
               percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> Path:
    """Where the decoded arrays of ``source`` are cached: ``dsb-<path key>-<source_fingerprint>.npz``.

    The path key (a hash of the resolved path, and of the stretch ``percentiles`` where they are not the
    default) names the dataset, the fingerprint its content, so a newer cache of the same dataset
    can replace the older ones.
    """
    source = Path(source).resolve()
    name = str(source) if tuple(percentiles) == DEFAULT_PERCENTILES else f"{source}|{tuple(percentiles)}"
    key = hashlib.sha256(name.encode()).hexdigest()[:8]
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


def write_cache(path: Path, records: list[ImageRecord], report: LoadReport) -> None:
    """Save decoded records and their report as one ``.npz`` (see ``cache_file``), atomically."""
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
    with runs.atomic_path(path) as temporary:
        np.savez(temporary, **arrays)


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


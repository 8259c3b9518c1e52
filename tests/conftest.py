"""Shared fixtures: synthetic DSB-layout datasets written by the tests, and a real subset of the zip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.draw
import skimage.io

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dsb  # noqa: E402
from nucleunet import layouts  # noqa: E402

SUBSET_SIZE = 24


def disk_labels(shape, centres, radius) -> np.ndarray:
    """A label image of discs of ``radius`` at ``centres`` (row, col), labelled 1, 2, ... in order (int32)."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for index, (r, c) in enumerate(centres, start=1):
        labels[(rows - r) ** 2 + (cols - c) ** 2 <= radius ** 2] = index
    return labels


def make_synthetic_image(rng, shape=(64, 80), nuclei=3, *, kind="fluorescence", dtype=np.uint8):
    """A DSB-like image with round nuclei and their masks.

    Returns
    -------
    image : ndarray, shape (H, W, 4) RGBA (or (H, W) for kind='gray'), ``dtype``
    masks : list of ndarray, shape (H, W), uint8 in {0, 255}, non-overlapping
    """
    height, width = shape
    top = np.iinfo(dtype).max
    occupied = np.zeros(shape, bool)
    masks = []
    for _ in range(100):
        if len(masks) == nuclei:
            break
        radius = int(rng.integers(4, max(5, min(shape) // 6)))
        center = (int(rng.integers(radius, height - radius)), int(rng.integers(radius, width - radius)))
        rr, cc = skimage.draw.disk(center, radius, shape=shape)
        if occupied[rr, cc].any():
            continue
        occupied[rr, cc] = True
        mask = np.zeros(shape, np.uint8)
        mask[rr, cc] = 255
        masks.append(mask)
    background, foreground = (0.05, 0.8) if kind in ("fluorescence", "gray") else (0.85, 0.3)
    gray = np.where(occupied, foreground, background) + rng.normal(0, 0.02, shape)
    gray = (np.clip(gray, 0, 1) * top).astype(dtype)
    if kind == "gray":
        return gray, masks
    rgb = np.stack([gray] * 3, axis=-1)
    if kind == "histology":  # purple-ish stain: channels differ
        rgb[..., 1] = (rgb[..., 1] * 0.6).astype(dtype)
    alpha = np.full(shape + (1,), top, dtype)
    return np.concatenate([rgb, alpha], axis=-1), masks


def write_dsb_folder(root: Path, items: dict) -> Path:
    """Write ``{image_id: (image, masks)}`` in the DSB layout under ``root/stage1_train``."""
    top = root / "stage1_train"
    for image_id, (image, masks) in items.items():
        (top / image_id / "images").mkdir(parents=True)
        (top / image_id / "masks").mkdir()
        skimage.io.imsave(top / image_id / "images" / f"{image_id}.png", image, check_contrast=False)
        for index, mask in enumerate(masks):
            skimage.io.imsave(top / image_id / "masks" / f"m{index:03d}.png", mask, check_contrast=False)
    return top


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent).as_posix())
    return target


@pytest.fixture
def synthetic_items():
    """Twelve small images of three kinds, 8-bit, seeded."""
    return make_synthetic_items()


def make_synthetic_items() -> dict:
    """``{image_id: (image, masks)}``: twelve small images of three kinds, 8-bit, seeded."""
    rng = np.random.default_rng(0)
    items = {}
    for index in range(12):
        kind = ("fluorescence", "brightfield", "histology")[index % 3]
        shape = [(64, 80), (96, 96), (300, 260)][index % 3]
        items[f"img{index:02d}"] = make_synthetic_image(rng, shape, nuclei=2 + index % 3, kind=kind)
    return items


@pytest.fixture
def synthetic_folder(tmp_path, synthetic_items):
    return write_dsb_folder(tmp_path / "data", synthetic_items)


def real_dataset_path() -> Path:
    """The real stage1_train zip, from $DSB_DATA or ../shared/datasets; skip (fail in CI) without it."""
    candidates = [os.environ.get("DSB_DATA"), dsb.SHARED_COPY, dsb.DATASETS_DIR / "stage1_train.zip"]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    message = (f"the real DSB2018 zip is missing: set DSB_DATA or provide {dsb.SHARED_COPY} "
               f"(looked at {[str(c) for c in candidates if c]})")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def ready_test_images(folder: Path, clusters=(0, 2, 4)) -> list[tuple[str, np.ndarray]]:
    """The first test image (by id) of each of ``clusters`` in the ready model's split, as its file holds it (written
    to ``folder`` and read back, as a user's file would be): (image id, image)."""
    from nucleunet import models, stratify

    split = stratify.read_split(models.ready_model_path().parent / "split.csv")
    test = split[split["subset"] == "test"].sort_values("image_id")
    chosen = [test.loc[test["cluster"] == cluster, "image_id"].iloc[0] for cluster in clusters]
    source = real_dataset_path()
    entries = {entry.image_id: entry for entry in layouts.scan_layout(layouts.list_files(source))[0]}
    reader = layouts.DatasetReader(source)
    images = []
    for image_id in chosen:
        path = folder / f"{image_id}.png"
        path.write_bytes(reader.read_bytes(entries[image_id].image)[0])
        images.append((image_id, skimage.io.imread(path)))
    return images


@pytest.fixture(scope="session")
def real_subset_zip(tmp_path_factory) -> Path:
    """Every 28th image of the real training set (24 images of several kinds), as a zip."""
    source = real_dataset_path()
    target = tmp_path_factory.mktemp("real") / "subset.zip"
    entries, _ = layouts.scan_layout(layouts.list_files(source))
    return layouts.subset_zip(source, [entry.image_id for entry in entries[::28][:SUBSET_SIZE]], target)


def write_split(path: Path, subsets: dict[str, str]) -> Path:
    """A split CSV (``image_id, cluster, subset``) with the given subsets, so tiny datasets get every subset."""
    lines = ["image_id,cluster,subset"] + [f"{image_id},{index % 3},{subset}"
                                           for index, (image_id, subset) in enumerate(sorted(subsets.items()))]
    path.write_text("\n".join(lines) + "\n")
    return path


def synthetic_subsets(items: dict) -> dict[str, str]:
    """Subsets of the twelve synthetic images: 6 train, 3 CV (6 tiles of 256), 3 test, one of each kind per subset."""
    return {image_id: "cv" if index in (3, 4, 5) else "test" if index in (6, 7, 8) else "train"
            for index, image_id in enumerate(sorted(items))}


@pytest.fixture(scope="module")
def synthetic_training_set(tmp_path_factory) -> tuple[Path, Path]:
    """The twelve synthetic images in the DSB layout and their split CSV, made once per test module."""
    root = tmp_path_factory.mktemp("synthetic")
    items = make_synthetic_items()
    return write_dsb_folder(root, items), write_split(root / "split.csv", synthetic_subsets(items))


RUN_CLI = Path(__file__).resolve().parent / "run_cli.py"


def start_cli_process(request: dict, *, env: dict | None = None):
    """Start ``tests/run_cli.py`` with ``request`` in a new Python process (environment: ours plus ``env``)."""
    return subprocess.Popen([sys.executable, str(RUN_CLI), json.dumps(request)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_cli_process(process, *, timeout: float = 300) -> tuple[dict, str]:
    """Wait for a ``start_cli_process`` process: its ``RESULT`` (empty if it printed none) and its whole output."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{RUN_CLI.name} did not finish in {timeout} s; its output:\n{output[-5000:]}")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][len("RESULT "):]) if lines else {}), output


def run_cli_process(request: dict, *, env: dict | None = None, timeout: float = 300) -> tuple[dict, str]:
    return finish_cli_process(start_cli_process(request, env=env), timeout=timeout)


@pytest.fixture
def stand_in_model(tmp_path, monkeypatch):
    """A model file (for the command line to open) whose predictor is the identity on the nucleus channel: its nuclei
    are the bright blobs of the preprocessed image, in no time."""
    import unet
    from nucleunet import models, postprocessing

    path = tmp_path / "model" / "model.keras"
    path.parent.mkdir()
    unet.build_unet((None, None, 1), depth=2, base_filters=2, output_channels=2).save(path)
    postprocessing.Postprocessing(threshold=0.5, min_size=5).save(path.parent / "postprocessing.json")

    def predictor(self, engine="auto"):
        return (lambda tiles: np.concatenate([tiles, np.zeros_like(tiles)], axis=-1)), 64, 16

    monkeypatch.setattr(models.TrainedModel, "predictor", predictor)
    return path

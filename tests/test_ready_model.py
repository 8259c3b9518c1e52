"""The ready model shipped in ``models/unet_dsb2018/``: it loads and predicts on every installed backend, it
scores on real test-split images what its model card says, and fine-tuning starts from it and lowers the loss.

The model card's per-image scores are ``models/unet_dsb2018/test_metrics.json`` (``evaluate`` of the test
split, committed with the model); this test scores 8 of those images again, one or two of each cluster.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

import dsb
import train_and_predicted_masks as cli
import unet
from nucleunet import layouts, models, postprocessing
from nucleunet.config import TrainConfig

from conftest import disk_labels, real_dataset_path, run_cli_process
from test_backends import BACKEND_PACKAGES, require_backend

READY = models.ready_model_path()
FOLDER = READY.parent
# Mean mAP of 8 images may move this much from the card's on another CPU or backend: the model computes in
# float32 everywhere, so only pixels at a threshold's edge can differ.
MAP_TOLERANCE = 0.02


def subset_zip(image_ids, target):
    return layouts.subset_zip(real_dataset_path(), image_ids, target)


def card_images(count: int = 8) -> pd.DataFrame:
    """``count`` test-split images of the card, the first of each cluster in turn (by image id)."""
    per_image = pd.DataFrame(json.loads((FOLDER / "test_metrics.json").read_text())["per_image"])
    per_image = per_image.sort_values("image_id")
    per_image["rank"] = per_image.groupby("cluster").cumcount()
    return per_image.sort_values(["rank", "cluster"]).head(count)


def test_the_ready_model_and_its_settings_are_in_the_repository():
    for name in ("model.keras", "config.json", "postprocessing.json", "clusters.json", "split.csv",
                 "test_metrics.json"):
        assert (FOLDER / name).is_file(), name
    assert (FOLDER.parent / "README.md").is_file()  # the model card
    assert sum(path.stat().st_size for path in FOLDER.iterdir()) < 30 * 2**20
    model = unet.load_model(READY)
    assert model.input_shape[1:3] == (None, None)  # any image size
    assert all(weight.dtype == "float32" for weight in model.weights)
    config = TrainConfig.load(FOLDER / "config.json")
    split = pd.read_csv(FOLDER / "split.csv")
    assert config.init is None and set(split["subset"]) == {"train", "cv", "test"}


@pytest.mark.parametrize("backend", sorted(BACKEND_PACKAGES))
def test_predict_without_a_model_uses_the_ready_one_on_every_backend(backend, tmp_path):
    require_backend(backend)
    import skimage.io

    rng = np.random.default_rng(0)
    discs = disk_labels((120, 150), [(30, 30), (30, 100), (85, 60), (90, 120)], 12) > 0
    image = np.clip(discs * 200.0 + 20 + rng.normal(0, 8, discs.shape), 0, 255).astype(np.uint8)
    skimage.io.imsave(tmp_path / "cells.png", image, check_contrast=False)
    out = tmp_path / "runs"
    result, output = run_cli_process({"runs": [["predict", str(tmp_path / "cells.png"), "--out", str(out), "--quiet",
                                                "--no-tta"]], "block_tensorflow": backend != "tensorflow"},
                                     env={"KERAS_BACKEND": backend})
    assert result.get("codes") == [0] and result["backend"] == backend, output[-3000:]
    (run_dir,) = out.iterdir()
    counts = pd.read_csv(run_dir / "counts.csv")
    assert counts["nuclei"].tolist() == [4], counts  # four bright discs: four nuclei
    scores = pd.read_csv(run_dir / "measurements.csv")["score"]  # each nucleus's, all above the model's cut
    assert len(scores) == 4 and scores.between(postprocessing.Postprocessing.load(FOLDER / "postprocessing.json").min_score,
                                                1).all(), scores


def test_the_ready_model_scores_what_its_card_says_on_real_test_images(tmp_path):
    chosen = card_images()
    data = subset_zip(set(chosen["image_id"]), tmp_path / "eight.zip")
    assert cli.main(["evaluate", str(READY), "--subset", "all", "--data", str(data), "--no-cache", "--quiet",
                     "--figures-per-cluster", "0", "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    scored = pd.DataFrame(json.loads((run_dir / "metrics.json").read_text())["per_image"]).set_index("image_id")
    expected = chosen.set_index("image_id")
    assert sorted(scored.index) == sorted(expected.index)
    measured, card = scored.loc[expected.index, "map"].mean(), expected["map"].mean()
    assert abs(measured - card) <= MAP_TOLERANCE, (measured, card)
    assert card > 0.4  # the card's images are not a trivial set


def copies_zip(image_id: str, names: list[str], target):
    """A DSB-layout zip holding one real image (with its masks) under each of ``names``."""
    source = real_dataset_path()
    entries, _ = layouts.scan_layout(layouts.list_files(source))
    (entry,) = [entry for entry in entries if entry.image_id == image_id]
    reader = layouts.DatasetReader(source)
    with zipfile.ZipFile(target, "w") as archive:
        for name in names:
            archive.writestr(f"{name}/images/{name}.png", reader.read_bytes(entry.image)[0])
            for index, mask in enumerate(entry.masks):
                archive.writestr(f"{name}/masks/{index}.png", reader.read_bytes(mask)[0])
    return target


def test_fine_tuning_starts_from_the_ready_model_and_lowers_its_loss(tmp_path):
    # Fine-tuned on an image of the weakest cluster (stained tissue), the model's loss on that image falls; it is
    # measured on an identical copy held out as the CV image, before the first step and after each epoch.
    split = pd.read_csv(FOLDER / "split.csv", dtype={"image_id": str})
    per_cluster = json.loads((FOLDER / "test_metrics.json").read_text())["per_cluster"]
    weakest = int(min(per_cluster, key=lambda cluster: per_cluster[cluster]["mean_map"]))
    image_id = sorted(split.loc[(split["cluster"] == weakest) & (split["subset"] == "cv"), "image_id"])[0]
    names = ["copy_a", "copy_b", "copy_c"]
    data = copies_zip(image_id, names, tmp_path / "mine.zip")
    pd.DataFrame({"image_id": names, "cluster": 0, "subset": ["train", "train", "cv"]}).to_csv(
        tmp_path / "split.csv", index=False)
    assert cli.main(["train", "--init", str(READY), "--data", str(data), "--split", str(tmp_path / "split.csv"),
                     "--epochs", "3", "--steps-per-epoch", "8", "--crop-size", "128", "--warmup-steps", "0",
                     "--no-cache", "--quiet", "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = TrainConfig.load(run_dir / "config.json")
    assert config.init == str(READY) and config.preset == "finetune"
    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == 3
    before = json.loads((run_dir / "training.json").read_text())["starting_model"]["val_loss"]
    assert history["val_loss"].iloc[-1] < before, (before, history["val_loss"].tolist())
    # It keeps the ready model's post-processing, the automatic zoom (and its second, 1.41x larger) included, toward
    # its own training images' size.
    settings = postprocessing.Postprocessing.load(run_dir / "postprocessing.json")
    ready = postprocessing.Postprocessing.load(FOLDER / "postprocessing.json")
    assert ready.extra_zooms
    assert (settings.threshold, settings.contact_threshold, settings.scale, settings.extra_zooms) == (
        ready.threshold, ready.contact_threshold, ready.scale, ready.extra_zooms)
    # but not its nucleus score, which was fitted on the ready model's own predictions ('tune --fit-score' fits one)
    assert ready.min_score is not None and (settings.min_score, settings.score_model) == (None, None)
    assert settings.nucleus_area == postprocessing.reference_area(labels for _, _, labels in
                                                           dsb.read_raw_images(data, names[:2]))

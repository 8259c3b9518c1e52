"""predict end to end on the kinds of files users have, with a stand-in model whose nuclei are the bright blobs.

The stand-in returns the preprocessed image as the nucleus probability (and no contacts), so what comes out
depends only on how each input was read, normalised and written: the same picture stored as 8-bit PNG,
16-bit PNG, float TIFF in [0, 1] or in raw units, RGB or one channel of several must give the same nuclei.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import skimage.draw
import skimage.io
import skimage.measure
import skimage.morphology
import tifffile

import train_and_predicted_masks as cli
from nucleunet import adaptation, metrics, nucleus_score, postprocessing, prediction


def _picture(shape=(90, 120)):
    """Gray [0, 1] image with 5 bright disks on a dim background, and the number of disks."""
    image = np.full(shape, 0.1, np.float32)
    for row, col in [(20, 20), (20, 70), (50, 40), (70, 95), (60, 10)]:
        rr, cc = skimage.draw.disk((row, col), 8, shape=shape)
        image[rr, cc] = 0.9
    return image, 5


def _run(model, inputs, tmp_path, *extra):
    out = tmp_path / f"runs{len(list(tmp_path.glob('runs*')))}"  # one folder per run: only its run folder in it
    assert cli.main(["predict", str(model), *map(str, inputs), "--out", str(out), "--quiet", *extra]) == 0
    (run_dir,) = out.iterdir()
    return run_dir


def _nuclei(run_dir) -> dict:
    return dict(pd.read_csv(run_dir / "counts.csv").set_index("image")["nuclei"])


def test_one_picture_in_many_file_kinds_gives_the_same_nuclei(stand_in_model, tmp_path):
    image, disks = _picture()
    folder = tmp_path / "in"
    folder.mkdir()
    skimage.io.imsave(folder / "gray8.png", (image * 255).astype(np.uint8), check_contrast=False)
    skimage.io.imsave(folder / "gray16.png", (image * 65535).astype(np.uint16), check_contrast=False)
    tifffile.imwrite(folder / "unit float.tif", image)
    tifffile.imwrite(folder / "raw units.tif", image * 10_000)  # a float TIFF of raw intensities
    rgba = np.dstack([(image * 255).astype(np.uint8)] * 3 + [np.full(image.shape, 255, np.uint8)])
    skimage.io.imsave(folder / "rgba.png", rgba, check_contrast=False)
    skimage.io.imsave(folder / "jpeg é.jpg", (image * 255).astype(np.uint8), check_contrast=False, quality=95)
    run_dir = _run(stand_in_model, [folder], tmp_path)
    assert _nuclei(run_dir) == {name: disks for name in ["gray16", "gray8", "jpeg é", "raw units", "rgba",
                                                         "unit float"]}


def test_nan_and_infinite_corners_are_background(stand_in_model, tmp_path):
    image, disks = _picture()
    image[:10, :10] = np.nan
    image[-5:, -5:] = np.inf
    tifffile.imwrite(tmp_path / "holes.tif", image)
    run_dir = _run(stand_in_model, [tmp_path / "holes.tif"], tmp_path)
    counts = pd.read_csv(run_dir / "counts.csv")
    assert counts["nuclei"].tolist() == [disks] and counts["nonfinite_pixels"].tolist() == [125]


def test_the_nuclear_channel_of_a_two_channel_tiff(stand_in_model, tmp_path):
    image, disks = _picture()
    two = np.stack([np.random.default_rng(0).random(image.shape).astype(np.float32), image])  # nuclei in channel 1
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    out = tmp_path / "refused"
    assert cli.main(["predict", str(stand_in_model), str(tmp_path / "two.tif"), "--out", str(out), "--quiet"]) == 2
    (run_dir,) = out.iterdir()
    refused = json.loads((run_dir / "skipped.json").read_text())
    assert "2 channels; pass --channel N" in refused[str(tmp_path / "two.tif")]
    run_dir = _run(stand_in_model, [tmp_path / "two.tif"], tmp_path, "--channel", "1")
    assert _nuclei(run_dir) == {"two": disks}


def test_a_fluorescence_composite_is_warned_about_and_its_nuclear_channel_chosen(stand_in_model, tmp_path, caplog):
    image, disks = _picture()
    nuclei = image > 0.5
    composite = np.zeros(image.shape + (3,), np.uint8)
    composite[..., 2] = (image * 200).astype(np.uint8)  # nuclei in blue
    composite[..., 1] = np.where(skimage.morphology.dilation(nuclei, skimage.morphology.disk(5)) & ~nuclei, 230, 10)
    skimage.io.imsave(tmp_path / "merged.png", composite, check_contrast=False)
    with caplog.at_level("WARNING"):
        _run(stand_in_model, [tmp_path / "merged.png"], tmp_path)
    assert "merged.png looks like a fluorescence composite (signal in green and blue)" in caplog.text
    assert "pass --channel N" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        run_dir = _run(stand_in_model, [tmp_path / "merged.png"], tmp_path, "--channel", "2")
    assert "composite" not in caplog.text and _nuclei(run_dir) == {"merged": disks}


def test_a_stack_plane_by_plane_or_projected(stand_in_model, tmp_path):
    image, disks = _picture()
    stack = np.stack([image, np.full_like(image, 0.1), image])
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    by_plane = _nuclei(_run(stand_in_model, [tmp_path / "stack.tif"], tmp_path))
    assert by_plane == {"stack_z000": disks, "stack_z001": 0, "stack_z002": disks}
    assert _nuclei(_run(stand_in_model, [tmp_path / "stack.tif"], tmp_path, "--stack", "max")) == {"stack": disks}


def test_bad_files_are_skipped_and_named_and_the_rest_segmented(stand_in_model, tmp_path):
    image, disks = _picture()
    folder = tmp_path / "in"
    folder.mkdir()
    skimage.io.imsave(folder / "good.png", (image * 255).astype(np.uint8), check_contrast=False)
    (folder / "text.png").write_text("not an image")
    skimage.io.imsave(folder / "empty.png", np.zeros((40, 40), np.uint8), check_contrast=False)
    out = tmp_path / "runs"
    assert cli.main(["predict", str(stand_in_model), str(folder), "--out", str(out), "--quiet"]) == cli.SOME_SKIPPED
    (run_dir,) = out.iterdir()
    assert _nuclei(run_dir) == {"good": disks, "empty": 0}
    assert list(json.loads((run_dir / "skipped.json").read_text())) == [str(folder / "text.png")]


def test_outputs_of_every_format_and_the_tables(stand_in_model, tmp_path):
    image, disks = _picture()
    nested = tmp_path / "in" / "plate 1"
    nested.mkdir(parents=True)
    skimage.io.imsave(nested / "well.png", (image * 255).astype(np.uint8), check_contrast=False)
    run_dir = _run(stand_in_model, [tmp_path / "in"], tmp_path, "--recursive", "--formats",
                   "labels,tiff,mask,overlay,roi,geojson,measurements,probability")
    for path in ["labels/plate 1/well.png", "labels/plate 1/well.tif", "masks/plate 1/well.png",
                 "overlays/plate 1/well.png", "rois/plate 1/well.zip", "geojson/plate 1/well.geojson",
                 "measurements/plate 1/well.csv", "probabilities/plate 1/well.tif", "measurements.csv",
                 "counts.csv", "submission.csv", "config.json"]:
        assert (run_dir / path).is_file(), path
    table = pd.read_csv(run_dir / "measurements.csv")
    assert len(table) == disks and set(table["image"]) == {"plate 1/well"}
    assert table["mean_intensity"].min() > 200  # in the original image's units (8-bit), nuclei at 0.9 * 255


def test_a_large_image_is_segmented_in_blocks_without_seams(stand_in_model, tmp_path, monkeypatch):
    """Blocks of 64 pixels with a margin of 32: nuclei across block borders come out whole, as in one piece."""
    rng = np.random.default_rng(1)
    image = np.full((300, 260), 0.1, np.float32)
    for _ in range(40):
        rr, cc = skimage.draw.disk(tuple(rng.integers(10, 250, 2)), int(rng.integers(4, 9)), shape=image.shape)
        image[rr, cc] = 0.9
    settings = postprocessing.Postprocessing(min_size=0)
    predict = lambda tiles: np.concatenate([tiles, np.zeros_like(tiles)], axis=-1)  # noqa: E731
    whole = prediction.segment_image(predict, image, settings, tile_size=64, min_overlap=16, block_size=1000)
    blocks = prediction.segment_image(predict, image, settings, tile_size=64, min_overlap=16, block_size=64,
                                      margin=32)
    assert blocks.labels.max() == whole.labels.max() and blocks.probability.shape == image.shape
    assert metrics.average_precision(whole.labels, blocks.labels) == 1.0
    assert np.array_equal(blocks.mask, whole.mask)
    assert np.array_equal(blocks.mask, blocks.probability > settings.threshold)
    # Without the probability map (a large image's memory): the same nuclei and foreground.
    lean = prediction.segment_image(predict, image, settings, tile_size=64, min_overlap=16, block_size=64, margin=32,
                                    probability=False)
    assert lean.probability is None and np.array_equal(lean.labels, blocks.labels)
    assert np.array_equal(lean.mask, blocks.mask)


def test_blocks_give_each_nucleus_the_score_it_has_in_one_piece():
    rng = np.random.default_rng(2)
    image = np.full((300, 260), 0.05, np.float32)
    for _ in range(30):
        rr, cc = skimage.draw.disk(tuple(rng.integers(10, 250, 2)), int(rng.integers(5, 9)), shape=image.shape)
        image[rr, cc] = rng.uniform(0.55, 1.0)  # nuclei of different probabilities, so of different scores
    coef = [0.0] * len(nucleus_score.FEATURES)
    coef[nucleus_score.FEATURES.index("nucleus_probability")] = 5.0  # a score of the probability alone: no block
    model = nucleus_score.ScoreModel((0.8,) * len(coef), (1.0,) * len(coef), tuple(coef), 0.0).as_dict()
    settings = postprocessing.Postprocessing(min_size=0, score_model=model)
    predict = lambda tiles: np.concatenate([tiles, np.zeros_like(tiles)], axis=-1)  # noqa: E731
    whole = prediction.segment_image(predict, image, settings, tile_size=64, min_overlap=16, block_size=1000)
    blocks = prediction.segment_image(predict, image, settings, tile_size=64, min_overlap=16, block_size=64, margin=32)
    assert len(whole.scores) == whole.labels.max() == blocks.labels.max() == len(blocks.scores)
    for region in skimage.measure.regionprops(whole.labels):
        row, col = region.coords[0]
        assert blocks.scores[blocks.labels[row, col] - 1] == pytest.approx(whole.scores[region.label - 1])
        in_blocks = blocks.solidity[blocks.labels[row, col] - 1]  # the score's convex hull, NaN where trimmed
        assert np.isnan(in_blocks) or in_blocks == pytest.approx(whole.solidity[region.label - 1])
    assert np.isfinite(blocks.solidity).mean() > 0.8 and np.ptp(whole.solidity) > 0.01
    assert np.ptp(whole.scores) > 0.3  # scores that differ, so a mix-up would show
    assert prediction.segment_image(predict, image, postprocessing.Postprocessing(min_size=0), tile_size=64,
                                 min_overlap=16).scores is None


def test_scale_auto_zooms_small_nuclei_and_says_so_in_the_counts(stand_in_model, tmp_path):
    image, disks = _picture()
    skimage.io.imsave(tmp_path / "small nuclei.png", (image * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "refused"  # the stand-in's postprocessing.json gives no training nucleus area
    assert cli.main(["predict", str(stand_in_model), str(tmp_path / "small nuclei.png"), "--scale", "auto",
                     "--out", str(out), "--quiet"]) == 2
    assert not out.exists() or not any(out.iterdir())
    disk_area = postprocessing.typical_area(postprocessing.probability_to_labels(image, min_size=0))
    settings = postprocessing.Postprocessing.load(stand_in_model.parent / "postprocessing.json")
    settings.replace(scale="auto", nucleus_area=4 * disk_area).save(stand_in_model.parent / "postprocessing.json")
    counts = pd.read_csv(_run(stand_in_model, [tmp_path / "small nuclei.png"], tmp_path) / "counts.csv")
    assert counts["scale"].tolist() == [2.0] and counts["nuclei"].tolist() == [disks]
    counts = pd.read_csv(_run(stand_in_model, [tmp_path / "small nuclei.png"], tmp_path, "--scale", "1") / "counts.csv")
    assert counts["scale"].tolist() == [1.0] and counts["nuclei"].tolist() == [disks]


def test_flat_field_finds_the_nuclei_on_a_background_ramp_and_counts_say_which_images_were_flattened(
        stand_in_model, tmp_path):
    image, disks = _picture()
    ramp = np.linspace(0.0, 1.2, image.shape[1], dtype=np.float32)  # stray light from the right: brighter than nuclei
    skimage.io.imsave(tmp_path / "ramp.png", (255 * (image + ramp) / (image + ramp).max()).astype(np.uint8),
                      check_contrast=False)
    skimage.io.imsave(tmp_path / "even.png", (image * 255).astype(np.uint8), check_contrast=False)
    inputs = [tmp_path / "ramp.png", tmp_path / "even.png"]
    counts = pd.read_csv(_run(stand_in_model, inputs, tmp_path, "--flat-field") / "counts.csv").set_index("image")
    assert counts["nuclei"].to_dict() == {"ramp": disks, "even": disks}
    assert counts["flattened"].to_dict() == {"ramp": True, "even": False}
    assert counts.loc["ramp", "background_unevenness"] > adaptation.MAX_BACKGROUND_UNEVENNESS
    foreground = counts.loc["even", "foreground_fraction"]
    assert counts.loc["ramp", "foreground_fraction"] == pytest.approx(foreground, rel=0.2)
    counts = pd.read_csv(_run(stand_in_model, inputs, tmp_path, "--no-flat-field") / "counts.csv").set_index("image")
    assert not counts["flattened"].any()
    assert counts.loc["ramp", "foreground_fraction"] > 2 * foreground  # the ramp's bright side counts as a nucleus


def test_denoise_smooths_a_noisy_image_and_counts_say_which(stand_in_model, tmp_path):
    image, disks = _picture()
    noisy = np.clip(image + np.random.default_rng(1).normal(0.0, 0.15, image.shape), 0, 1)
    skimage.io.imsave(tmp_path / "noisy.png", (noisy * 255).astype(np.uint8), check_contrast=False)
    skimage.io.imsave(tmp_path / "clean.png", (image * 255).astype(np.uint8), check_contrast=False)
    inputs = [tmp_path / "noisy.png", tmp_path / "clean.png"]
    smoothed = pd.read_csv(_run(stand_in_model, inputs, tmp_path, "--denoise") / "counts.csv").set_index("image")
    assert smoothed["smoothed"].to_dict() == {"noisy": True, "clean": False}
    assert smoothed["nuclei"].to_dict() == {"noisy": disks, "clean": disks}
    kept = pd.read_csv(_run(stand_in_model, inputs, tmp_path, "--no-denoise") / "counts.csv").set_index("image")
    assert not kept["smoothed"].any()
    # the stand-in's probability is the image: smoothed, its foreground is nearer the clean image's
    clean = smoothed.loc["clean", "foreground_fraction"]
    assert abs(smoothed.loc["noisy", "foreground_fraction"] - clean) < abs(kept.loc["noisy", "foreground_fraction"] - clean)

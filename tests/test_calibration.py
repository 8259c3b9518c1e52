"""Pixel size: read from a file's metadata or given, carried into the outputs Fiji, napari and QuPath read, and the
zoom a nucleus diameter asks for; an uncalibrated image behaves as before."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd
import pytest
import skimage.draw
import tifffile

import train_and_predicted_masks as cli
from nucleunet import calibration, inputs
from nucleunet.calibration import UNKNOWN, Calibration
from nucleunet.errors import UserError


def _calibration_of(**options) -> Calibration:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((32, 32), np.uint16), **options)
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tiff:
        return calibration.from_tiff(tiff)


@pytest.mark.parametrize("options, expected", [
    (dict(imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"}), (0.325, "imagej")),
    (dict(imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "micron"}), (0.325, "imagej")),
    (dict(ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm"}), (0.65, "ome")),
    (dict(ome=True, metadata={"axes": "YX", "PhysicalSizeX": 650, "PhysicalSizeXUnit": "nm"}), (0.65, "ome")),
    (dict(resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"), (0.5, "tiff")),
    (dict(resolution=(72, 72), resolutionunit="INCH"), (None, "none")),  # a screen's default, not a microscope's
    (dict(), (None, "none")),
])
def test_the_pixel_size_a_tiff_states_is_read_in_micrometres(options, expected):
    found = _calibration_of(**options)
    assert (found.pixel_size, found.source) == (pytest.approx(expected[0]) if expected[0] else None, expected[1])


def test_an_implausible_pixel_size_in_a_file_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nucleunet.calibration"):
        assert _calibration_of(resolution=(1e4 / 500, 1e4 / 500), resolutionunit="CENTIMETER") == UNKNOWN
    assert "500" in caplog.text and "uncalibrated" in caplog.text


def test_a_diameter_sets_the_zoom_toward_the_training_nuclei():
    assert calibration.zoom_for_diameter(7.0, Calibration(0.325, "option"), 365.0) == pytest.approx(1.001, abs=1e-3)
    assert calibration.zoom_for_diameter(10.8, UNKNOWN, 365.0) == pytest.approx(2.0, abs=0.01)
    with pytest.raises(UserError, match="nucleus_area"):
        calibration.zoom_for_diameter(7.0, UNKNOWN, None)
    for bad in (0.0, -1.0, 200.0, float("nan")):
        with pytest.raises(UserError, match="micrometres per pixel"):
            Calibration(bad, "option")


def _calibrated_tiff(path, pixel_size=0.325):
    """A 16-bit microscope-like image of 4 nuclei 22 pixels across (7.1 um at 0.325 um per pixel), calibrated."""
    image = np.full((200, 240), 1000.0)
    for row, col in [(50, 50), (50, 170), (140, 90), (150, 190)]:
        rr, cc = skimage.draw.disk((row, col), 11, shape=image.shape)
        image[rr, cc] = 20000
    image = np.clip(image + np.random.default_rng(0).normal(0, 300, image.shape), 0, 65535).astype(np.uint16)
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / pixel_size, 1 / pixel_size), metadata={"unit": "um"})
    return path


def test_a_calibrated_16_bit_tiff_gives_calibrated_labels_and_measurements_in_micrometres(tmp_path):
    image = _calibrated_tiff(tmp_path / "calibrated.tif")
    assert inputs.read_input(inputs.InputImage("c", image)).calibration == Calibration(0.325, "imagej")
    assert cli.main(["predict", str(image), "--no-tta", "--quiet", "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    with tifffile.TiffFile(run_dir / "labels" / "calibrated.tif") as tiff:
        assert calibration.from_tiff(tiff) == Calibration(0.325, "imagej")  # what Fiji and napari read
        labels = tiff.asarray()
    assert labels.max() == 4
    table = pd.read_csv(run_dir / "measurements.csv")
    np.testing.assert_allclose(table["area_um2"], table["area"] * 0.325**2)
    np.testing.assert_allclose(table["equivalent_diameter_um"], table["equivalent_diameter"] * 0.325)
    assert table["equivalent_diameter_um"].between(6.5, 7.7).all() and set(table["pixel_size_um"]) == {0.325}
    counts = pd.read_csv(run_dir / "counts.csv")
    assert counts[["pixel_size_um", "pixel_size_source"]].values.tolist() == [[0.325, "imagej"]]
    features = json.loads((run_dir / "geojson" / "calibrated.geojson").read_text())["features"]
    assert "area_um2" in features[0]["properties"]["measurements"]


def test_diameter_and_pixel_size_set_the_zoom_and_an_absurd_pair_is_refused(tmp_path, capsys):
    image = _calibrated_tiff(tmp_path / "calibrated.tif")
    out = tmp_path / "runs"
    assert cli.main(["predict", str(image), "--diameter", "7", "--pixel-size", "0.325", "--no-tta", "--quiet",
                     "--out", str(out / "a")]) == 0
    counts = pd.read_csv(next((out / "a").iterdir()) / "counts.csv")
    assert counts["scale"].tolist() == [1.001] and counts["pixel_size_source"].tolist() == ["option"]
    with pytest.raises(SystemExit) as exit_info:  # 100 um per pixel: not a microscope's
        cli.main(["predict", str(image), "--diameter", "12", "--pixel-size", "100", "--quiet", "--out", str(out)])
    assert exit_info.value.code == 2 and "micrometres per pixel in [0.005, 50.0]" in capsys.readouterr().err
    assert cli.main(["predict", str(image), "--diameter", "0.1", "--no-tta", "--quiet", "--out", str(out / "c")]) == 2
    assert "asks for a zoom of" in capsys.readouterr().err  # one image, skipped: nothing segmented
    assert cli.main(["predict", str(image), "--diameter", "7", "--scale", "2", "--quiet", "--out", str(out / "d")]) == 2
    assert "not both" in capsys.readouterr().err


def test_an_uncalibrated_image_is_measured_in_pixels_as_before(tmp_path):
    image = tmp_path / "plain.tif"
    tifffile.imwrite(image, tifffile.imread(_calibrated_tiff(tmp_path / "c.tif")))
    assert cli.main(["predict", str(image), "--no-tta", "--quiet", "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    table = pd.read_csv(run_dir / "measurements.csv")
    assert not [column for column in table.columns if column.endswith(("_um", "_um2"))]
    counts = pd.read_csv(run_dir / "counts.csv")
    assert counts["pixel_size_source"].tolist() == ["none"] and counts["pixel_size_um"].isna().all()
    with tifffile.TiffFile(run_dir / "labels" / "plain.tif") as tiff:
        assert calibration.from_tiff(tiff) == UNKNOWN

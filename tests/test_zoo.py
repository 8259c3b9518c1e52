"""export --format bioimageio: a package in the current bioimage.io model spec that its own tools validate and test."""

from __future__ import annotations

import json
import zipfile

import numpy as np

import train_and_predicted_masks as cli
from nucleunet import zoo


def test_the_ready_model_exports_as_a_valid_tested_bioimageio_package(tmp_path, monkeypatch):
    from bioimageio.spec import load_model_description

    monkeypatch.chdir(tmp_path)  # the export leaves nothing in the folder it runs in
    assert cli.main(["export", "unet_dsb2018", "--format", "bioimageio", "--out", str(tmp_path / "runs")]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "export.json").read_text())
    assert record["tested"] is True and record["format"] == "bioimageio"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]
    package = run_dir / record["package"]
    names = set(zipfile.ZipFile(package).namelist())
    assert {"rdf.yaml", "weights.keras", "weights_savedmodel.zip", "test_input.npy", "test_output.npy", "cover.png",
            "README.md"} <= names
    description = load_model_description(package)  # validates it (raises if it is not valid)
    assert set(description.weights.available_formats) == {"keras_v3", "tensorflow_saved_model_bundle"}
    assert [step.id for step in description.inputs[0].preprocessing if step.id != "ensure_dtype"] == [
        "scale_range", "clip"]
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "only there" in readme and "automatic zoom" in readme  # what the package leaves to our pipeline
    outputs = np.load(zipfile.ZipFile(package).open("test_output.npy"))
    assert outputs.shape == (1, 256, 256, 2) and 0.0 <= outputs.min() and outputs.max() <= 1.0 and outputs.max() > 0.5


def test_the_test_image_is_synthetic_and_reproducible():
    first, second = zoo.test_image(), zoo.test_image()
    assert first.dtype == np.uint16 and first.shape == (256, 256) and np.array_equal(first, second)

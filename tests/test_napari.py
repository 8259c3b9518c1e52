"""The napari plugin: its dock widget in a real viewer gives the API's labels, its reader opens our label TIFFs as
Labels at their pixel size, and its manifest is valid. The viewer runs in a process of its own on a virtual display
(Xvfb, started here when there is no display), as the plugin keeps TensorFlow out of the viewer's process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nucleunet
from nucleunet import layouts, outputs, stratify

from conftest import real_dataset_path

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def display():
    """A display with OpenGL for napari: $DISPLAY, or an Xvfb started for these tests (skipped without one, failed
    in CI)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        message = "napari's viewer needs a display: install Xvfb (Debian: apt-get install xvfb)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def run_viewer(request: dict, display: str) -> dict:
    environment = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    finished = subprocess.run([sys.executable, str(PROJECT / "tests" / "napari_check.py"), json.dumps(request)],
                              capture_output=True, text=True, timeout=600, env=environment)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    assert finished.returncode == 0 and lines, (finished.stdout[-2000:] + finished.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def test_the_widget_segments_a_real_image_as_the_api_does_and_the_reader_opens_our_labels(tmp_path, display):
    split = stratify.read_split(nucleunet.load_model().path.parent / "split.csv")
    image_id = sorted(split.loc[(split["subset"] == "test") & (split["cluster"] == 0), "image_id"])[0]
    source = real_dataset_path()
    (entry,) = [entry for entry in layouts.scan_layout(layouts.list_files(source))[0] if entry.image_id == image_id]
    path = tmp_path / "cells.png"
    path.write_bytes(layouts.DatasetReader(source).read_bytes(entry.image)[0])
    import skimage.io

    found = nucleunet.load_model().segment(skimage.io.imread(path), tta=False)
    labels_tiff = tmp_path / "labels.tif"
    outputs.write_label_tiff(labels_tiff, found.labels, pixel_size=0.325)
    result = run_viewer({"image": str(path), "labels_tiff": str(labels_tiff), "out": str(tmp_path)}, display)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), found.labels)
    assert result["status"] == f"{found.count} nuclei in cells" and found.count > 5
    assert result["feature_rows"] == found.count and {"label", "area", "score"} <= set(result["features"])
    assert result["progress_total"] > 0
    assert result["reader_type"] == "Labels" and result["reader_scale"] == pytest.approx([0.325, 0.325])
    assert result["tensorflow_here"] is False


def test_the_reader_takes_only_label_tiffs_this_package_wrote(tmp_path):
    from nucleunet import napari as plugin

    ours, other = tmp_path / "ours.tif", tmp_path / "other.tif"
    outputs.write_label_tiff(ours, np.arange(16, dtype=np.int32).reshape(4, 4))
    import tifffile

    tifffile.imwrite(other, np.zeros((4, 4), np.uint16))
    assert plugin.get_reader(str(ours)) is plugin.read_labels
    assert plugin.get_reader(str(other)) is None and plugin.get_reader(str(tmp_path / "x.png")) is None
    (data, metadata, kind), = plugin.read_labels(str(ours))
    assert kind == "labels" and data.max() == 15 and "scale" not in metadata  # uncalibrated: pixels


def test_the_manifest_names_what_the_package_holds():
    import npe2

    manifest = npe2.PluginManifest.from_distribution("nucleunet")
    commands = {command.id: command.python_name for command in manifest.contributions.commands}
    assert commands == {"nucleunet.segment": "nucleunet.napari:SegmentWidget",
                        "nucleunet.read_labels": "nucleunet.napari:get_reader"}
    from nucleunet import napari as plugin

    assert callable(plugin.SegmentWidget) and callable(plugin.get_reader)

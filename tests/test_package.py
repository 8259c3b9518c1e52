"""The installable package: ``pip install .`` gives the package, the card's three modules, the ready model and the
``nucleunet`` command, and the README's Python snippet segments an image from another folder with that install alone.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from conftest import disk_labels

PROJECT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The README's Python snippet: its first ```python block."""
    match = re.search(r"```python\n(.*?)```", (PROJECT / "README.md").read_text(), re.S)
    assert match, "README.md has no ```python block"
    return match.group(1)


def build_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(folder), str(PROJECT)], check=True, capture_output=True, text=True)
    (wheel,) = folder.glob("nucleunet-*.whl")
    return wheel


def fresh_environment(folder: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (``pip install`` of it, no editable path to the checkout);
    its dependencies are this environment's, reached through a path file. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # A directory named in a .pth file goes on the path, but the .pth files inside it (this checkout's editable
    # install among them) are not read: the fresh environment sees the dependencies, not the checkout.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, text=True)
    return python


def test_the_wheel_holds_the_package_the_card_modules_the_ready_model_and_the_command(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("nucleunet/__init__.py", "nucleunet/api.py", "dsb.py", "unet.py", "train_and_predicted_masks.py",
                 "nucleunet/ready_models/unet_dsb2018/model.keras", "nucleunet/ready_models/unet_dsb2018/model.onnx",
                 "nucleunet/ready_models/unet_dsb2018/onnx.json",
                 "nucleunet/ready_models/unet_dsb2018/postprocessing.json",
                 "nucleunet/ready_models/unet_dsb2018/config.json", "nucleunet/ready_models/README.md",
                 "nucleunet/napari.yaml"):
        assert name in names, name
    assert not [name for name in names if name.split("/")[0] in ("tests", "bench", "experiments", "datasets", "docs")]
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    assert "nucleunet = train_and_predicted_masks:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert wheel.stat().st_size < 30 * 2**20



def test_the_base_install_needs_no_tensorflow_and_the_tensorflow_extra_brings_it(tmp_path):
    # pip install nucleunet: segmenting with the ready model on ONNX Runtime (tests/test_onnx.py runs predict with
    # Keras and TensorFlow unimportable); pip install "nucleunet[tensorflow]": training, export, the Keras engine.
    wheel = zipfile.ZipFile(build_wheel(tmp_path))
    (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    requires = [line.split(":", 1)[1].strip() for line in wheel.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = {re.split(r"[<>=!;\[ ]", line)[0].lower() for line in requires if "extra ==" not in line}
    tensorflow_extra = {re.split(r"[<>=!;\[ ]", line)[0].lower() for line in requires if "extra == 'tensorflow'" in line}
    assert "onnxruntime" in base and not base & {"tensorflow", "keras", "jax", "torch", "tf2onnx"}, base
    assert {"tensorflow", "keras", "tf2onnx"} <= tensorflow_extra, tensorflow_extra

def test_the_readme_snippet_segments_an_image_after_pip_install_from_another_folder(tmp_path):
    python = fresh_environment(tmp_path / "env", build_wheel(tmp_path / "dist"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    discs = disk_labels((200, 240), [(50, 50), (50, 170), (140, 90), (150, 190)], 14) > 0
    noise = np.random.default_rng(0).normal(0, 300, discs.shape)
    tifffile.imwrite(elsewhere / "my_image.tif", np.clip(discs * 20000.0 + 1000 + noise, 0, 65535).astype(np.uint16))
    code = readme_snippet() + "\nimport nucleunet, dsb; print('FROM', nucleunet.__file__, dsb.__file__)\n"
    finished = subprocess.run([str(python), "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (where,) = [line for line in finished.stdout.splitlines() if line.startswith("FROM ")]
    assert str(PROJECT) not in where and str(tmp_path / "env") in where, where  # the installed copy, not the checkout
    table = pd.read_csv(elsewhere / "my_image_nuclei.csv")
    assert len(table) == 4 and "4 nuclei" in finished.stdout
    command = subprocess.run([str(python), "-c", "import sys, train_and_predicted_masks as cli; sys.argv[0] = "
                              "'nucleunet'; sys.exit(cli.main(['predict', '--help']))"], cwd=elsewhere,
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 0 and "usage: nucleunet predict" in command.stdout, command.stderr[-2000:]

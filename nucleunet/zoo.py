"""A model as a bioimage.io model package, for the zoo's consumers: deepImageJ in Fiji, QuPath, ilastik, napari.

    python train_and_predicted_masks.py export unet_dsb2018 --format bioimageio

writes ``<run>/<name>.zip``: ``rdf.yaml`` (the current model spec) with the network as Keras 3 (``.keras``) and
TensorFlow SavedModel weights, a test input and the output those weights give it, a cover, the model card as its
documentation, citations and licence. The package describes the network: one gray channel stretched between its
0th and 99.95th percentiles (as ``imaging.preprocess`` does for a gray image with nuclei brighter than the
background) in, the nucleus and contact probabilities out. What only this package's own pipeline does is said in the
documentation: converting colour to gray and inverting dark nuclei, the flat field, the automatic zoom, test-time
augmentation, the split into nuclei and the nucleus score. Validated by ``bioimageio.spec`` and tested by
``bioimageio.core`` on its own test tensors (``test_package``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nucleunet import imaging
from nucleunet.errors import UserError
from nucleunet.models import TrainedModel

# What the package's documentation adds to the model card.
PIPELINE_NOTE = """
## This package and the full pipeline

This bioimage.io package holds the network: it takes one gray channel, stretched between its 0th and 99.95th
percentiles and clipped to [0, 1], with nuclei brighter than the background, and gives two probabilities per pixel:
nucleus, and where two nuclei touch. The project's own pipeline (`nucleunet`, `predict`) does more, and only there:
colour images converted to gray and images with dark nuclei inverted, a flat field for unevenly lit images, the
automatic zoom (each image zoomed to bring its nuclei to the size of the training images', and a second zoom
averaged in), test-time augmentation (flipped views of the image averaged), the split of the probabilities into
nuclei (a watershed seeded by the contact probability) and the score under which a nucleus is dropped. Its scores in
the model card are those of the full pipeline.
"""

CITATIONS = (
    ("Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. Nature Methods 16 "
     "(2019)", "10.1038/s41592-019-0612-7"),
    ("Ronneberger, Fischer and Brox, U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
     "10.1007/978-3-319-24574-4_28"),
)


def test_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A synthetic 16-bit fluorescence-like image of round nuclei (no dataset image is shipped): (size, size) uint16."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((size, size))
    image = np.full((size, size), 800.0)
    for _ in range(14):
        row, col, radius = rng.integers(20, size - 20), rng.integers(20, size - 20), rng.integers(7, 13)
        image[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = rng.uniform(9000, 20000)
    return np.clip(image + rng.normal(0, 250, image.shape), 0, 65535).astype(np.uint16)


def export_package(model_path: Path, folder: Path, *, name: str = "nucleunet-unet-dsb2018") -> Path:
    """Write the bioimage.io package of the model at ``model_path`` into ``folder``; returns the zip.

    Raises
    ------
    UserError
        The model takes an input of another form than (batch, H, W, 1), or the package fails validation or its own
        test (the message says why).
    """
    import keras
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    import unet

    trained = TrainedModel.open(model_path)
    network = unet.portable(unet.load_model(trained.path), dtype="float32")
    channels = int(network.output_shape[-1])
    work = Path(tempfile.mkdtemp(prefix="bioimageio-"))
    try:
        network.save(work / "weights.keras")
        _export_savedmodel(network, work / "savedmodel")
        shutil.make_archive(str(work / "weights_savedmodel"), "zip", work / "savedmodel")
        raw = test_image()
        low, high = trained.normalization
        stretched = imaging.stretch(raw.astype(np.float32), (low, high))
        output = np.asarray(network.predict(stretched[None, ..., None], verbose=0), np.float32)
        np.save(work / "test_input.npy", raw.astype(np.float32)[None, ..., None])
        np.save(work / "test_output.npy", output)
        _cover(raw, output, work / "cover.png")
        card = Path(trained.path).parent.parent / "README.md"
        card_text = card.read_text() if card.is_file() and card.parent.name in ("models", "ready_models") else ""
        (work / "README.md").write_text((card_text or f"# {name}\n\nA nucleus segmentation U-Net.\n") + PIPELINE_NOTE)

        size = v0_5.ParameterizedSize(min=32, step=2 ** ((trained.config.depth if trained.config else 5) - 1))
        input_axes = [v0_5.BatchAxis(), v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=size),
                      v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=size),
                      v0_5.ChannelAxis(channel_names=[v0_5.Identifier("gray")])]
        names = ["nucleus", "contact"][:channels]
        output_axes = [v0_5.BatchAxis(),
                       v0_5.SpaceOutputAxis(id=v0_5.AxisId("y"), size=v0_5.SizeReference(
                           tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId("y"))),
                       v0_5.SpaceOutputAxis(id=v0_5.AxisId("x"), size=v0_5.SizeReference(
                           tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId("x"))),
                       v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name) for name in names])]
        descr = v0_5.ModelDescr(
            name=name,
            description="U-Net probabilities of cell nuclei, and of where two nuclei touch, in 2D microscope images "
                        "(fluorescence, brightfield, stained tissue), trained on the 2018 Data Science Bowl images",
            authors=[v0_5.Author(name="nucleunet contributors")],
            cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in CITATIONS],
            license=v0_5.LicenseId("MIT"),
            documentation=v0_5.FileDescr(source=work / "README.md"),
            covers=[v0_5.FileDescr(source=work / "cover.png")],
            tags=["nuclei", "segmentation", "u-net", "fluorescence", "brightfield", "histology", "2d", "keras",
                  "tensorflow"],
            inputs=[v0_5.InputTensorDescr(
                id=v0_5.TensorId("raw"), axes=input_axes, test_tensor=v0_5.FileDescr(source=work / "test_input.npy"),
                preprocessing=[
                    v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
                        axes=[v0_5.AxisId("y"), v0_5.AxisId("x")], min_percentile=low, max_percentile=high)),
                    v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0))])],
            outputs=[v0_5.OutputTensorDescr(
                id=v0_5.TensorId("probabilities"), axes=output_axes,
                test_tensor=v0_5.FileDescr(source=work / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
            weights=v0_5.WeightsDescr(
                keras_v3=v0_5.KerasV3WeightsDescr(
                    source=work / "weights.keras", keras_version=v0_5.Version(keras.__version__),
                    backend=(keras.backend.backend(), v0_5.Version(_backend_version()))),
                tensorflow_saved_model_bundle=v0_5.TensorflowSavedModelBundleWeightsDescr(
                    source=work / "weights_savedmodel.zip", tensorflow_version=v0_5.Version(_tensorflow_version()),
                    parent="keras_v3")),
        )
        folder.mkdir(parents=True, exist_ok=True)
        package = folder / f"{name}.zip"
        save_bioimageio_package(descr, output_path=package)
    except (ValueError, TypeError) as error:
        raise UserError(f"the bioimage.io package is not valid: {' '.join(str(error).split())[:600]}") from error
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return package


def test_package(package: Path) -> None:
    """``bioimageio.core``'s test of the package's test tensors; a ``UserError`` with its reasons if it fails."""
    from bioimageio.core import test_model

    with tempfile.TemporaryDirectory(prefix="bioimageio-test-") as scratch, contextlib.chdir(scratch):
        summary = test_model(package.resolve())  # it unpacks the TensorFlow weights into the current folder
    if summary.status != "passed":
        failed = [detail for detail in summary.details if detail.status == "failed"]
        reasons = "; ".join(f"{detail.name}: {' '.join(str(error.msg) for error in detail.errors)[:200]}"
                            for detail in failed)
        raise UserError(f"the bioimage.io package {package.name} failed its test: {reasons}")


def _export_savedmodel(network, path: Path) -> None:
    """A TensorFlow SavedModel whose 'serve' endpoint maps (batch, H, W, 1) float32 to {"probabilities": ...}: the
    zoo's TensorFlow consumers take the outputs by name."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint(name="serve", fn=lambda tiles: {"probabilities": network(tiles, training=False)},
                         input_signature=[tf.TensorSpec(shape=(None, None, None, 1), dtype=tf.float32)])
    archive.write_out(str(path), verbose=False)


def _cover(raw: np.ndarray, output: np.ndarray, path: Path) -> None:
    """The test image beside its nucleus probability, as the package's cover."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(raw, cmap="gray")
    axes[0].set_title("test input (synthetic)")
    axes[1].imshow(output[0, ..., 0], cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("nucleus probability")
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def _backend_version() -> str:
    import keras

    backend = keras.backend.backend()
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    return module.__version__


def packaged_files(package: Path) -> list[str]:
    """The names of the files in a package zip."""
    with zipfile.ZipFile(package) as archive:
        return sorted(archive.namelist())

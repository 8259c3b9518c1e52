"""Train the nuclei U-Net on DSB2018, evaluate it, choose its post-processing, segment your own images.

The same command line is installed as the ``nucleunet`` command (``pip install .``)::

    python train_and_predicted_masks.py                                  # train: preset picked by the hardware
    python train_and_predicted_masks.py train --preset cpu --seed 1
    python train_and_predicted_masks.py resume runs/RUN
    python train_and_predicted_masks.py evaluate runs/RUN/model.keras
    python train_and_predicted_masks.py tune runs/RUN/model.keras
    python train_and_predicted_masks.py predict runs/RUN/model.keras my_images/
    python train_and_predicted_masks.py export runs/RUN/model.keras

This file is the command line only: it parses the options, hands them to the ``nucleunet`` package (``pipeline``
trains, resumes and exports; ``evaluation``, ``tuning``; ``batch`` segments your images through the package's API),
and turns a ``UserError`` (a missing file, a bad option) into one line and exit code 2. Anything else is a bug and
shows its traceback. Every subcommand but ``resume`` writes one new run folder under ``--out``. Exit codes: 0 all
done; 2 a mistake the user can fix, nothing done; 3 ``predict`` skipped some images (named in ``skipped.json``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) hides the messages that matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dsb  # noqa: E402 - after the environment is set
from nucleunet import batch, evaluation, inputs, models, outputs, runs, tuning  # noqa: E402
from nucleunet import config as configuration  # noqa: E402
from nucleunet.api import load_model  # noqa: E402
from nucleunet.calibration import check_pixel_size  # noqa: E402
from nucleunet.errors import UserError  # noqa: E402
from nucleunet.postprocessing import (  # noqa: E402
    MAX_SCALE,
    MAX_TILE,
    MIN_SCALE,
    MIN_TILE,
    TILE_MULTIPLE,
    TTA_VIEW_COUNTS,
)

SCRIPT = "train_and_predicted_masks.py"
# Exit codes besides 0 (all done): a mistake the user can fix, nothing done; predict skipped some of its images.
USER_ERROR = 2
SOME_SKIPPED = 3
COMMAND = "nucleunet"  # the same command line, installed by pip (pyproject.toml)

# Options that override a preset's value of the same name (argparse dest = TrainConfig field).
TRAINING_OPTIONS = ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "depth", "base_filters",
                    "normalization", "batch_norm", "dropout", "loss", "contact_weight", "lr_schedule", "warmup_steps",
                    "sampling", "crop_size", "scale_range", "gamma_range", "contrast_range", "noise", "blur",
                    "precision", "jit_compile", "contacts",
                    "contact_radius", "distribute", "figures_per_cluster")
SCALE_HELP = ("zoom images by this factor (0.05-4) before the model sees them (2 for nuclei half the size of the "
              "training set's); 'auto': each image by 0.35-2.83x, to bring its nuclei, measured in a first pass, to "
              "the training images' typical size")
POSTPROCESSING_OPTIONS = ("threshold", "min_size", "marker_height", "contact_threshold", "tta", "tta_views",
                          "tta_extra_zooms", "scale", "tile_size", "min_score", "extra_zooms", "flat_field", "denoise")
MODEL_HELP = ("a saved model: a .keras file (e.g. runs/RUN/model.keras), its run folder, or a ready model's name "
              "(unet_dsb2018)")
EXTRA_ZOOMS_HELP = ("also predict each image at these zooms relative to --scale's and average the maps (1.41: zoomed "
                    "in too, sharper outlines, about 3x the model's work; with --scale auto, a blurred image is "
                    "zoomed no larger than 1x); none, to predict at one zoom")


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------

def _invocation() -> str:
    """How the user called this command line: the installed ``nucleunet`` command, or ``python`` and this script."""
    return COMMAND if Path(sys.argv[0]).name == COMMAND else f"python {SCRIPT}"


def _command(subparsers, name: str, help_text: str, examples: list[str]) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help_text, description=help_text,
        epilog="Example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {_invocation()} {e}"
                                                                               for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_data_options(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", type=Path, metavar="PATH",
                       help="annotated images, a folder or zip: the DSB layout, images/ with masks/ of the same names "
                            "(StarDist), or img.tif with img_masks.tif beside it (Cellpose) (default: $DSB_DATA, "
                            "datasets/stage1_train[.zip], or the training run's data)")
    if split:
        group.add_argument("--split", type=Path, metavar="CSV",
                           help="split CSV (image_id, cluster, subset). train: made on first use, then reused "
                                "(default datasets/split.csv, or datasets/split-<name of --data>.csv); evaluate, "
                                "tune: only read (default: the model's run's)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR", default=dsb.DEFAULT_CACHE_DIR,
                       help="cache of decoded images (default: datasets/cache)")
    group.add_argument("--no-cache", action="store_true", help="decode the images; neither read nor write the cache")


def _tile_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not (MIN_TILE <= value <= MAX_TILE and value % TILE_MULTIPLE == 0):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a side of {MIN_TILE}-{MAX_TILE} pixels divisible by "
                                         f"{TILE_MULTIPLE}, got {text!r}")
    return value


def _zoom_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_SCALE <= value <= MAX_SCALE:
        raise argparse.ArgumentTypeError(f"expected a zoom factor in [{MIN_SCALE}, {MAX_SCALE}], got {text!r}")
    return value


def _scale(text: str) -> float | str:
    return text if text == "auto" else _zoom_factor(text)


def _zoom(text: str) -> float:
    value = _zoom_factor(text)
    if value == 1:
        raise argparse.ArgumentTypeError("expected a zoom other than 1 (the zoom of --scale itself)")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _pixel_size(text: str) -> float:
    try:
        return check_pixel_size(_positive(text), what="the pixel size")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _pixels(text: str) -> int:
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels (e.g. 2e9), got {text!r}")
    return value


def _add_postprocessing_options(parser: argparse.ArgumentParser, default_text: str, *, scale: bool = True) -> None:
    group = parser.add_argument_group(f"post-processing (default: {default_text})")
    group.add_argument("--threshold", type=float, metavar="P",
                       help="nucleus probability above which a pixel is foreground")
    group.add_argument("--min-size", type=int, metavar="PIXELS",
                       help="drop nuclei of this many pixels or fewer (but none of over a quarter of the image's "
                            "typical nucleus area)")
    group.add_argument("--marker-height", type=float, metavar="PIXELS",
                       help="split touching nuclei by a distance watershed with markers this high (e.g. 2); "
                            "0 = by the contact channel if the model has one, else not at all")
    group.add_argument("--contact-threshold", type=float, metavar="P",
                       help="with a contact channel: pixels of higher contact probability seed no nucleus")
    group.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="test-time augmentation: average the maps of flipped and turned views of each image "
                            "(--tta-views of them: that many times the model's work)")
    if scale:
        group.add_argument("--tta-views", type=int, choices=TTA_VIEW_COUNTS, metavar="N",
                           help="with --tta, how many views: 2 (the image and its mirror image), 4 (its four "
                                "mirrorings) or 8 (and their quarter turns) (default: the model's "
                                "postprocessing.json)")
        group.add_argument("--tta-extra-zooms", action=argparse.BooleanOptionalAction, default=None,
                           help="with --tta and --extra-zooms: predict the extra zooms with the same views too "
                                "(--no-tta-extra-zooms: the image alone there, the views at the first zoom only) "
                                "(default: the model's postprocessing.json)")
        group.add_argument("--scale", type=_scale, metavar="FACTOR|auto", help=SCALE_HELP)
        group.add_argument("--extra-zooms", type=_zoom, nargs="*", metavar="F", help=EXTRA_ZOOMS_HELP)
        group.add_argument("--flat-field", action=argparse.BooleanOptionalAction, default=None,
                           help="flatten an uneven background (a ramp of haze or stray light, vignetting) before "
                                "predicting, in each image whose background varies strongly; evenly lit images are "
                                "left as they are (default: on)")
        group.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                           help="smooth a noisy image (a dim exposure) a little before predicting; clean and blurred "
                                "images are left as they are (default: the model's postprocessing.json)")
        group.add_argument("--min-score", type=float, metavar="P",
                           help="drop nuclei whose score (how likely, learnt on training images, a predicted nucleus "
                                "is a true one; 'tune --fit-score') is under P; 0 = keep every nucleus")
        group.add_argument("--tile-size", type=_tile_size, metavar="N|auto",
                           help="side of the tiles the model sees ('auto': the fewest tiles of at most 1024 pixels "
                                "that cover each image; default: the model's postprocessing.json, else the size it "
                                "was trained on)")


def _add_output_options(parser: argparse.ArgumentParser, *, out: bool = True, figures: bool = False) -> None:
    group = parser.add_argument_group("output")
    if out:
        group.add_argument("--out", type=Path, metavar="DIR", default=runs.DEFAULT_RUNS_DIR,
                           help="folder in which the command makes its new run folder <timestamp>-<what>/ "
                                "(default: runs/)")
    if figures:
        group.add_argument("--figures-per-cluster", type=int, metavar="N",
                           help="test images drawn per cluster in figures/ (default: 2)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def build_arg_parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per command, each accepting only its own options."""
    parser = argparse.ArgumentParser(
        prog=COMMAND if _invocation() == COMMAND else SCRIPT,
        description="U-Net nuclei segmentation on the 2018 Data Science Bowl data. Without a command, trains "
                    "(options may follow directly).",
        epilog=f"Run '{_invocation()} COMMAND --help' for a command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = _command(subparsers, "train", "train a U-Net, evaluate it on the test split, draw predicted masks",
                     ["train --preset cpu --seed 1",
                      "train --init models/unet_dsb2018/model.keras --data my_annotated_images/"])
    train.add_argument("--preset", choices=sorted(configuration.PRESETS),
                       help="settings to start from: 'seed' = the reference (GPU), 'cpu' = at most 14 min on "
                            "2 cores, 'finetune' = a few minutes from --init, 'smoke' = a seconds-long check. "
                            "Default: 'finetune' with --init, else 'seed' if a GPU is found, else 'cpu'")
    train.add_argument("--init", type=Path, metavar="MODEL",
                       help="start from this model's network and weights (fine-tuning, e.g. on your own annotated "
                            "images with --data; a .keras file or a ready model's name): its architecture and "
                            "post-processing are kept")
    _add_data_options(train)
    group = train.add_argument_group("training (override the preset)")
    group.add_argument("--seed", type=int, metavar="N", default=0,
                       help="seed for the split (first use), weights, sampling and augmentation (default: 0)")
    group.add_argument("--epochs", type=int, metavar="N", help="number of epochs (with --minutes, a ceiling)")
    group.add_argument("--steps-per-epoch", type=int, metavar="N", help="batches per epoch; CV is evaluated after each")
    group.add_argument("--batch-size", type=int, metavar="N",
                       help="tiles per batch (the global batch with --distribute)")
    group.add_argument("--learning-rate", type=float, metavar="LR", help="Adam's learning rate")
    group.add_argument("--minutes", type=float, metavar="M",
                       help="training time budget (stops after validating); 0 = none")
    group.add_argument("--depth", type=int, metavar="N", help="U-Net levels, bottleneck included")
    group.add_argument("--base-filters", type=int, metavar="N", help="filters of the first U-Net level")
    group.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                       help="batch normalization after each convolution")
    group.add_argument("--dropout", type=float, metavar="RATE", help="dropout at the two deepest levels")
    group.add_argument("--loss", choices=configuration.LOSSES, help="training loss")
    group.add_argument("--contact-weight", type=float, metavar="W",
                       help="with contacts and --loss bce_dice: the cross-entropy of the pixels where nuclei touch "
                            "counts W times (default: the preset's: "
                            + "; ".join(f"{preset['contact_weight']:g} in {name}"
                                        for name, preset in configuration.PRESETS.items() if "contact_weight" in preset)
                            + f"; {configuration.TrainConfig.contact_weight:g} in the others)")
    group.add_argument("--lr-schedule", choices=configuration.LR_SCHEDULES,
                       help="'constant', or 'cosine' decay to 0 over epochs x steps-per-epoch")
    group.add_argument("--warmup-steps", type=int, metavar="N",
                       help="with the cosine schedule: steps over which the learning rate rises from 0")
    group.add_argument("--sampling", choices=configuration.SAMPLINGS,
                       help="draw tiles uniformly ('tile'), or "
                            "crops of whole images at random places, scales and intensities ('crop')")
    group.add_argument("--crop-size", type=int, metavar="N", help="side of the training crops with --sampling crop")
    group.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="with --sampling crop: zoom of the crops, drawn log-uniformly (e.g. 0.5 2)")
    group.add_argument("--gamma-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="with --sampling crop: intensity gamma of the crops (e.g. 0.6 1.6)")
    group.add_argument("--contrast-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                       help="with --sampling crop: contrast about the background (e.g. 0.6 1.3)")
    group.add_argument("--noise", type=float, metavar="SIGMA", help="with --sampling crop: largest Gaussian noise")
    group.add_argument("--blur", type=float, metavar="SIGMA", help="with --sampling crop: largest Gaussian blur")
    group.add_argument("--normalization", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="percentiles of each image stretched to 0 and 1 (0 = the minimum; default 0 99.95)")
    group.add_argument("--precision", choices=configuration.PRECISIONS,
                       help="'mixed_bfloat16' computes in bfloat16 (fast where the CPU has bfloat16 instructions, "
                            "or on a GPU); 'auto' chooses by the hardware")
    group.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the training step with XLA (TensorFlow backend)")
    group.add_argument("--contacts", action=argparse.BooleanOptionalAction, default=None,
                       help="a second output channel learns where nuclei touch, to split them")
    group.add_argument("--contact-radius", type=int, metavar="PIXELS",
                       help="the contact channel's target: pixels within this distance of two nuclei (default 2)")
    group.add_argument("--distribute", choices=configuration.DISTRIBUTE_MODES,
                       help="'mirrored': every GPU of this machine (tf.distribute.MirroredStrategy; "
                            "keras.distribution.DataParallel on JAX); 'multiworker': the machines in TF_CONFIG "
                            "(tf.distribute.MultiWorkerMirroredStrategy)")
    _add_postprocessing_options(train, "the preset's", scale=False)
    _add_output_options(train, figures=True)

    resume = _command(subparsers, "resume", "continue a killed or interrupted training run from the end of its "
                                            "last finished epoch, with its own config, split and time left",
                      ["resume runs/20261124-101500-cpu"])
    resume.add_argument("run", type=Path, metavar="RUN", help="the run folder to continue")
    _add_data_options(resume, split=False)
    _add_output_options(resume, out=False)

    evaluate = _command(subparsers, "evaluate", "score a saved model on a subset of a DSB-layout dataset: "
                                                "pixel Dice and mAP per image, overall and per cluster, with figures",
                        ["evaluate runs/RUN/model.keras",
                         "evaluate runs/RUN/model.keras --subset all --data other.zip"])
    evaluate.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    evaluate.add_argument("--subset", choices=("test", "cv", "train", "all"), default="test",
                          help="which images: a subset of the model's split, or 'all' of --data (default: test)")
    evaluate.add_argument("--perturb", action="store_true",
                          help="also score the images under controlled shifts (scale, gamma, contrast, noise, blur, "
                               "blur and noise together, a background ramp, shading, inversion, colour channels): "
                               "robustness.csv")
    _add_data_options(evaluate)
    _add_postprocessing_options(evaluate, "the model's postprocessing.json")
    _add_output_options(evaluate, figures=True)

    tune = _command(subparsers, "tune", "choose the post-processing on the CV split (never the test split) and "
                                        "save it beside the model as postprocessing.json",
                    ["tune runs/RUN/model.keras", "tune runs/RUN/model.keras --no-tta"])
    tune.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    tune.add_argument("--subset", choices=("cv", "train"), default="cv",
                      help="the images to choose on (default: cv)")
    tune.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                      help="test-time augmentation while choosing (default: the model's setting)")
    tune.add_argument("--scale", type=_scale, metavar="FACTOR|auto",
                      help=SCALE_HELP.replace("zoom images", "predict with images zoomed") + " (default: the model's)")
    tune.add_argument("--extra-zooms", type=_zoom, nargs="*", metavar="F",
                      help=EXTRA_ZOOMS_HELP + " (default: the model's)")
    tune.add_argument("--fit-score", action="store_true",
                      help="also fit a score for each predicted nucleus on the split's training images (predicts "
                           "them all once) and choose the score under which nuclei are dropped (--min-score)")
    _add_data_options(tune)
    _add_output_options(tune)

    predict = _command(subparsers, "predict", "segment your own images: masks, labels, overlays, counts and a "
                                              "Kaggle submission",
                       ["predict my_images/", "predict runs/RUN/model.keras a.png b.tif \"scans/**/*.tif\""])
    predict.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                         help="a saved model (a .keras file; default: the ready model in models/), then image files "
                              "(PNG, TIFF, JPEG; gray, RGB or RGBA; 8 or 16 bit or float), folders or zips of them "
                              "(plain files or the DSB layout), or glob patterns ('scans/**/*.tif')")
    group = predict.add_argument_group("inputs")
    group.add_argument("--recursive", action="store_true", help="also segment the images in subfolders")
    group.add_argument("--channel", type=int, metavar="N",
                       help="the nuclear channel (0-based) of multichannel images, e.g. 2 for DAPI in the blue "
                            "channel of an RGB image (default: luminance of RGB; other multichannel images need it)")
    group.add_argument("--stack", choices=inputs.STACK_MODES, default="planes",
                       help="a z-stack or time series: segment every plane, or their maximum projection "
                            "(default: planes)")
    group.add_argument("--pixel-size", type=_pixel_size, metavar="UM",
                       help="micrometres per pixel of every image, in place of what its file says (TIFF resolution, "
                            "ImageJ or OME metadata); measurements get micrometre columns and label TIFFs the "
                            "calibration")
    group.add_argument("--diameter", type=_positive, metavar="D",
                       help="the typical nucleus diameter (micrometres where the pixel size is known, else pixels): "
                            "each image is zoomed to bring it to the model's training nuclei, in place of --scale")
    group.add_argument("--engine", choices=models.ENGINES, default="auto",
                       help="what the network runs on: 'int8' (the model's 8-bit copy, model.int8.onnx, on ONNX "
                            "Runtime: about 2x faster, labels close to but not the same as float32's), 'float32' "
                            "(ONNX Runtime where the model has an ONNX copy, model.onnx, and onnxruntime is "
                            "installed, else Keras), 'onnx', 'keras', or 'auto': 'int8' where the model has that copy "
                            "and the CPU has 8-bit dot products (AVX-512 VNNI, AVX-VNNI), else 'float32' "
                            "(default: auto)")
    group.add_argument("--max-pixels", type=_pixels, metavar="N", default=inputs.MAX_PIXELS,
                       help=f"skip files of more pixels than this (all planes), judged from their header before "
                            f"anything is decoded (default: {inputs.MAX_PIXELS:.0e})")
    predict.add_argument("--formats", default=",".join(outputs.DEFAULT_FORMATS), metavar="LIST",
                         help=f"comma-separated outputs per image, from {', '.join(outputs.FORMATS)} "
                              f"(default: {','.join(outputs.DEFAULT_FORMATS)})")
    _add_postprocessing_options(predict, "the model's postprocessing.json")
    _add_output_options(predict)

    export = _command(subparsers, "export", "export a saved model: for serving, a TensorFlow SavedModel whose "
                                            "'serve' endpoint maps tiles (batch, H, W, 1) float32 in [0, 1] to "
                                            "probabilities (batch, H, W, C): nuclei [, contacts]; to share, a "
                                            "float32 .keras file of any input size with its run's settings",
                      ["export runs/RUN/model.keras", "export runs/RUN/model.keras --format keras",
                       "export unet_dsb2018 --format bioimageio",
                       "export runs/RUN1/model.keras runs/RUN2/model.keras --format keras"])
    export.add_argument("model", type=Path, nargs="+", metavar="MODEL",
                        help=MODEL_HELP + "; several (trained on one split, e.g. with "
                             "different --seed): one model that predicts their average, to tune on CV afterwards")
    export.add_argument("--format", choices=sorted([*configuration.EXPORT_FORMATS, "keras", "bioimageio"]),
                        default="savedmodel",
                        help="export format (default: savedmodel; the run folder's '1/' is the version folder "
                             "TF Serving expects. keras: model.keras for every backend, with config.json, "
                             "postprocessing.json, clusters.json and split.csv. bioimageio: a bioimage.io model "
                             "package (for deepImageJ in Fiji, QuPath, ilastik), validated and tested)")
    _add_output_options(export)  # --quiet too, so that a script can pass it to every command
    return parser


# --------------------------------------------------------------------------------------------
# From options to the pipeline
# --------------------------------------------------------------------------------------------

def postprocessing_overrides(args: argparse.Namespace) -> dict:
    """The post-processing options given on the command line (``--marker-height 0`` means none)."""
    overrides = {name: getattr(args, name) for name in POSTPROCESSING_OPTIONS if getattr(args, name, None) is not None}
    if "marker_height" in overrides and overrides["marker_height"] <= 0:
        overrides["marker_height"] = None
    if "min_score" in overrides and overrides["min_score"] <= 0:
        overrides["min_score"] = None
    return overrides


def config_from_args(args: argparse.Namespace) -> configuration.TrainConfig:
    """The one place where training options become a ``TrainConfig``: the preset (with ``--init``, the
    'finetune' preset and the starting model's own network and post-processing), then the options given."""
    from nucleunet import hardware  # Keras: training needs it, predicting on ONNX Runtime does not

    base = {}
    if args.init is not None:
        preset = args.preset or "finetune"
        args.init = models.find_model(args.init)  # a ready model's name, or a .keras file
        start = models.TrainedModel.open(args.init)
        if start.config is not None:
            base = {name: getattr(start.config, name) for name in configuration.ARCHITECTURE}
        base.update({name: getattr(start.postprocessing, name) for name in configuration.POSTPROCESSING_FIELDS},
                    init=str(args.init))
    else:
        preset = hardware.choose_preset(args.preset)
    changes = {name: getattr(args, name) for name in TRAINING_OPTIONS if getattr(args, name) is not None}
    changes.update(postprocessing_overrides(args))
    if args.minutes is not None:
        changes["minutes"] = args.minutes or None  # 0: no time budget
    # The preset's length follows its precision on this machine; options given override both.
    values = hardware.for_this_machine({**hardware.for_this_machine({**configuration.PRESETS[preset], **base}),
                                        **changes})
    values = configuration.without_orphan_contact_weight(values, changes)
    return configuration.TrainConfig.from_dict({
        **values, "preset": preset, "seed": args.seed, "split": str(args.split or default_split(args.data)),
        "data": str(args.data) if args.data else None})


def model_and_inputs(items: list) -> tuple[Path | None, list]:
    """``predict``'s positional arguments: a model first if the first is a ``.keras`` file (else None: the ready
    model), then the inputs."""
    if items and str(items[0]).endswith(".keras"):
        if len(items) == 1:
            raise UserError(f"no images to segment: give them after the model {items[0]}")
        return Path(items[0]), list(items[1:])
    return None, list(items)


def report_segmented(done: batch.Batch) -> None:
    """What ``predict`` prints at the end: the nuclei per image, and the images skipped."""
    table = done.counts
    print(f"\nSegmented {len(table)} images: {int(table['nuclei'].sum())} nuclei in all, per image "
          f"min {table['nuclei'].min()}, median {table['nuclei'].median():.0f}, max {table['nuclei'].max()}")
    print(table.to_string(index=False, max_rows=20))
    if done.skipped:
        print(f"Skipped {len(done.skipped)} image(s) that could not be read, listed in skipped.json: "
              f"{', '.join(sorted(done.skipped))}")


def default_split(data: Path | None) -> Path:
    """Where a training run keeps its split when ``--split`` is not given: ``datasets/split.csv`` for the DSB
    training set, ``datasets/split-<name>.csv`` for another dataset (named after its folder or zip)."""
    if data is None:
        return dsb.DEFAULT_SPLIT_PATH
    return dsb.DATASETS_DIR / f"split-{Path(data).stem}.csv"


def run(args: argparse.Namespace) -> tuple[Path | None, int]:
    """Do what ``args.command`` asks; returns the run folder written (None on a non-chief worker) and the exit code:
    0, or ``SOME_SKIPPED`` when ``predict`` skipped some images."""
    progress = not getattr(args, "quiet", False)
    cache_dir = None if getattr(args, "no_cache", False) else getattr(args, "cache_dir", None)
    if getattr(args, "out", None) is not None:
        models.refuse_ready_model_folder(args.out, "--out")
    if args.command == "predict":
        model, images = model_and_inputs(args.inputs)
        model = load_model(model, engine=args.engine)
        overrides = postprocessing_overrides(args)
        if args.diameter is not None and "scale" in overrides:
            raise UserError("give --diameter or --scale, not both: the diameter sets each image's zoom")
        done = batch.segment_files(images, model, formats=[name for name in args.formats.split(",") if name],
                                   channel=args.channel, stack=args.stack, recursive=args.recursive,
                                   pixel_size=args.pixel_size, diameter=args.diameter, max_pixels=args.max_pixels,
                                   out=args.out, progress=progress, **overrides)
        report_segmented(done)
        return done.run_dir, SOME_SKIPPED if done.skipped else 0
    return _run_command(args, progress, cache_dir), 0


def _run_command(args: argparse.Namespace, progress: bool, cache_dir: Path | None) -> Path | None:
    if args.command in ("train", "resume", "export"):
        from nucleunet import pipeline  # Keras: only these commands load it at once
    if args.command == "train":
        return pipeline.train_run(config_from_args(args), args.out, cache_dir=cache_dir, progress=progress)
    if args.command == "resume":
        return pipeline.resume_run(args.run, data=args.data, cache_dir=cache_dir, progress=progress)
    if args.command == "evaluate":
        return evaluation.evaluate_run(models.find_model(args.model), data=args.data, split=args.split,
                                       subset=args.subset, overrides=postprocessing_overrides(args),
                                       figures_per_cluster=args.figures_per_cluster, perturb=args.perturb,
                                       out=args.out, cache_dir=cache_dir, progress=progress)
    if args.command == "tune":
        return tuning.tune_run(models.find_model(args.model), data=args.data, split=args.split, subset=args.subset,
                               tta=args.tta, scale=args.scale, extra_zooms=args.extra_zooms,
                               fit_score=args.fit_score, out=args.out, cache_dir=cache_dir, progress=progress)
    if args.command == "export":
        return pipeline.export_run([models.find_model(model) for model in args.model], export_format=args.format,
                                   out=args.out)
    raise AssertionError(f"unhandled command {args.command!r}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")  # a bare call, or options without a command, trains
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        run_dir, code = run(args)
    except UserError as error:  # what the user can fix: one line, no traceback
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return USER_ERROR
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("keras", "tensorflow"):
            raise
        print(f"error: {args.command} needs Keras and TensorFlow, which this Python does not have (predict with a "
              f"model that has its ONNX copy needs neither): pip install \"nucleunet[tensorflow]\"", file=sys.stderr)
        return USER_ERROR
    if run_dir is None:
        print("This worker's part of the training is done; the chief wrote the run folder.")
        return code
    outputs = sorted(path.name + ("/" if path.is_dir() else "") for path in run_dir.iterdir())
    print(f"Outputs are in {run_dir}/: {', '.join(outputs)}")
    return code


if __name__ == "__main__":
    sys.exit(main())

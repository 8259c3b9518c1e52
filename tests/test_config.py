"""config.py: the presets and the one configuration object of a training run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nucleunet import models, postprocessing
from nucleunet.config import PRESETS, TrainConfig
from nucleunet.errors import UserError


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        TrainConfig.from_preset(name)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge': choose from cpu, finetune, ready, seed, smoke"):
        TrainConfig.from_preset("huge")


def test_preset_overrides_ignore_options_not_given():
    config = TrainConfig.from_preset("cpu", batch_size=4, epochs=None)
    assert config.batch_size == 4 and config.epochs == PRESETS["cpu"]["epochs"]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({"preset": "cpu", "colour": "red"})


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("epochs", -1), ("learning_rate", 0.0),
                                          ("minutes", 0.0), ("loss", "mse"), ("threshold", 1.0),
                                          ("lr_schedule", "linear"), ("sampling", "cluster"), ("dropout", 1.0),
                                          ("min_overlap", 256), ("marker_height", -2.0), ("contact_radius", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict({"preset": "cpu", field: value})


def test_tile_size_must_fit_the_depth():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(depth-1\\) = 16"):
        TrainConfig(preset="cpu", tile_size=200, depth=5)


def test_config_round_trips_through_its_file(tmp_path):
    config = TrainConfig.from_preset("cpu", seed=3)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_postprocessing_comes_from_the_config_fields():
    config = TrainConfig.from_preset("cpu")
    assert models.starting_postprocessing(config) == postprocessing.Postprocessing(
        threshold=config.threshold, min_size=config.min_size, marker_height=config.marker_height,
        contact_threshold=config.contact_threshold, tta=config.tta)


def test_the_config_and_the_post_processing_start_from_the_same_defaults():
    config, settings = TrainConfig(preset="seed"), postprocessing.Postprocessing()
    for name in ("threshold", "min_size", "marker_height", "contact_threshold", "tta"):
        assert getattr(config, name) == getattr(settings, name), name


def test_a_saved_config_with_a_removed_key_still_loads(tmp_path):
    config = TrainConfig.from_preset("cpu", seed=3)
    (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), "min_size_relative": None}))
    assert TrainConfig.load(tmp_path / "config.json") == config
    # Options rejected on the leave-one-cluster-out measure: the committed run files that used them load.
    removed = {"colour_variants": 4, "cores": True, "cytoplasm": 0.3, "touch_crops": 0.5, "acquisition": 0.15,
               "distance": True, "texture": 0.3}
    (tmp_path / "config.json").write_text(json.dumps({**config.to_dict(), **removed}))
    assert TrainConfig.load(tmp_path / "config.json") == config
    kept = Path(__file__).resolve().parents[1] / "docs" / "results" / "leave-cluster-out"
    for path in sorted(kept.glob("*/cluster*/config.json")):
        assert TrainConfig.load(path).preset == "cpu"
    with pytest.raises(UserError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": True})


def test_the_config_module_is_a_leaf_that_neither_segments_nor_imports_keras():
    """config is read before any backend starts (the command line checks its options with it)."""
    finished = subprocess.run([sys.executable, "-c", "import sys; import nucleunet.config; print(sorted(m for m in "
                               "('keras', 'tensorflow', 'nucleunet.postprocessing', 'nucleunet.prediction', 'dsb') "
                               "if m in sys.modules))"], capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "[]"


def test_contact_weight_needs_the_contact_channel():
    with pytest.raises(UserError, match="at least 1"):
        TrainConfig.from_preset("cpu", contact_weight=0.5)
    with pytest.raises(UserError, match="needs contacts"):
        TrainConfig.from_preset("cpu", contact_weight=5.0, contacts=False)
    with pytest.raises(UserError, match="needs contacts"):
        TrainConfig.from_preset("seed", contact_weight=5.0)  # plain BCE, one channel
    assert TrainConfig.from_preset("cpu", contact_weight=5.0).contact_weight == 5.0
    # the presets weigh contact pixels 5 times (adopted by the leave-one-cluster-out measure); a preset asked for
    # without its contact channel, or with another loss, drops the weight with it instead of refusing
    assert TrainConfig.from_preset("cpu").contact_weight == TrainConfig.from_preset("ready").contact_weight == 5.0
    assert TrainConfig.from_preset("cpu", contacts=False).contact_weight == 1.0
    assert TrainConfig.from_preset("cpu", loss="bce").contact_weight == 1.0
    assert TrainConfig.from_preset("cpu", contact_weight=1.0).contact_weight == 1.0

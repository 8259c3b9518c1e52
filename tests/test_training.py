"""training.py: batches, callbacks, leakage, determinism, NaN, and a tiny model that learns."""

from __future__ import annotations

import json
import time

import keras
import numpy as np
import pandas as pd
import pytest

import dsb
import unet
from nucleunet import hardware, stratify, tiling, training
from nucleunet.config import TrainConfig


def _config(**overrides) -> TrainConfig:
    values = dict(preset="smoke", epochs=2, steps_per_epoch=2, batch_size=2, depth=2, base_filters=2,
                  tile_size=64, min_overlap=16, learning_rate=1e-3, loss="bce_dice")
    return TrainConfig.from_dict({**values, **overrides})


def _records_and_split(synthetic_folder):
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    ids = [r.image_id for r in records]
    subsets = ["train"] * 8 + ["cv"] * 2 + ["test"] * 2
    return records, pd.DataFrame({"image_id": ids, "cluster": [0] * len(ids), "subset": subsets})


def _sequence(count=10, size=16, **overrides) -> training.TileBatches:
    rng = np.random.default_rng(0)
    masks = (rng.random((count, size, size)) > 0.5).astype(np.uint8)
    images = masks.astype(np.float16)  # image equal to mask: augmentation must keep them aligned
    values = dict(preset="smoke", batch_size=4, steps_per_epoch=3, seed=1, depth=2, tile_size=size, min_overlap=4)
    return training.TileBatches(images, masks, TrainConfig.from_dict({**values, **overrides}))


# ---- batches -------------------------------------------------------------------------------

def test_dihedral_gives_eight_distinct_transforms():
    square = np.arange(9).reshape(3, 3)
    assert len({training.dihedral(square, k).tobytes() for k in range(8)}) == 8


def test_batches_keep_images_and_masks_aligned():
    x, y = _sequence()[0]
    assert x.shape == y.shape == (4, 16, 16, 1) and x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x, y)


def test_batches_are_reproducible_and_change_between_epochs():
    first, second = _sequence(), _sequence()
    np.testing.assert_array_equal(first[1][0], second[1][0])
    before = first[1][0].copy()
    first.epoch = 1
    assert not np.array_equal(first[1][0], before)
    assert not np.array_equal(_sequence(seed=2)[1][0], before)


def test_target_channels_unpack_the_stored_bits():
    stored = np.array([[0, 1, 2, 3]], np.uint8)
    assert training.target_channels(stored, contacts=False)[..., 0].tolist() == [[0, 1, 0, 1]]
    both = training.target_channels(stored, contacts=True)
    assert both.shape == (1, 4, 2) and both.dtype == np.float32
    assert both[..., 0].tolist() == [[0, 1, 0, 1]] and both[..., 1].tolist() == [[0, 0, 1, 1]]


def test_validation_batches_cover_every_cv_tile_once_in_order():
    rng = np.random.default_rng(0)
    images = rng.random((11, 8, 8)).astype(np.float16)
    masks = rng.integers(0, 4, (11, 8, 8)).astype(np.uint8)
    sequence = training.ValidationBatches(images, masks, 4, contacts=True)
    batches = [sequence[i] for i in range(len(sequence))]
    assert [len(x) for x, _ in batches] == [4, 4, 3]
    x = np.concatenate([x for x, _ in batches])
    y = np.concatenate([y for _, y in batches])
    assert x.dtype == y.dtype == np.float32 and x.shape == (11, 8, 8, 1) and y.shape == (11, 8, 8, 2)
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32))
    np.testing.assert_array_equal(y, training.target_channels(masks, contacts=True))


def test_each_epoch_draws_its_own_batches(synthetic_folder):
    records, split = _records_and_split(synthetic_folder)
    tiles = training.prepare_training_data(records, split, _config())
    events = []

    class Recorded(training.TileBatches):
        def __getitem__(self, index):
            events.append((self.epoch, index))
            return super().__getitem__(index)

    class MarkStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("start")

    sequence = Recorded(tiles.train_images, tiles.train_masks, _config())
    model = unet.build_unet((64, 64, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(sequence, epochs=3, initial_epoch=1, callbacks=[training.SetEpoch(sequence), MarkStart()], verbose=0)
    # Keras peeks at batches for their shapes before training starts; those are not trained on.
    trained = events[events.index("start") + 1:]
    assert sorted(trained) == [(1, 0), (1, 1), (2, 0), (2, 1)]


# ---- leakage and determinism ---------------------------------------------------------------

def test_no_test_image_or_tile_reaches_training_or_cv(synthetic_folder):
    records, split = _records_and_split(synthetic_folder)
    marker = np.float32(0.123)  # a value no real tile holds: test images are filled with it
    test_ids = set(split.loc[split["subset"] == "test", "image_id"])
    for record in records:
        if record.image_id in test_ids:
            record.image[:] = marker
    tiles = training.prepare_training_data(records, split, _config())
    assert not set(tiles.train_ids) & test_ids and not set(tiles.cv_ids) & test_ids
    assert set(tiles.train_ids) == set(split.loc[split["subset"] == "train", "image_id"])
    assert set(tiles.cv_ids) == set(split.loc[split["subset"] == "cv", "image_id"])
    for images in (tiles.train_images, tiles.cv_images):
        assert not np.any(np.isclose(images.astype(np.float32), marker, atol=1e-4))
    sequence = training.TileBatches(tiles.train_images, tiles.train_masks, _config(steps_per_epoch=20))
    for index in range(len(sequence)):
        assert not np.any(np.isclose(sequence[index][0], marker, atol=1e-4))


def test_same_seed_gives_the_same_split_and_tiles(tmp_path, synthetic_folder):
    runs = []
    for attempt in range(2):
        records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
        stats = stratify.image_statistics(records)
        split = stratify.load_or_make_split(stats, tmp_path / f"split{attempt}.csv", seed=3, n_clusters=2)
        runs.append((split, training.prepare_training_data(records, split, _config())))
    pd.testing.assert_frame_equal(runs[0][0], runs[1][0])
    for name in ("train_images", "train_masks", "cv_images", "cv_masks"):
        np.testing.assert_array_equal(getattr(runs[0][1], name), getattr(runs[1][1], name))


# ---- callbacks -----------------------------------------------------------------------------

def test_cosine_schedule_decays_to_zero_over_the_run():
    config = TrainConfig.from_dict({"preset": "cpu", "learning_rate": 1e-3, "epochs": 4, "steps_per_epoch": 10,
                                    "lr_schedule": "cosine"})
    schedule = training.learning_rate_schedule(config)
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)
    assert training.learning_rate_schedule(TrainConfig.from_dict({"preset": "cpu", "learning_rate": 1e-3})) == 1e-3


def test_time_budget_stops_training_early():
    model = unet.build_unet((16, 16, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    budget = training.TimeBudget(minutes=0.5 / 60)
    history = model.fit(_sequence(steps_per_epoch=100000), epochs=3, callbacks=[budget], verbose=0)
    assert budget.stopped and len(history.history["loss"]) == 1


def test_throughput_times_the_steps_after_the_first():
    rng = np.random.default_rng(0)
    masks = (rng.random((8, 16, 16)) > 0.5).astype(np.uint8)
    config = TrainConfig(preset="smoke", batch_size=4, steps_per_epoch=5, depth=2, tile_size=16, min_overlap=4)
    model = unet.build_unet((16, 16, 1), depth=2, base_filters=2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    throughput = training.Throughput(config.batch_size)
    started = time.monotonic()
    model.fit(training.TileBatches(masks.astype(np.float16), masks, config), epochs=1, verbose=0,
              callbacks=[throughput])
    seconds = time.monotonic() - started
    assert throughput.steps == 5
    assert throughput.steps_per_second >= 4 / seconds  # 4 steps timed, within the whole fit
    assert throughput.tiles_per_second == pytest.approx(throughput.steps_per_second * 4)


def test_training_path_learns_synthetic_nuclei(synthetic_folder):
    """A tiny U-Net on bright disks reaches a high validation Dice through our sequence in seconds."""
    records = dsb.load_dataset(synthetic_folder, cache_dir=None, workers=1, progress=False)
    images, masks, _ = tiling.tiles_for_records(records, 64, 16)
    config = TrainConfig.from_dict(dict(preset="smoke", batch_size=8, steps_per_epoch=40, seed=0, depth=3,
                                        base_filters=8, batch_norm=True, loss="bce_dice", learning_rate=3e-3,
                                        tile_size=64, min_overlap=16, contacts=False))
    keras.utils.set_random_seed(0)
    model = unet.build_unet((64, 64, 1), depth=3, base_filters=8, batch_norm=True)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=unet.bce_dice_loss, metrics=[unet.DiceCoefficient()])
    model.fit(training.TileBatches(images, masks, config), epochs=3, verbose=0)
    dice = model.evaluate(images[..., None].astype(np.float32), masks[..., None].astype(np.float32),
                          verbose=0, return_dict=True)["dice"]
    assert dice > 0.8


# ---- NaN -----------------------------------------------------------------------------------

def _loss_nan_from_step(monkeypatch, step: int) -> None:
    """Make the training loss NaN from optimizer step ``step`` on (0: the first), on any CPU.

    A NaN fed in as pixels is not enough: TensorFlow's oneDNN kernels fuse convolution and ReLU, and
    on CPUs where TensorFlow turns them on (those with AVX-512 VNNI or BF16) that fused ReLU turns a
    NaN input into 0, so the loss stays finite. A product with NaN is NaN on every instruction set,
    and its gradient makes the weights NaN as a real divergence would.
    """
    original = training.build_model

    def build_model(config):
        model = original(config)
        base_loss, iterations = model.loss, model.optimizer.iterations

        def loss(y_true, y_pred):
            factor = keras.ops.where(keras.ops.greater_equal(iterations, step), float("nan"), 1.0)
            return base_loss(y_true, y_pred) * factor

        model.compile(optimizer=model.optimizer, loss=loss, metrics=[unet.DiceCoefficient()])
        return model

    monkeypatch.setattr(training, "build_model", build_model)


def test_nan_loss_before_any_checkpoint_is_a_clear_error(synthetic_folder, tmp_path, monkeypatch):
    records, split = _records_and_split(synthetic_folder)
    _loss_nan_from_step(monkeypatch, 0)
    with pytest.raises(ValueError, match="the loss became NaN in epoch 1, before any model was saved"):
        training.train(_config(), tmp_path, training.prepare_training_data(records, split, _config()), progress=False)
    assert not (tmp_path / "model.keras").exists()


def test_nan_loss_later_keeps_the_last_good_checkpoint(synthetic_folder, tmp_path, monkeypatch):
    records, split = _records_and_split(synthetic_folder)
    _loss_nan_from_step(monkeypatch, 2)  # two steps per epoch: epoch 1 is finite, epoch 2 is not
    checkpoint = training.train(_config(epochs=4), tmp_path, training.prepare_training_data(records, split, _config()),
                                progress=False)
    assert checkpoint.exists()
    assert json.loads((tmp_path / "training.json").read_text())["stopped_by_nan_loss"] is True
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 0
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2  # epoch 2 ran, and stopped training
    weights = unet.load_model(checkpoint).get_weights()
    assert all(np.isfinite(w).all() for w in weights)


# ---- crops of whole images, precision, XLA ----------------------------------------------------

def test_crop_batches_keep_images_and_targets_aligned_at_every_scale():
    rows, cols = np.indices((100, 140))
    labels = np.zeros((100, 140), np.int32)
    labels[((rows - 50) ** 2 + (cols - 40) ** 2) < 15**2] = 1
    labels[((rows - 50) ** 2 + (cols - 95) ** 2) < 15**2] = 2
    image = (labels > 0).astype(np.float16)
    config = TrainConfig.from_dict(dict(preset="smoke", sampling="crop", crop_size=32, batch_size=6, seed=2,
                                        depth=2, scale_range=(0.5, 2.0), contacts=True, steps_per_epoch=4))
    batches = training.CropBatches([("a", image, labels)], config)
    x, y = batches[0]
    assert x.shape == (6, 32, 32, 1) and y.shape == (6, 32, 32, 2) and x.dtype == y.dtype == np.float32
    # Labels by nearest neighbour, the image linearly: they may differ only on the nuclei's edges.
    assert np.mean((x[..., 0] > 0.5) != (y[..., 0] > 0.5)) < 0.03
    np.testing.assert_array_equal(batches[0][0], x)  # batch i of epoch e depends only on (seed, e, i)
    batches.epoch = 1
    assert not np.array_equal(batches[0][0], x)


def test_crop_batches_apply_the_intensity_changes():
    image = np.full((64, 64), 0.5, np.float16)
    plain = TrainConfig.from_dict(dict(preset="smoke", sampling="crop", crop_size=32, depth=2, batch_size=4))
    noisy = TrainConfig.from_dict({**plain.to_dict(), "noise": 0.2})
    whole = [("a", image, np.zeros((64, 64), np.uint16))]
    assert np.all(training.CropBatches(whole, plain)[0][0] == 0.5)
    assert np.std(training.CropBatches(whole, noisy)[0][0]) > 0.01


def test_crop_sampling_keeps_whole_training_images_and_cv_tiles(synthetic_folder):
    records, split = _records_and_split(synthetic_folder)
    data = training.prepare_training_data(records, split, _config(sampling="crop", crop_size=32))
    assert len(data.train_images) == 0 and len(data.cv_images) > 0
    train_ids = set(split.loc[split["subset"] == "train", "image_id"])
    assert {image_id for image_id, _, _ in data.whole} == train_ids
    assert all(image.dtype == np.float16 and image.shape == labels.shape for _, image, labels in data.whole)


def test_a_model_trained_on_small_crops_predicts_whole_tiles(synthetic_folder, tmp_path):
    records, split = _records_and_split(synthetic_folder)
    config = _config(sampling="crop", crop_size=32, scale_range=(0.7, 1.4), gamma_range=(0.8, 1.2), noise=0.02)
    checkpoint = training.train(config, tmp_path, training.prepare_training_data(records, split, config),
                                progress=False)
    model = unet.load_model(checkpoint)
    assert model.input_shape[1:3] == (None, None)
    assert model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0).shape == (1, 64, 64, 1)


def test_warmup_rises_to_the_learning_rate_then_decays():
    config = TrainConfig.from_dict({"preset": "cpu", "learning_rate": 1e-3, "epochs": 2, "steps_per_epoch": 60,
                                    "lr_schedule": "cosine", "warmup_steps": 20})
    schedule = training.learning_rate_schedule(config)
    assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(10)) == pytest.approx(5e-4, rel=1e-3)
    assert float(schedule(20)) == pytest.approx(1e-3, rel=1e-3)
    assert float(schedule(120)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("flags, precision, jit", [
    ({"avx2", "fma"}, "float32", True),
    ({"avx2", "avx512f", "avx512_bf16"}, "mixed_bfloat16", False),
    ({"avx2", "avx512f", "amx_bf16"}, "mixed_bfloat16", False),
    ({"avx2", "avx512f"}, "float32", False),
])
def test_auto_choices_follow_the_cpu(monkeypatch, flags, precision, jit):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "detect_accelerator", lambda: None)
    assert hardware.choose_precision("auto") == precision and hardware.choose_jit_compile("auto") is jit
    assert hardware.choose_precision("float32") == "float32" and hardware.choose_jit_compile(True) is True


def test_mixed_precision_trains_and_leaves_the_global_policy_as_it_was(synthetic_folder, tmp_path):
    records, split = _records_and_split(synthetic_folder)
    config = _config(precision="mixed_bfloat16", epochs=1)
    training.train(config, tmp_path, training.prepare_training_data(records, split, config), progress=False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert json.loads((tmp_path / "training.json").read_text())["precision"] == "mixed_bfloat16"
    model = unet.load_model(tmp_path / "model.keras")
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16" and model.output.dtype == "float32"


# ---- fine-tuning from a saved model -----------------------------------------------------------------

def test_a_model_built_from_init_starts_from_its_weights(tmp_path):
    start = unet.build_unet((64, 64, 1), depth=2, base_filters=2, output_channels=2, batch_norm=True)
    start.save(tmp_path / "start.keras")
    config = _config(init=str(tmp_path / "start.keras"), contacts=True, batch_norm=True)
    model = training.build_model(config)
    for mine, theirs in zip(model.get_weights(), start.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match="has 2 output channel"):
        training.build_model(_config(init=str(tmp_path / "start.keras"), contacts=False))


def test_a_preset_length_follows_the_precision_chosen_for_this_machine(monkeypatch):
    monkeypatch.setattr(hardware, "detect_accelerator", lambda: None)
    preset = {"precision": "auto", "jit_compile": "auto", "length": {"mixed_bfloat16": (7, 100), "float32": (5, 60)}}
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert hardware.for_this_machine(preset) == {"precision": "mixed_bfloat16", "jit_compile": False, "epochs": 7,
                                                 "steps_per_epoch": 100}
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "fma"})
    assert hardware.for_this_machine(preset) == {"precision": "float32", "jit_compile": True, "epochs": 5,
                                                 "steps_per_epoch": 60}


def test_a_contact_weighted_loss_trains_and_its_model_loads(synthetic_folder, tmp_path):
    records, split = _records_and_split(synthetic_folder)
    config = _config(contacts=True, contact_weight=5.0)
    model = training.build_model(config)
    assert isinstance(model.loss, unet.ContactWeightedLoss) and model.loss.weight == 5.0
    checkpoint = training.train(config, tmp_path, training.prepare_training_data(records, split, config),
                                progress=False)
    assert unet.load_model(checkpoint).output_shape[-1] == 2
    assert np.isfinite(pd.read_csv(tmp_path / "history.csv")["loss"]).all()

"""inputs.py: which images a prediction segments, under which names, and which planes and channels of them."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest
import skimage.io
import tifffile

from nucleunet import inputs


def _png(path, value=10, shape=(8, 9)):
    path.parent.mkdir(parents=True, exist_ok=True)
    skimage.io.imsave(path, np.full(shape, value, np.uint8), check_contrast=False)
    return path


def test_plain_folder_lists_image_files_by_name(tmp_path):
    for name in ["b.tif", "a.png", "c.JPG", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [item.key for item in inputs.list_inputs([tmp_path])[0]] == ["a", "b", "c"]


def test_dsb_folder_lists_its_images_by_id(synthetic_folder):
    found = inputs.list_inputs([synthetic_folder])[0]
    assert len(found) == 12 and found[0].key == "img00" and found[0].path.name == "img00.png"


def test_subfolders_are_searched_only_when_asked_and_keep_their_relative_paths(tmp_path, caplog):
    _png(tmp_path / "top.png")
    _png(tmp_path / "plate 1" / "wéll A.png")
    _png(tmp_path / "plate 1" / "deeper" / "x.tif")
    with caplog.at_level(logging.WARNING, logger="inputs"):
        assert [item.key for item in inputs.list_inputs([tmp_path])[0]] == ["top"]
    assert "1 subfolder(s) not searched (plate 1); pass --recursive" in caplog.text
    keys = [item.key for item in inputs.list_inputs([tmp_path], recursive=True)[0]]
    assert keys == ["plate 1/deeper/x", "plate 1/wéll A", "top"]


def test_zip_and_glob_inputs(tmp_path):
    a, b = _png(tmp_path / "scans" / "a.png"), _png(tmp_path / "scans" / "sub" / "b.png")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.write(a, "set/a.png")
        archive.write(b, "set/sub/b.png")
        archive.writestr("set/readme.txt", "not an image")
    zipped = inputs.list_inputs([tmp_path / "images.zip"])[0]
    assert [(item.key, item.member) for item in zipped] == [("set/a", "set/a.png"), ("set/sub/b", "set/sub/b.png")]
    assert inputs.read_input(zipped[1])[0].shape == (8, 9)
    globbed = inputs.list_inputs([str(tmp_path / "scans" / "**" / "*.png")])[0]
    assert [item.key for item in globbed] == ["a", "sub/b"]


def test_inputs_that_would_share_outputs_are_skipped_all_but_the_first(tmp_path):
    for name in ["a.png", "a.tif", "B.png", "b.tif"]:
        (tmp_path / name).write_bytes(b"")
    images, skipped = inputs.list_inputs([tmp_path])
    assert [item.key for item in images] == ["B", "a"]
    assert sorted(skipped) == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    assert "its outputs would be named 'a', as those of" in skipped[str(tmp_path / "a.tif")]


@pytest.mark.parametrize("make, message", [
    (lambda path: path / "missing.png", "input not found"),
    (lambda path: path, "no images"),
    (lambda path: str(path / "*.png"), "no image files match"),
])
def test_nothing_to_segment_is_an_error(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        inputs.list_inputs([make(tmp_path)])


def test_tiff_axes_are_read(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 9), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "channels.tif", np.zeros((2, 8, 9), np.uint16), imagej=True,
                     metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    axes = {name: inputs.read_input(inputs.InputImage(name, tmp_path / f"{name}.tif"))[1]
            for name in ("stack", "channels", "rgb")}
    assert axes == {"stack": "ZYX", "channels": "CYX", "rgb": "YXS"}


def test_a_file_that_is_not_an_image_is_a_user_error(tmp_path):
    (tmp_path / "fake.tif").write_bytes(b"II*\x00 this is no tiff")
    with pytest.raises(ValueError, match="fake.tif: not a readable TIFF"):
        inputs.read_input(inputs.InputImage("fake", tmp_path / "fake.tif"))


def test_stack_planes_or_maximum_projection():
    stack = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    planes = inputs.planes(stack, "ZYX")
    assert [suffix for suffix, _ in planes] == ["_z000", "_z001", "_z002"]
    np.testing.assert_array_equal(planes[1][1], stack[1])
    ((suffix, projection),) = inputs.planes(stack, "ZYX", stack="max")
    assert suffix == "" and np.array_equal(projection, stack[2])


def test_channel_first_and_channel_last_images_give_the_chosen_channel():
    planes_first = np.stack([np.zeros((4, 5)), np.ones((4, 5)) * 7])
    assert np.all(inputs.planes(planes_first, "CYX", channel=1)[0][1] == 7)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 2] = 200  # DAPI in blue
    assert np.all(inputs.planes(rgb, "YXS", channel=2)[0][1] == 200)
    assert inputs.planes(rgb, "YXS")[0][1].shape == (4, 5, 3)  # without --channel: kept for luminance


@pytest.mark.parametrize("raw, axes, channel, message", [
    (np.zeros((2, 4, 5)), "CYX", None, "2 channels; pass --channel N"),
    (np.zeros((4, 5, 3)), "YXS", 3, "--channel 3 but the image has 3 channel"),
    (np.zeros((4, 5)), "YX", 1, "--channel 1 but the image has one channel"),
])
def test_channels_that_cannot_be_chosen_are_user_errors(raw, axes, channel, message):
    with pytest.raises(ValueError, match=message):
        inputs.planes(raw, axes, channel=channel)


def test_time_and_z_with_channels_give_every_plane_of_the_channel():
    raw = np.zeros((2, 3, 2, 4, 5))  # T, Z, C, Y, X
    raw[:, :, 1] = 5
    planes = inputs.planes(raw, "TZCYX", channel=1)
    assert len(planes) == 6 and all(np.all(image == 5) and image.shape == (4, 5) for _, image in planes)

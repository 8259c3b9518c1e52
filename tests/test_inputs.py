"""inputs.py: which images a prediction segments."""

from __future__ import annotations

import pytest

import inputs


def test_find_images_in_plain_and_dsb_folders(tmp_path, synthetic_folder):
    (tmp_path / "plain").mkdir()
    for name in ["b.tif", "a.png", "c.JPG", ".hidden.png", "notes.txt"]:
        (tmp_path / "plain" / name).write_bytes(b"")
    assert [image_id for image_id, _ in inputs.find_images(tmp_path / "plain")] == ["a", "b", "c"]
    found = inputs.find_images(synthetic_folder)
    assert len(found) == 12 and found[0][1].name == "img00.png"


def test_find_images_rejects_two_files_with_one_name(tmp_path):
    for name in ["a.png", "a.tif"]:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="several files share the name 'a'"):
        inputs.find_images(tmp_path)


def test_find_images_in_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        inputs.find_images(tmp_path)

"""outputs.py: what predict writes, read back by the tools that open it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.io

from nucleunet import outputs

from conftest import disk_labels

# ---- RLE -----------------------------------------------------------------------------------

def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode a binary mask as Kaggle does, one whole mask at a time: the reference that
    ``outputs.submission_rows`` (which encodes each nucleus from its bounding box) is checked against.

    Pixels are numbered from 1, top to bottom then left to right (column-major); the result
    is ``"start length start length ..."`` with ascending starts.
    """
    pixels = np.asarray(mask).astype(bool).T.ravel()
    padded = np.concatenate([[False], pixels, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    starts, ends = changes[::2], changes[1::2]
    return " ".join(f"{start} {end - start}" for start, end in zip(starts, ends))


def test_rle_known_example_by_hand():
    mask = np.zeros((3, 4), bool)
    mask[1:3, 0] = True  # column 0, rows 1-2: pixels 2, 3
    mask[0, 1] = True    # column 1, row 0: pixel 4 -> one run 2..4
    mask[2, 3] = True    # column 3, row 2: pixel 12
    assert rle_encode(mask) == "2 3 12 1"
    np.testing.assert_array_equal(outputs.rle_decode("2 3 12 1", (3, 4)), mask)


def test_rle_round_trip_on_random_label_images():
    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(1, 40, 2))
        labels = rng.integers(0, 4, shape)
        rows = outputs.submission_rows("x", labels)
        rebuilt = np.zeros(shape, np.int64)
        for (image_id, rle), value in zip(rows, [v for v in np.unique(labels) if v] or [0]):
            assert image_id == "x"
            if rle:
                rebuilt[outputs.rle_decode(rle, shape)] = value
        np.testing.assert_array_equal(rebuilt, labels)


def test_submission_rows_encode_each_nucleus_as_its_whole_image_mask_would():
    rng = np.random.default_rng(2)
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(1, 30, 2))
        labels = rng.integers(0, 6, shape) * (rng.random(shape) < 0.8)
        labels[:, : shape[1] // 2] = 7  # a nucleus whose runs go on from the bottom of a column to the next
        expected = [("y", rle_encode(labels == value)) for value in np.unique(labels) if value]
        assert outputs.submission_rows("y", labels) == expected


def test_rle_of_an_empty_mask_is_empty_and_empty_image_gets_one_row():
    assert rle_encode(np.zeros((4, 4))) == ""
    assert outputs.submission_rows("e", np.zeros((4, 4), int)) == [("e", "")]


@pytest.mark.parametrize("rle", ["1", "5 2 1 2", "0 3", "15 5"])
def test_rle_decode_rejects_bad_runs(rle):
    with pytest.raises(ValueError):
        outputs.rle_decode(rle, (4, 4))


def test_labels_csv_round_trip(tmp_path):
    labels = disk_labels((30, 40), [(10, 10), (20, 30)], 5)
    path = tmp_path / "labels.csv"
    outputs.write_submission(path, outputs.submission_rows("a", labels) + outputs.submission_rows("b", labels * 0))
    read = outputs.read_labels_csv(path, shapes={"a": (30, 40), "b": (30, 40)})
    np.testing.assert_array_equal(read["a"], labels)
    assert read["b"].max() == 0


def test_labels_csv_with_height_and_width_columns(tmp_path):
    path = tmp_path / "solution.csv"
    path.write_text("ImageId,EncodedPixels,Height,Width,Usage\na,1 2,2,2,Public\n")
    np.testing.assert_array_equal(outputs.read_labels_csv(path)["a"], [[1, 0], [1, 0]])


def test_labels_csv_without_shapes_is_an_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("ImageId,EncodedPixels\na,1 2\n")
    with pytest.raises(ValueError, match="no Height/Width for a"):
        outputs.read_labels_csv(path)


# ---- formats that Fiji, napari and QuPath open ------------------------------------------------

import json  # noqa: E402

import pandas as pd  # noqa: E402
import roifile  # noqa: E402
import shapely.geometry  # noqa: E402
import skimage.draw  # noqa: E402
import skimage.measure  # noqa: E402
import tifffile  # noqa: E402


def _nuclei(shape=(120, 160), seed=0, count=12):
    """Label image of ellipses of several sizes, some touching, and an intensity image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for label in range(1, count + 1):
        centre = rng.integers(10, np.array(shape) - 10)
        rr, cc = skimage.draw.ellipse(*centre, rng.integers(4, 12), rng.integers(4, 12), shape=shape,
                                      rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = label
    labels = skimage.segmentation.relabel_sequential(labels)[0]
    intensity = (rng.random(shape) * 1000).astype(np.uint16) + (labels > 0) * 3000
    return labels, intensity


import skimage.segmentation  # noqa: E402


def test_label_tiff_reads_back_identical(tmp_path):
    labels, _ = _nuclei()
    outputs.write_label_tiff(tmp_path / "labels.tif", labels)
    back = tifffile.imread(tmp_path / "labels.tif")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_label_tiff_is_32_bit_above_65535_nuclei(tmp_path):
    labels = np.arange(70_000, dtype=np.int32).reshape(200, 350)
    outputs.write_label_tiff(tmp_path / "many.tif", labels)
    back = tifffile.imread(tmp_path / "many.tif")
    assert back.dtype == np.uint32 and np.array_equal(back, labels)


def test_roi_zip_rasterised_matches_every_nucleus(tmp_path):
    labels, _ = _nuclei()
    assert outputs.write_roi_zip(tmp_path / "rois.zip", labels) == labels.max()
    rois = roifile.roiread(tmp_path / "rois.zip")
    assert sorted(int(roi.name) for roi in rois) == list(range(1, labels.max() + 1))
    for roi in rois:
        points = roi.coordinates()  # (x, y)
        drawn = np.zeros(labels.shape, bool)
        rr, cc = skimage.draw.polygon(points[:, 1], points[:, 0], shape=labels.shape)
        drawn[rr, cc] = True
        truth = labels == int(roi.name)
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou >= 0.9, (roi.name, iou)


def test_geojson_parses_into_valid_polygons_whose_areas_match(tmp_path):
    labels, intensity = _nuclei()
    table = outputs.measure(labels, intensity)
    outputs.write_geojson(tmp_path / "nuclei.geojson", labels, table)
    collection = json.loads((tmp_path / "nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == labels.max()
    areas = dict(zip(table["label"], table["area"]))
    for feature in collection["features"]:
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and feature["properties"]["objectType"] == "detection"
        label = int(feature["properties"]["name"])
        assert polygon.area == pytest.approx(areas[label], rel=0.2, abs=6)
        assert feature["properties"]["measurements"]["area"] == areas[label]


def test_measurements_equal_regionprops(tmp_path):
    labels, intensity = _nuclei()
    table = outputs.measure(labels, intensity)
    props = skimage.measure.regionprops(labels, intensity_image=intensity)
    assert list(table.columns) == ["label", "centroid_row", "centroid_col", "area", "perimeter", "equivalent_diameter",
                                   "eccentricity", "solidity", "mean_intensity", "max_intensity"]
    for row, region in zip(table.itertuples(), props):
        assert row.label == region.label and row.area == region.area
        assert (row.centroid_row, row.centroid_col) == pytest.approx(region.centroid)
        assert row.perimeter == pytest.approx(region.perimeter) and row.solidity == pytest.approx(region.solidity)
        assert row.mean_intensity == pytest.approx(region.intensity_mean) and row.max_intensity == region.intensity_max


def _regionprops_table(labels, intensity=None) -> pd.DataFrame:
    """scikit-image's own measurements, one nucleus at a time: what ``outputs.measure`` must equal."""
    names = ["label", "centroid", "area", "perimeter", "equivalent_diameter_area", "eccentricity", "solidity"]
    if intensity is not None:
        names += ["intensity_mean", "intensity_max"]
    return pd.DataFrame(skimage.measure.regionprops_table(labels, intensity_image=intensity, properties=names))


def _awkward_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Labels over more than two of measure's bands (1,100 rows): nuclei crossing the band borders, touching each
    other and the image's edges, a single pixel, a one-pixel line, a ring, a nucleus in two pieces, circles (whose
    eccentricity is exactly 0), label numbers without pixels; and an RGB float image with a NaN pixel."""
    rng = np.random.default_rng(3)
    shape = (1100, 90)
    labels = np.zeros(shape, np.int32)
    for label, row in enumerate(range(5, 1100, 37), start=2):
        rr, cc = skimage.draw.ellipse(row, rng.integers(0, 90), rng.integers(3, 25), rng.integers(3, 25), shape=shape,
                                      rotation=rng.uniform(0, np.pi))
        labels[rr, cc] = label
    labels[500:530, 40:70] = 90  # across the border between the first two bands, at rows 510-514
    labels[507, 10] = 91
    labels[600, 0:40] = 92
    rr, cc = skimage.draw.disk((700, 45), 12)
    labels[rr, cc] = 93
    labels[695:706, 40:51] = 0  # a hole: a ring
    labels[800:805, 0:5] = labels[800:805, 80:85] = 94
    rr, cc = skimage.draw.disk((1060, 45), 9.5)
    labels[rr, cc] = 96
    labels[-1, :] = 97
    intensity = rng.random(shape + (3,)).astype(np.float32) * 100
    intensity[702, 0] = intensity[rr[0], cc[0], 1] = np.nan
    return labels, intensity


@pytest.mark.parametrize("channels", [None, "gray", "rgb"])
def test_measurements_equal_regionprops_on_awkward_nuclei(channels):
    labels, colour = _awkward_nuclei()
    intensity = {None: None, "gray": (np.nan_to_num(colour[..., 0]) * 50).astype(np.uint16), "rgb": colour}[channels]
    table, expected = outputs.measure(labels, intensity), _regionprops_table(labels, intensity)
    assert len(table) == len(expected) == len(np.unique(labels)) - 1
    assert np.isnan(table.filter(like="mean").to_numpy()).any() == (channels == "rgb")
    for ours, theirs in zip(table.columns, expected.columns):
        np.testing.assert_allclose(table[ours], expected[theirs], rtol=1e-6 if channels == "rgb" else 1e-12,
                                   atol=1e-12, err_msg=f"{ours} != {theirs}")
    assert (table.loc[table["label"].isin([96, 91]), "eccentricity"] == 0).all()


def test_measurements_of_real_nuclei_equal_regionprops():
    from nucleunet import layouts

    from conftest import real_dataset_path

    source = real_dataset_path()
    entries = layouts.scan_layout(layouts.list_files(source))[0]
    reader = layouts.DatasetReader(source)
    for entry in entries[::200]:
        masks = [skimage.io.imread(io.BytesIO(reader.read_bytes(name)[0])) for name in entry.masks]
        labels = np.zeros(masks[0].shape[:2], np.int32)
        for number, mask in enumerate(masks, start=1):
            labels[mask > 0] = number
        intensity = skimage.io.imread(io.BytesIO(reader.read_bytes(entry.image)[0]))[..., :3]
        table, expected = outputs.measure(labels, intensity), _regionprops_table(labels, intensity)
        assert len(table) > 0
        for ours, theirs in zip(table.columns, expected.columns):
            np.testing.assert_allclose(table[ours], expected[theirs], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{entry.image_id}: {ours}")


def test_measure_takes_the_solidity_it_is_given_and_measures_the_rest():
    labels, intensity = _nuclei()
    expected = _regionprops_table(labels)["solidity"].to_numpy()
    given = np.full(labels.max(), 0.5)
    given[[2, 5]] = np.nan
    solidity = outputs.measure(labels, intensity, solidity=given)["solidity"].to_numpy()
    assert (solidity[[0, 1, 3, 4, 6]] == 0.5).all() and solidity[[2, 5]] == pytest.approx(expected[[2, 5]])
    assert outputs.measure(labels, solidity=given[:3])["solidity"].to_numpy()[3:] == pytest.approx(expected[3:])


def test_measurements_of_a_colour_image_have_one_column_per_channel():
    labels, intensity = _nuclei()
    table = outputs.measure(labels, np.dstack([intensity, intensity // 2, intensity // 4]))
    assert {"mean_intensity_0", "mean_intensity_2", "max_intensity_1"} <= set(table.columns)
    assert (table["mean_intensity_1"] <= table["mean_intensity_0"]).all()


def test_overlay_is_drawn_on_the_original_image():
    labels, intensity = _nuclei()
    picture = outputs.overlay_on(intensity, labels)
    assert picture.shape == labels.shape + (3,) and picture.dtype == np.uint8
    inside = (labels > 0) & ~skimage.segmentation.find_boundaries(labels, mode="inner")
    assert picture[inside].mean() > picture[labels == 0].mean() + 100  # bright nuclei stay bright: not inverted


def test_write_outputs_writes_the_asked_formats_under_the_key(tmp_path):
    labels, intensity = _nuclei()
    probability = (labels > 0).astype(np.float16)
    table = outputs.write_outputs(tmp_path, "plate 1/wéll A", intensity, labels, labels > 0, probability,
                                  outputs.FORMATS)
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["geojson/plate 1/wéll A.geojson", "labels/plate 1/wéll A.png", "labels/plate 1/wéll A.tif",
                       "masks/plate 1/wéll A.png", "measurements/plate 1/wéll A.csv", "overlays/plate 1/wéll A.png",
                       "probabilities/plate 1/wéll A.tif", "rois/plate 1/wéll A.zip"]
    assert len(table) == labels.max() and "score" not in table  # no score model: no score column
    with pytest.raises(ValueError, match="unknown output format"):
        outputs.check_formats(["labels", "pdf"])


def test_a_given_measurement_table_goes_into_the_measurements_and_qupath_objects(tmp_path):
    labels, intensity = _nuclei()
    scores = np.linspace(0.5, 1.0, labels.max())
    table = outputs.measure(labels, intensity).assign(score=lambda rows: np.round(scores[rows["label"] - 1], 3))
    outputs.write_outputs(tmp_path, "a", intensity, labels, labels > 0, None, ["measurements", "geojson"],
                          measurements=table)
    table = pd.read_csv(tmp_path / "measurements" / "a.csv")
    np.testing.assert_allclose(table["score"], np.round(scores[table["label"] - 1], 3))
    features = json.loads((tmp_path / "geojson" / "a.geojson").read_text())["features"]
    by_name = {int(feature["properties"]["name"]): feature["properties"]["measurements"]["score"]
               for feature in features}
    assert by_name == pytest.approx({label: round(scores[label - 1], 3) for label in by_name}, abs=1e-9)

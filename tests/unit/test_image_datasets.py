"""Image datasets: ImageFolder and labels.csv zips, decoding to the model's input, hostile zips."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from robustness.datasets import is_array_zip, scan_npz
from robustness.errors import DatasetRejected
from robustness.image_datasets import (
    ImageLimits,
    ImageTarget,
    decode_images,
    image_target,
    scan_images,
)
from robustness.preprocessing import Layout, Preprocessing
from tests.factories import images

LIMITS = ImageLimits(max_total_bytes=1 << 20)


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.zip"
    path.write_bytes(data)
    return path


def test_folders_give_sorted_class_names_and_every_class_early(tmp_path: Path) -> None:
    path = _write(tmp_path, images.folder_zip(per_class=3))
    assert not is_array_zip(path)
    index, pixels = scan_images(path, LIMITS)
    assert index.class_names == ["cat", "dog"]
    assert index.layout == "folders"
    assert sorted(index.labels) == [0, 0, 0, 1, 1, 1]
    assert pixels == 6 * 4 + 7 * 4 + 8 * 4 + 3 * 35
    assert len(set(index.labels[:3])) == 2  # interleaved: a short prefix holds both classes
    x, y, names = decode_images(path, ImageTarget(8, 8), LIMITS)
    assert x.shape == (6, 3, 8, 8)
    assert x.dtype == np.float32
    assert names == ["cat", "dog"]
    red = x[y == 0]
    blue = x[y == 1]
    np.testing.assert_allclose(red[:, 0], 1.0)
    np.testing.assert_allclose(red[:, 2], 0.0)
    assert blue[:, 2].min() > 0.95
    assert blue[:, 0].max() < 0.05


def test_shards_decode_their_own_range(tmp_path: Path) -> None:
    path = _write(tmp_path, images.folder_zip(per_class=3))
    whole, y_whole, _ = decode_images(path, ImageTarget(4, 4), LIMITS)
    part, y_part, _ = decode_images(path, ImageTarget(4, 4), LIMITS, start=2, stop=5)
    np.testing.assert_array_equal(part, whole[2:5])
    np.testing.assert_array_equal(y_part, y_whole[2:5])


def test_nhwc_grayscale_and_scale(tmp_path: Path) -> None:
    path = _write(tmp_path, images.folder_zip(per_class=1))
    target = image_target([1, 5, 6, 1], Preprocessing(layout=Layout.NHWC, scale=255), None)
    assert target == ImageTarget(5, 6, 1, "NHWC", 255.0, 1.0)
    x, _y, _ = decode_images(path, target, LIMITS)
    assert x.shape == (2, 5, 6, 1)
    assert 50 < x.max() <= 255  # red in grayscale is 76 of 255: the scale is 0–255


def test_resize_covers_then_center_crops(tmp_path: Path) -> None:
    stripes = np.zeros((10, 20, 3), np.uint8)  # height 10, width 20: red | green | blue
    stripes[:, :5] = images.RED
    stripes[:, 5:15] = images.GREEN
    stripes[:, 15:] = images.BLUE
    path = _write(tmp_path, images.zip_of({"a/0.png": images.array_image(stripes)}))
    x, _, _ = decode_images(path, ImageTarget(10, 10), LIMITS)
    np.testing.assert_allclose(x[0, 1, :, 1:-1], 1.0)  # only green survives the crop
    np.testing.assert_allclose(x[0, 0, :, 1:-1], 0.0)
    # crop_fraction 0.5: the image is resized to 40×20 first and the crop sees its middle
    x, _, _ = decode_images(path, ImageTarget(10, 10, crop_fraction=0.5), LIMITS)
    np.testing.assert_allclose(x[0, 1], 1.0)


def test_labels_csv_names_and_indices(tmp_path: Path) -> None:
    index, _ = scan_images(_write(tmp_path, images.csv_zip(["dog", "cat", "dog"])), LIMITS)
    assert (index.layout, index.class_names, index.labels) == ("csv", ["cat", "dog"], [1, 0, 1])
    assert index.files == ["img/0.png", "img/1.png", "img/2.png"]  # the CSV's order
    index, _ = scan_images(_write(tmp_path, images.csv_zip(["2", "0"])), LIMITS)
    assert (index.class_names, index.labels) == (["0", "1", "2"], [2, 0])


def test_zipped_npy_pair_is_an_array_dataset(tmp_path: Path) -> None:
    members = {}
    for name, arr in {"x": np.zeros((3, 4), np.float32), "y": np.arange(3)}.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        members[f"{name}.npy"] = buf.getvalue()
    path = _write(tmp_path, images.zip_of(members))  # `zip data.zip x.npy y.npy`, deflated
    assert is_array_zip(path)
    facts = scan_npz(path, max_member_bytes=1 << 20, max_total_bytes=1 << 20)
    assert (facts.n, facts.shape, facts.num_classes) == (3, [4], 3)


PNG = images.image_bytes(images.RED)
HOSTILE = [
    ("zip-slip", {"../cat/0.png": PNG}, (), "climbs out"),
    ("absolute", {"/etc/cat/0.png": PNG}, (), "absolute path"),
    ("windows-absolute", {"C:/cat/0.png": PNG}, (), "absolute path"),
    ("symlink", {"cat/0.png": PNG, "cat/1.png": b"/etc/passwd"}, ("cat/1.png",), "symbolic link"),
    ("nested", {"cat/0.png": PNG, "cat/more.zip": b"PK"}, (), "nested archives"),
    ("undecodable", {"cat/0.png": b"not an image at all"}, (), "not a readable"),
    ("zip-as-png", {"cat/0.png": images.zip_of({"a": b""})}, (), "not a readable"),
    ("loose", {"0.png": PNG}, (), "class-named folder"),
    ("other-file", {"cat/0.png": PNG, "notes.txt": b"hi"}, (), "neither an image"),
    ("empty", {"cat/": b""}, (), "no images"),
    ("csv-missing", {"labels.csv": b"file,label\nx.png,cat\n"}, (), "line 2"),
    ("csv-header", {"a.png": PNG, "labels.csv": b"a.png,cat\n"}, (), "header line"),
    ("bomb", {"cat/0.png": PNG, "cat/1.bmp": bytes(1 << 20)}, (), "inflates"),
]


@pytest.mark.parametrize(("members", "links", "message"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])  # fmt: skip
def test_hostile_zips_are_refused_with_a_reason(
    tmp_path: Path, members: dict[str, bytes], links: tuple[str, ...], message: str
) -> None:
    path = _write(tmp_path, images.zip_of(members, symlinks=links))
    with pytest.raises(DatasetRejected, match=message):
        scan_images(path, LIMITS)


def test_member_and_pixel_caps(tmp_path: Path) -> None:
    path = _write(tmp_path, images.folder_zip(per_class=3))
    with pytest.raises(DatasetRejected, match="6 members; the limit is 5"):
        scan_images(path, ImageLimits(max_total_bytes=1 << 20, max_members=5))
    with pytest.raises(DatasetRejected, match="more than 100 pixels"):
        scan_images(path, ImageLimits(max_total_bytes=1 << 20, max_total_pixels=100))
    huge = images.zip_of({"a/0.png": images.png_claiming(9000, 8000)})
    with pytest.raises(DatasetRejected, match="9000×8000"):
        scan_images(_write(tmp_path, huge), LIMITS)


def test_a_damaged_body_passes_the_header_check_and_fails_decoding_by_name(
    tmp_path: Path,
) -> None:
    png = images.array_image(np.random.default_rng(0).integers(0, 255, (32, 32, 3)))
    path = _write(tmp_path, images.zip_of({"a/0.png": png[: len(png) // 2]}))  # cut in IDAT
    scan_images(path, LIMITS)
    with pytest.raises(DatasetRejected, match=r"'a/0\.png' could not be decoded"):
        decode_images(path, ImageTarget(8, 8), LIMITS)


@pytest.mark.parametrize(
    ("shape", "pre", "message"),
    [
        ([1, 3, "h", "w"], None, "dynamic"),
        ([1, 4, 8, 8], None, "4 channels"),
        ([1, 64], None, "N×C×H×W"),
        ([1, 8, 8], Preprocessing(layout=Layout.NHWC), "N×H×W×C"),
    ],
)
def test_models_images_cannot_feed(shape: list, pre: Preprocessing | None, message: str) -> None:
    with pytest.raises(DatasetRejected, match=message):
        image_target(shape, pre)


def test_not_a_zip_says_what_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"x,y\n")
    with pytest.raises(DatasetRejected, match=r"not an \.npz archive.*zip of images"):
        is_array_zip(path)
    assert zipfile.is_zipfile(_write(tmp_path, images.folder_zip(1)))

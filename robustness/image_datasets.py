"""Image datasets: a zip of class-named folders (ImageFolder) or of images with a labels.csv.

Two steps, because the pixels a model sees depend on the model:

- **At upload** (`scan_images`, in the API process) only the zip's directory, the CSV and
  each image's *header* are read: Pillow's `Image.open` parses the header and stops; no
  pixel is decoded. Hostile archives are refused here: zip-slip and absolute paths,
  symlink members, nested archives, too many members, compression bombs, images whose
  headers do not parse, and more decoded pixels than the dataset limits allow.
- **At audit time** (`decode_images`, in the worker's sandbox child) the samples of one
  shard are decoded and brought to the model's input: resized so that the image covers
  (H, W) / crop_fraction, center-cropped to H×W, converted to 1 or 3 channels, scaled to
  [0, scale] as float32, and laid out NCHW or NHWC as the model declares.

Class indices follow torchvision's ImageFolder: class names sorted, index = position. In
a labels.csv, labels that are all non-negative integers are the indices themselves.
"""

from __future__ import annotations

import csv
import hashlib
import io
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from robustness.datasets import (
    MAX_COMPRESSION_RATIO,
    MAX_LABEL,
    MAX_ZIP_ENTRIES,
    zip_entry_count,
)
from robustness.errors import DatasetRejected
from robustness.preprocessing import Layout, Preprocessing

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")  # Pillow parses nothing else for us
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
ARCHIVE_SUFFIXES = frozenset(
    {".zip", ".npz", ".jar", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst"}
)
LABELS_CSV = "labels.csv"
MAX_MEMBERS = MAX_ZIP_ENTRIES
MAX_IMAGE_PIXELS = 64 << 20  # one image; Pillow's own bomb guard starts at ~89M
MAX_CSV_BYTES = 16 << 20
LAYOUTS = tuple(layout.value for layout in Layout)
_JUNK = ("__MACOSX/",)  # what macOS Finder adds to every zip it makes


@dataclass(frozen=True)
class ImageLimits:
    max_total_bytes: int  # inflated size of all members (the .npz limit, reused)
    max_members: int = MAX_MEMBERS
    max_total_pixels: int | None = None  # default: max_total_bytes / 4 (RGBA bytes)

    @property
    def pixel_cap(self) -> int:
        return self.max_total_pixels or self.max_total_bytes // 4


@dataclass(frozen=True)
class ImageIndex:
    """The samples of an image zip, in audit order, and the class names."""

    files: list[str]
    labels: list[int]
    class_names: list[str]
    layout: str  # "folders" or "csv"


@dataclass(frozen=True)
class ImageTarget:
    """What one decoded sample must look like for the model."""

    height: int
    width: int
    channels: int = 3
    layout: str = "NCHW"
    scale: float = 1.0
    crop_fraction: float = 1.0


def scan_images(path: Path, limits: ImageLimits) -> tuple[ImageIndex, int]:
    """The index and the decoded pixel count, from headers only; DatasetRejected if hostile."""
    with _checked_zip(path, limits) as zf:
        index = _index(zf)
        pixels = 0
        for name in index.files:
            width, height = _header_size(zf, name)
            pixels += width * height
            if pixels > limits.pixel_cap:
                raise DatasetRejected(
                    f"the images decode to more than {limits.pixel_cap} pixels in total (reached "
                    f"at {name!r}); upload fewer or smaller images (the limit follows "
                    "ROBAUDIT_MAX_NPZ_TOTAL_MB)"
                )
    return index, pixels


def decode_images(
    path: Path, target: ImageTarget, limits: ImageLimits, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Samples [start, stop) as float32 in the target layout, their labels, the class names."""
    if target.layout not in LAYOUTS:
        raise DatasetRejected(f"layout {target.layout!r} is not one of {list(LAYOUTS)}")
    with _checked_zip(path, limits) as zf:
        index = _index(zf)
        files = index.files[start:stop]
        x = np.stack([_decode(zf, name, target) for name in files])
    y = np.asarray(index.labels[start:stop], np.int64)
    return x, y, index.class_names


def _decode(zf: zipfile.ZipFile, name: str, target: ImageTarget) -> np.ndarray:
    try:
        with zf.open(name) as f, Image.open(io.BytesIO(f.read()), formats=IMAGE_FORMATS) as im:
            _check_size(name, im.size)
            im.draft("RGB" if target.channels == 3 else "L", (target.width, target.height))
            pixels = _fit(im.convert("RGB" if target.channels == 3 else "L"), target)
    except DatasetRejected:
        raise
    except Exception as exc:  # Pillow raises many types on damaged data
        raise DatasetRejected(f"image {name!r} could not be decoded: {exc}") from exc
    arr = np.asarray(pixels, np.float32) * np.float32(target.scale / 255.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1) if target.layout == "NCHW" else arr


def _fit(im: Image.Image, target: ImageTarget) -> Image.Image:
    """Resize to cover (H, W) / crop_fraction, keeping the aspect ratio, then center-crop."""
    w, h = im.size
    ratio = max(target.width / w, target.height / h) / target.crop_fraction
    size = (max(target.width, round(w * ratio)), max(target.height, round(h * ratio)))
    im = im.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - target.width) / 2)
    top = round((size[1] - target.height) / 2)
    return im.crop((left, top, left + target.width, top + target.height))


def _header_size(zf: zipfile.ZipFile, name: str) -> tuple[int, int]:
    try:
        with zf.open(name) as f, Image.open(f, formats=IMAGE_FORMATS) as im:
            size = im.size
    except Exception as exc:  # only the header was parsed: nothing else can fail here
        raise DatasetRejected(
            f"image {name!r} is not a readable {', '.join(IMAGE_FORMATS)} image: {exc}"
        ) from exc
    _check_size(name, size)
    return size


def _check_size(name: str, size: tuple[int, int]) -> None:
    if size[0] * size[1] > MAX_IMAGE_PIXELS or 0 in size:
        raise DatasetRejected(
            f"image {name!r} is {size[0]}×{size[1]} pixels; one image may have 1 to "
            f"{MAX_IMAGE_PIXELS} pixels"
        )


@contextmanager
def _checked_zip(path: Path, limits: ImageLimits) -> Iterator[zipfile.ZipFile]:
    """The open archive once its directory passed every check; no member read yet."""
    entries = zip_entry_count(path)
    if entries > limits.max_members:
        raise DatasetRejected(
            f"the image zip has {entries} members; the limit is {limits.max_members}"
        )
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info)
        total = sum(i.file_size for i in infos)
        if total > limits.max_total_bytes:
            raise DatasetRejected(
                f"the image zip inflates to {total} bytes; the limit is {limits.max_total_bytes} "
                "bytes (ROBAUDIT_MAX_NPZ_TOTAL_MB)"
            )
        yield zf


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetRejected(f"member {name!r} has an absolute path; zip relative paths only")
    if ".." in parts:
        raise DatasetRejected(f"member {name!r} climbs out of the archive with '..'")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetRejected(f"member {name!r} is a symbolic link; zip the files themselves")
    if info.flag_bits & 0x1:
        raise DatasetRejected(f"member {name!r} is encrypted; upload an unencrypted zip")
    if PurePosixPath(name.lower()).suffix in ARCHIVE_SUFFIXES:
        raise DatasetRejected(f"member {name!r} is an archive; nested archives are not accepted")
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_COMPRESSION_RATIO:
        raise DatasetRejected(
            f"member {name!r} inflates {ratio:.0f}:1; the limit is {MAX_COMPRESSION_RATIO}:1"
        )


def _index(zf: zipfile.ZipFile) -> ImageIndex:
    images: list[str] = []
    others: list[str] = []
    for name in zf.namelist():
        base = PurePosixPath(name).name
        if name.endswith("/") or name.startswith(_JUNK) or base.startswith("."):
            continue
        (images if PurePosixPath(name.lower()).suffix in IMAGE_SUFFIXES else others).append(name)
    if others == [LABELS_CSV]:
        return _csv_index(zf, set(images))
    if others:
        raise DatasetRejected(
            f"member {others[0]!r} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
            f"nor the {LABELS_CSV} at the top of the zip"
        )
    return _folder_index(images)


def _folder_index(images: list[str]) -> ImageIndex:
    if not images:
        raise DatasetRejected(
            "the zip holds no images; zip class-named folders (cat/1.png, dog/2.png) or images "
            f"with a {LABELS_CSV} (file,label)"
        )
    roots = {str(PurePosixPath(n).parent.parent) for n in images}
    loose = [n for n in images if "/" not in n]
    if loose or len(roots) != 1:
        raise DatasetRejected(
            "every image must sit in a class-named folder, all folders side by side "
            f"(cat/1.png, dog/2.png), or the zip needs a {LABELS_CSV}; found "
            f"{(loose or images)[0]!r}"
        )
    names = sorted({PurePosixPath(n).parent.name for n in images})
    _check_class_count(names)
    classes = {c: k for k, c in enumerate(names)}
    # Interleave classes in a fixed order, so that a max_samples prefix sees every class.
    order = sorted(images, key=lambda n: hashlib.sha256(n.encode()).digest())
    labels = [classes[PurePosixPath(n).parent.name] for n in order]
    return ImageIndex(order, labels, names, "folders")


def _csv_index(zf: zipfile.ZipFile, images: set[str]) -> ImageIndex:
    if zf.getinfo(LABELS_CSV).file_size > MAX_CSV_BYTES:
        raise DatasetRejected(f"{LABELS_CSV} is over {MAX_CSV_BYTES} bytes")
    text = zf.read(LABELS_CSV).decode("utf-8-sig", "replace")
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows or [c.strip().lower() for c in rows[0]] != ["file", "label"]:
        raise DatasetRejected(f"{LABELS_CSV} must start with the header line file,label")
    files: list[str] = []
    raw: list[str] = []
    for k, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[0] not in images:
            raise DatasetRejected(
                f"{LABELS_CSV} line {k}: {row!r} must be file,label with file an image in the zip"
            )
        files.append(row[0])
        raw.append(row[1].strip())
    if not files:
        raise DatasetRejected(f"{LABELS_CSV} lists no images")
    if len(set(files)) != len(files):
        raise DatasetRejected(f"{LABELS_CSV} lists an image twice")
    if all(v.isdigit() and len(v) <= 7 for v in raw):  # indices up to MAX_LABEL
        labels = [int(v) for v in raw]
        names = [str(k) for k in range(max(labels) + 1)]
    else:
        names = sorted(set(raw))
        at = {c: k for k, c in enumerate(names)}
        labels = [at[v] for v in raw]
    _check_class_count(names)
    return ImageIndex(files, labels, names, "csv")


def _check_class_count(names: list[str]) -> None:
    if len(names) > MAX_LABEL + 1:
        raise DatasetRejected(f"{len(names)} classes; the most accepted is {MAX_LABEL + 1}")


def image_target(
    input_shape: list[int | str | None],
    preprocessing: Preprocessing | None = None,
    crop_fraction: float | None = None,
) -> ImageTarget:
    """The decoded sample a model takes: its fixed C, H, W in its layout, in pixel space."""
    pre = preprocessing or Preprocessing()
    layout, scale = pre.layout.value, float(pre.scale)
    dims = list(input_shape[1:])
    if len(dims) != 3:
        raise DatasetRejected(
            f"an image dataset needs a model taking N×C×H×W or N×H×W×C images; this one takes "
            f"{list(input_shape)} ({layout})"
        )
    fixed = [d for d in dims if isinstance(d, int)]
    if len(fixed) != 3:
        raise DatasetRejected(
            f"the model's input {list(input_shape)} has a dynamic channel, height or width; "
            "image datasets are decoded to a fixed size: export the model with one"
        )
    c, h, w = fixed if layout == "NCHW" else (fixed[2], fixed[0], fixed[1])
    if c not in (1, 3):
        raise DatasetRejected(
            f"the model takes {c} channels; images decode to 1 (grayscale) or 3 (RGB)"
        )
    return ImageTarget(h, w, c, layout, scale, crop_fraction or 1.0)


def target_shape(target: ImageTarget) -> list[int]:
    """One decoded sample's shape, as the model takes it."""
    if target.layout == "NCHW":
        return [target.channels, target.height, target.width]
    return [target.height, target.width, target.channels]

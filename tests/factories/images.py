"""Image zips for dataset tests: tiny PNG/JPEG files, benign and hostile layouts."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def image_bytes(
    rgb: tuple[int, int, int], size: tuple[int, int] = (6, 4), fmt: str = "PNG"
) -> bytes:
    """One solid-colour image of (width, height)."""
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format=fmt)
    return buf.getvalue()


def array_image(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buf.getvalue()


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def folder_members(per_class: int = 3) -> dict[str, bytes]:
    """cat/ red PNGs and dog/ blue JPEGs (JPEG keeps solid colours within a few levels)."""
    members = {f"cat/{k}.png": image_bytes(RED, (6 + k, 4)) for k in range(per_class)}
    members |= {f"dog/{k}.jpg": image_bytes(BLUE, (5, 7), "JPEG") for k in range(per_class)}
    return members


def folder_zip(per_class: int = 3) -> bytes:
    return zip_of(folder_members(per_class))


def csv_zip(labels: list[str] | None = None) -> bytes:
    labels = labels or ["dog", "cat", "dog"]
    colours = {"cat": RED, "dog": BLUE}
    members = {f"img/{k}.png": image_bytes(colours.get(v, GREEN)) for k, v in enumerate(labels)}
    csv = "file,label\n" + "".join(f"img/{k}.png,{v}\n" for k, v in enumerate(labels))
    return zip_of({**members, "labels.csv": csv.encode()})


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width×height: a pixel bomb, cheap to build."""
    png = bytearray(image_bytes(RED, (1, 1)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    png[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(png[ihdr - 4 : ihdr + 13]))
    png[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(png)

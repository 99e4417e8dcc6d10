"""Dataset files, treated as hostile: no unpickling, no zip bombs, no NaN; and model/data fit.

An .npz is read as a stream: the zip's directory and each .npy header are checked against
the limits (exact member names, per-member and total inflated size, compression ratio,
dtype, shape) before a single array byte is allocated, and `scan_npz` computes the facts the
API stores chunk by chunk, so the API's memory does not grow with the dataset.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from robustness.errors import DatasetRejected

MAX_COMPRESSION_RATIO = 200  # real image data compresses < 20×; deflate bombs reach ~1000×
MAX_LABEL = 999_999  # labels are class indices; no classifier scores a million classes
MEMBERS = ("x.npy", "y.npy")
SCAN_CHUNK_BYTES = 8 << 20
FLOAT_KINDS = ("f",)
INT_KINDS = ("i", "u")
_EOCD = b"PK\x05\x06"
MAX_ZIP_ENTRIES = 50_000  # any dataset zip; under zip's 16-bit count, so zip64 is refused


@dataclass(frozen=True)
class DatasetFacts:
    n: int
    shape: list[int]
    dtype: str
    num_classes: int
    value_range: list[float]


@dataclass(frozen=True)
class _Header:
    """An .npy member's header: what reading it would allocate, known before allocating."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def load_npz(
    path: Path, *, max_member_bytes: int, max_total_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """x and y from an .npz without unpickling and without inflating a zip bomb."""
    total = 2 * max_member_bytes if max_total_bytes is None else max_total_bytes
    with _members(path, max_member_bytes, total) as zf:
        arrays = {}
        for name in MEMBERS:
            with zf.open(name) as f:
                header = _read_header(f, name, zf.getinfo(name).file_size)
                arrays[header.key] = _read_data(f, header)
    return arrays["x"], arrays["y"]


def scan_npz(
    path: Path,
    *,
    max_member_bytes: int,
    max_total_bytes: int,
    chunk_bytes: int = SCAN_CHUNK_BYTES,
) -> DatasetFacts:
    """The facts of an .npz, checked like `check_arrays`, holding at most a chunk of x."""
    with _members(path, max_member_bytes, max_total_bytes) as zf:
        with zf.open("y.npy") as f:
            y = _read_data(f, _read_header(f, "y.npy", zf.getinfo("y.npy").file_size))
        with zf.open("x.npy") as f:
            header = _read_header(f, "x.npy", zf.getinfo("x.npy").file_size)
            _check_x_layout(header.shape, header.dtype)
            _check_labels(y, header.shape[0])
            lo, hi, bad = math.inf, -math.inf, 0
            for chunk in _x_chunks(f, header, chunk_bytes):
                finite = np.isfinite(chunk)
                bad += int((~finite).any(axis=1).sum())
                if finite.all():
                    lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    _check_finite(bad)
    return _facts(header.shape, header.dtype, y, (lo, hi))


def check_arrays(x: np.ndarray, y: np.ndarray) -> DatasetFacts:
    """The facts stored about a dataset; DatasetRejected on anything an audit cannot use."""
    _check_x_layout(x.shape, x.dtype)
    _check_labels(y, len(x))
    _check_finite(int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum()))
    return _facts(x.shape, x.dtype, y, (float(x.min()), float(x.max())))


def _facts(
    shape: tuple[int, ...], dtype: np.dtype[Any], y: np.ndarray, value_range: tuple[float, float]
) -> DatasetFacts:
    return DatasetFacts(
        n=shape[0],
        shape=list(shape[1:]),
        dtype=str(dtype),
        num_classes=int(y.max()) + 1,
        value_range=list(value_range),
    )


def _check_x_layout(shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    if dtype.kind not in FLOAT_KINDS:
        raise DatasetRejected(
            f"x has dtype {dtype}; it must be floating point (scale integer images to the "
            "model's input range first)"
        )
    if len(shape) < 2 or shape[0] == 0:
        raise DatasetRejected(f"x must be N×… with N ≥ 1; got shape {list(shape)}")
    if 0 in shape[1:]:
        raise DatasetRejected(
            f"x has a zero-width dimension (shape {list(shape)}); every sample needs at least "
            "one feature"
        )


def _check_labels(y: np.ndarray, n: int) -> None:
    if y.dtype.kind not in INT_KINDS or y.ndim != 1:
        raise DatasetRejected(f"y must be a 1-D integer label array; got {y.dtype} {list(y.shape)}")
    if n != len(y):
        raise DatasetRejected(f"x has {n} samples but y has {len(y)} labels; they must match")
    if (y < 0).any():
        raise DatasetRejected("y contains negative labels; labels are class indices 0…C-1")
    top = int(y.max())  # a Python int: uint64 labels past int64 compare exactly
    if top > MAX_LABEL:
        raise DatasetRejected(
            f"y contains the label {top}; labels are class indices 0…C-1 and the largest "
            f"accepted is {MAX_LABEL}"
        )


def _check_finite(bad_samples: int) -> None:
    if bad_samples:
        raise DatasetRejected(
            f"x contains NaN or inf values in {bad_samples} sample(s); clean the data"
        )


@contextmanager
def _members(path: Path, max_member_bytes: int, max_total_bytes: int) -> Iterator[zipfile.ZipFile]:
    """The open archive, once its directory passed every check; nothing inflated yet."""
    if not zipfile.is_zipfile(path):
        raise DatasetRejected(
            "the dataset is not an .npz archive; save it with np.savez(f, x=x, y=y)"
        )
    _check_member_count(path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        found = [n.removesuffix(".npy") for n in names]
        if len(names) != len(set(names)) or set(names) - set(MEMBERS):
            raise DatasetRejected(
                f"the .npz must hold exactly the arrays x and y; found {found}. "
                "Save it with np.savez(f, x=inputs, y=labels)"
            )
        missing = [m.removesuffix(".npy") for m in MEMBERS if m not in names]
        if missing:
            raise DatasetRejected(
                f"the .npz lacks array(s) {missing} (found {found}); it needs x (float, N×…) "
                "and y (int, N): np.savez(f, x=inputs, y=labels)"
            )
        for info in infos:
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > max_member_bytes or ratio > MAX_COMPRESSION_RATIO:
                raise DatasetRejected(
                    f"array {info.filename.removesuffix('.npy')!r} inflates to {info.file_size} "
                    f"bytes (ratio {ratio:.0f}:1); the limits are {max_member_bytes} bytes and "
                    f"{MAX_COMPRESSION_RATIO}:1"
                )
        total = sum(i.file_size for i in infos)
        if total > max_total_bytes:
            raise DatasetRejected(
                f"the .npz inflates to {total} bytes in total; the limit is {max_total_bytes} "
                "bytes. Upload fewer samples"
            )
        yield zf


def _check_member_count(path: Path) -> None:
    entries = zip_entry_count(path)
    if entries > 2 * len(MEMBERS):  # 0xFFFF (zip64) included: never a plain np.savez
        raise DatasetRejected(
            f"the .npz has {entries} members; it must hold exactly x.npy and y.npy"
        )


def zip_entry_count(path: Path) -> int:
    """Read the zip's end record first: a directory of millions of entries is never parsed.

    0xFFFF for a zip64 archive, whatever its real count: callers' limits stay below it."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        raise DatasetRejected("the zip archive is damaged: its directory cannot be found")
    return int(struct.unpack_from("<H", tail, at + 10)[0])


def is_array_zip(path: Path) -> bool:
    """Whether a zip is meant as arrays (.npz, or x.npy and y.npy zipped) rather than images.

    Its member count is checked before its directory is parsed."""
    if not zipfile.is_zipfile(path):
        raise DatasetRejected(
            "the dataset is not an .npz archive (np.savez(f, x=x, y=y)) nor a zip of images "
            "(class-named folders, or images with a labels.csv)"
        )
    if zip_entry_count(path) > MAX_ZIP_ENTRIES:
        return True  # refused by the .npz checks, which say how many members it has
    with zipfile.ZipFile(path) as zf:
        return any(n.lower().endswith(".npy") for n in zf.namelist())


def _read_header(f: IO[bytes], name: str, declared: int) -> _Header:
    key = name.removesuffix(".npy")
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except Exception as exc:
        raise DatasetRejected(f"array {key!r} is not a valid .npy member: {exc}") from exc
    if dtype.hasobject:
        raise DatasetRejected(
            f"array {key!r} has dtype {dtype}, which cannot be read without unpickling; "
            "store plain numeric arrays, not object arrays"
        )
    header = _Header(key, tuple(int(d) for d in shape), dtype, bool(fortran))
    if header.nbytes > declared:
        raise DatasetRejected(
            f"array {key!r} declares shape {list(header.shape)} ({header.nbytes} bytes) but its "
            f"member holds {declared} bytes; the file is damaged"
        )
    return header


def _read_exact(f: IO[bytes], nbytes: int, key: str) -> np.ndarray:
    buf = np.empty(nbytes, np.uint8)
    view, got = memoryview(buf.data), 0
    while got < nbytes:
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise DatasetRejected(f"array {key!r} is truncated: {got} of {nbytes} bytes")
        got += n
    return buf


def _read_data(f: IO[bytes], header: _Header) -> np.ndarray:
    raw = _read_exact(f, header.nbytes, header.key)
    data: np.ndarray = raw.view(header.dtype)
    return data.reshape(header.shape, order="F" if header.fortran else "C")


def _x_chunks(f: IO[bytes], header: _Header, chunk_bytes: int) -> Iterator[np.ndarray]:
    """x as [rows, features] chunks; a Fortran-ordered x comes back whole (rare; bounded)."""
    if header.fortran:
        yield _read_data(f, header).reshape(header.shape[0], -1)
        return
    row_bytes = header.nbytes // header.shape[0]
    rows = max(1, chunk_bytes // max(row_bytes, 1))
    for start in range(0, header.shape[0], rows):
        count = min(rows, header.shape[0] - start)
        yield _read_exact(f, count * row_bytes, header.key).view(header.dtype).reshape(count, -1)


def check_fit(
    model_input: dict[str, Any],
    model_classes: int | None,
    input_range: list[float],
    dataset: DatasetFacts,
) -> None:
    """Whether a dataset can be fed to a model, judged from stored metadata alone."""
    declared = model_input["shape"][1:]
    if len(declared) != len(dataset.shape):
        raise DatasetRejected(
            f"the model takes samples of shape {declared} but the dataset's are "
            f"{dataset.shape} (rank {len(declared)} vs {len(dataset.shape)})"
        )
    for want, got in zip(declared, dataset.shape, strict=True):
        if isinstance(want, int) and want != got:
            raise DatasetRejected(
                f"the model takes samples of shape {declared} but the dataset's are {dataset.shape}"
            )
    if model_classes is not None and dataset.num_classes > model_classes:
        raise DatasetRejected(
            f"the dataset has labels up to {dataset.num_classes - 1} but the model scores "
            f"{model_classes} classes"
        )
    lo, hi = input_range
    vlo, vhi = dataset.value_range
    if vlo < lo - 1e-6 or vhi > hi + 1e-6:
        raise DatasetRejected(
            f"the dataset spans [{vlo:.4g}, {vhi:.4g}], outside the model's input range "
            f"[{lo}, {hi}]; rescale the data or upload the model with the right input_range"
        )

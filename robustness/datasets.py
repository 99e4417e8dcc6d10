"""Dataset files, treated as hostile: no unpickling, no zip bombs, no NaN; and model/data fit."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustness.errors import DatasetRejected

MAX_COMPRESSION_RATIO = 200  # real image data compresses < 20×; deflate bombs reach ~1000×
FLOAT_KINDS = ("f",)
INT_KINDS = ("i", "u")


@dataclass(frozen=True)
class DatasetFacts:
    n: int
    shape: list[int]
    dtype: str
    num_classes: int
    value_range: list[float]


def load_npz(path: Path, *, max_member_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y from an .npz without unpickling and without inflating a zip bomb."""
    if not zipfile.is_zipfile(path):
        raise DatasetRejected(
            "the dataset is not an .npz archive; save it with np.savez(f, x=x, y=y)"
        )
    with zipfile.ZipFile(path) as zf:
        members = {Path(i.filename).stem: i for i in zf.infolist()}
        missing = {"x", "y"} - members.keys()
        if missing:
            raise DatasetRejected(
                f"the .npz lacks array(s) {sorted(missing)}; it needs x (float, N×…) and y (int, N)"
            )
        for key in ("x", "y"):
            info = members[key]
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > max_member_bytes or ratio > MAX_COMPRESSION_RATIO:
                raise DatasetRejected(
                    f"array {key!r} inflates to {info.file_size} bytes (ratio {ratio:.0f}:1); "
                    f"the limits are {max_member_bytes} bytes and {MAX_COMPRESSION_RATIO}:1"
                )
        arrays = {}
        for key in ("x", "y"):
            with zf.open(members[key]) as f:
                try:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
                except ValueError as exc:
                    raise DatasetRejected(
                        f"array {key!r} cannot be read without unpickling ({exc}); "
                        "store plain numeric arrays, not object arrays"
                    ) from exc
                except Exception as exc:
                    raise DatasetRejected(
                        f"array {key!r} is not a valid .npy member: {exc}"
                    ) from exc
    return arrays["x"], arrays["y"]


def check_arrays(x: np.ndarray, y: np.ndarray) -> DatasetFacts:
    """The facts stored about a dataset; DatasetRejected on anything an audit cannot use."""
    if x.dtype.kind not in FLOAT_KINDS:
        raise DatasetRejected(
            f"x has dtype {x.dtype}; it must be floating point (scale integer images to the "
            "model's input range first)"
        )
    if y.dtype.kind not in INT_KINDS or y.ndim != 1:
        raise DatasetRejected(f"y must be a 1-D integer label array; got {y.dtype} {list(y.shape)}")
    if x.ndim < 2 or len(x) == 0:
        raise DatasetRejected(f"x must be N×… with N ≥ 1; got shape {list(x.shape)}")
    if len(x) != len(y):
        raise DatasetRejected(f"x has {len(x)} samples but y has {len(y)} labels; they must match")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).reshape(len(x), -1).any(axis=1).sum())
        raise DatasetRejected(f"x contains NaN or inf values in {bad} sample(s); clean the data")
    if (y < 0).any():
        raise DatasetRejected("y contains negative labels; labels are class indices 0…C-1")
    return DatasetFacts(
        n=len(x),
        shape=list(x.shape[1:]),
        dtype=str(x.dtype),
        num_classes=int(y.max()) + 1,
        value_range=[float(x.min()), float(x.max())],
    )


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

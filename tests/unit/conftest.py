"""Fixtures the offline CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import hostile
from tests.factories.models import cnn_onnx, digits_split, natural_cnn


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A digits CNN as ONNX and 32 test samples as .npz, on disk, as `check` and `run` take them."""
    split = digits_split()
    model = tmp_path / "digits.onnx"
    model.write_bytes(cnn_onnx(natural_cnn()))
    data = tmp_path / "test.npz"
    data.write_bytes(hostile.npz_bytes(x=split.x_test[:32], y=split.y_test[:32]))
    return model, data

"""A cached conversion is checked again on every audit's own inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustness.config import BackendKind
from robustness.errors import AuditInputError
from tests.factories.models import digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import load_cpu


def test_recheck_measures_parity_on_the_new_inputs() -> None:
    split = digits_split()
    loaded = load_cpu(to_onnx(natural_cnn()), split.x_test[:8])
    again = loaded.recheck(split.x_test[100:132])
    assert again.backend is loaded.backend  # no new conversion
    status = again.statuses[BackendKind.TORCH]
    assert status.ok
    assert status.parity_max_abs_diff is not None
    assert status.parity_max_abs_diff < 1e-4


def test_recheck_falls_back_when_the_converted_module_no_longer_matches() -> None:
    split = digits_split()
    loaded = load_cpu(to_onnx(natural_cnn()), split.x_test[:8])
    with torch.no_grad():
        for p in loaded.backend.module.parameters():  # type: ignore[attr-defined]
            p.mul_(1.01)  # a silent drift the parity check must catch
    again = loaded.recheck(split.x_test[:8])
    assert again.backend.kind is BackendKind.ONNXRUNTIME
    assert again.statuses[BackendKind.TORCH].ok is False
    assert "parity failed" in (again.statuses[BackendKind.TORCH].reason or "")


def test_recheck_refuses_inputs_of_the_wrong_shape() -> None:
    split = digits_split()
    loaded = load_cpu(to_onnx(natural_cnn()), split.x_test[:8])
    with pytest.raises(AuditInputError, match="takes samples of shape"):
        loaded.recheck(np.zeros((4, 3, 8, 8), np.float32))

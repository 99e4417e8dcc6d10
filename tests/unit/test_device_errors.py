"""An accelerator's failure is the host's, never the model's (robustness.errors.device_error):
loading lets it through instead of rejecting the model, and the worker retries it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustness.errors import ModelRejected, device_error
from robustness.loading import load
from tests.factories.models import mlp_onnx


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("AcceleratorError", "CUDA error: an illegal memory access was encountered", True),
        ("RuntimeError", "Found no NVIDIA driver on your system", True),
        ("RuntimeError", "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR", True),
        ("Fail", "[ONNXRuntimeError] : 1 : FAIL : CUDA failure 2: out of memory", True),
        ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)", False),
        ("MemoryError", "", False),  # the sandbox's own memory limit: reported as such
        ("ValueError", "Unsupported ONNX opset 99", False),
    ],
)
def test_device_errors_are_told_from_the_models(kind: str, message: str, expected: bool) -> None:
    assert device_error(kind, message) is expected


def test_a_device_that_fails_is_not_reported_as_a_rejected_model() -> None:
    """cuda:99 exists on no host here: the error must not read "onnxruntime cannot run this
    model", which would fail the audit as the model's fault instead of retrying it."""
    probe = np.zeros((2, 1, 8, 8), np.float32)
    assert load(mlp_onnx(), probe, device=torch.device("cpu")).info is not None
    with pytest.raises(RuntimeError, match=r"NVIDIA|CUDA|device") as caught:
        load(mlp_onnx(), probe, device=torch.device("cuda:99"))
    assert not isinstance(caught.value, ModelRejected)
    assert device_error(type(caught.value).__name__, str(caught.value))

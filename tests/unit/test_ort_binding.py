"""IO binding (robustness/backends/ort_backend.py `bound_run`), exercised on the CPU session.

The CUDA session binds the same way with device "cuda" (tests/gpu/test_cuda_ort.py); here
the binding itself (shapes, dtypes, the buffer read in place, chunking) is checked against
a plain session.run.
"""

from __future__ import annotations

import torch

from robustness.backends.ort_backend import OrtBackend, bound_run
from robustness.config import BackendKind
from robustness.loading import load
from tests.factories.models import cnn_onnx, digits_split, natural_cnn

CPU = torch.device("cpu")


def _backend() -> OrtBackend:
    x = digits_split().x_test[:32]
    backend = load(cnn_onnx(natural_cnn()), x, device=CPU, backend=BackendKind.ONNXRUNTIME)
    assert isinstance(backend.backend, OrtBackend)
    return backend.backend


def test_a_bound_call_equals_session_run() -> None:
    backend = _backend()
    assert not backend.bound  # the CPU session keeps the numpy path
    x = torch.from_numpy(digits_split().x_test[:50]).contiguous()
    bound = bound_run(backend.session, backend.input_name, backend.output_name, x)
    plain = backend.session.run(None, {backend.input_name: x.numpy()})[0]
    assert bound.dtype == torch.float32
    assert bound.device == CPU
    assert torch.equal(bound, torch.from_numpy(plain))


def test_a_bound_call_reads_the_tensor_it_is_given() -> None:
    """A slice of a larger tensor (another offset into the same buffer) is what is read."""
    backend = _backend()
    x = torch.from_numpy(digits_split().x_test[:40]).contiguous()
    tail = bound_run(backend.session, backend.input_name, backend.output_name, x[20:])
    whole = bound_run(backend.session, backend.input_name, backend.output_name, x)
    assert torch.equal(tail, whole[20:])

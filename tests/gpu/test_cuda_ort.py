"""onnxruntime's CUDA execution provider, fed through IO binding, against the CPU session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from robustness.backends.ort_backend import OrtBackend
from robustness.config import BackendKind
from robustness.loading import load
from tests.gpu.cuda import CPU, CUDA, digits_data, digits_onnx, needs_cuda

pytestmark = [
    pytest.mark.gpu,
    needs_cuda,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason=f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
        f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu",
    ),
]


def _ort(device: torch.device) -> OrtBackend:
    x, _ = digits_data(32)
    backend = load(digits_onnx(), x, device=device, backend=BackendKind.ONNXRUNTIME).backend
    assert isinstance(backend, OrtBackend)
    return backend


def test_the_session_runs_on_the_gpu_and_reads_torch_buffers() -> None:
    gpu, cpu = _ort(CUDA), _ort(CPU)
    assert gpu.bound
    assert gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    x = torch.from_numpy(digits_data(64)[0])
    out = gpu.raw_outputs(x.to(CUDA))
    assert out.device.type == "cuda"
    ref = cpu.raw_outputs(x)
    assert torch.allclose(out.cpu(), ref, rtol=1e-4, atol=1e-5)


def test_finite_difference_gradients_match_the_cpu() -> None:
    """64 features: central differences, the same on both sessions up to float rounding."""
    gpu, cpu = _ort(CUDA), _ort(CPU)
    x = torch.from_numpy(digits_data(16)[0])
    g = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    on_gpu = gpu.vjp(x.to(CUDA), g.to(CUDA))
    on_cpu = cpu.vjp(x, g)
    assert on_gpu.device.type == "cuda"
    cos = torch.nn.functional.cosine_similarity(on_gpu.cpu().flatten(1), on_cpu.flatten(1))
    assert float(cos.min()) > 0.999
    assert np.isfinite(on_gpu.cpu().numpy()).all()

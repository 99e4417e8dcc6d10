"""The engine on CUDA: the same numbers as on the CPU, with every batch on the GPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from robustness.backends.base import ScoreBackend
from robustness.backends.torch_backend import parity
from robustness.config import BackendKind
from robustness.engine import run_audit
from robustness.loading import PARITY_RTOL, load
from robustness.spec import AuditSpec
from tests.gpu.cuda import CPU, CUDA, digits_data, digits_onnx, needs_cuda, resnet50, resnet_probe

pytestmark = [pytest.mark.gpu, needs_cuda]
SPEC = AuditSpec(epsilons=(0.1, 0.2), steps=20, landscape_samples=1, landscape_resolution=7)
Record = Callable[[str, object], None]


@dataclass
class Watched:
    """The backend as the engine sees it, noting the device of every batch it is given."""

    inner: ScoreBackend
    devices: set[str]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        self.devices.add(str(x.device))
        return self.inner.scores(x)

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        self.devices.add(str(x.device))
        return self.inner.raw_outputs(x)


def test_the_audit_on_cuda_matches_the_cpu(record_property: Record) -> None:
    x, y = digits_data(256)
    cpu = load(digits_onnx(), x[:32], device=CPU)
    gpu = load(digits_onnx(), x[:32], device=CUDA)
    assert gpu.backend.kind is BackendKind.TORCH, gpu.statuses_dict()
    watched = Watched(gpu.backend, set())
    on_cpu = run_audit(cpu.backend, x, y, SPEC, device=CPU)
    on_gpu = run_audit(watched, x, y, SPEC, device=CUDA)
    assert watched.devices == {"cuda:0"}
    assert on_gpu.manifest is not None
    assert on_gpu.manifest.device == "cuda"
    assert on_gpu.batch_size == SPEC.batch_size  # a digits CNN fits: the batch asked for
    for a, b in zip(on_cpu.per_epsilon, on_gpu.per_epsilon, strict=True):
        # The random starts differ (CUDA's generator is not the CPU's): ψ agrees within the
        # search's own spread, the deterministic clean pass to a sample, FGSM
        # (a sign of the gradient) to 2%.
        ratio = b.divergence.mean / a.divergence.mean
        record_property(f"psi_mean_cuda_over_cpu_eps{a.epsilon:g}", round(ratio, 4))
        assert abs(ratio - 1) < 0.05
        assert np.corrcoef(np.asarray(a.per_sample), np.asarray(b.per_sample))[0, 1] > 0.95
        assert abs(a.clean_accuracy - b.clean_accuracy) <= 1 / len(x)  # type: ignore[operator]
        assert abs(a.fgsm_accuracy - b.fgsm_accuracy) <= 0.02  # type: ignore[operator]
        assert abs(a.pgd_accuracy - b.pgd_accuracy) <= 0.03  # type: ignore[operator]
    assert len(on_gpu.landscapes) == 1


def test_cuda_convolutions_are_full_float32(record_property: Record) -> None:
    """ResNet-50 on CUDA passes the 1e-4 parity check against onnxruntime on the CPU in IEEE
    float32; with cuDNN's TF32 convolutions (torch's default) it would not."""
    loaded = resnet50("cuda")
    assert loaded.backend.kind is BackendKind.TORCH, loaded.statuses_dict()
    assert not torch.backends.cudnn.allow_tf32
    probe = torch.from_numpy(resnet_probe())
    reference = loaded.reference.raw_outputs(probe).cpu().numpy()
    ieee = parity(loaded.backend.raw_outputs(probe).cpu().numpy(), reference)[1]
    torch.backends.cudnn.allow_tf32 = True
    try:
        tf32 = parity(loaded.backend.raw_outputs(probe).cpu().numpy(), reference)[1]
    finally:
        torch.backends.cudnn.allow_tf32 = False
    record_property("resnet50_parity_relative_ieee", f"{ieee:.2e}")
    record_property("resnet50_parity_relative_tf32", f"{tf32:.2e}")
    assert ieee <= PARITY_RTOL

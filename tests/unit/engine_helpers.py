"""Run the real engine in-process on CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustness.config import BackendKind
from robustness.engine import run_audit
from robustness.loading import LoadedModel, load
from robustness.results import AuditResult
from robustness.spec import AuditSpec

CPU = torch.device("cpu")


def load_cpu(
    onnx_bytes: bytes, x: np.ndarray, backend: BackendKind = BackendKind.AUTO
) -> LoadedModel:
    return load(onnx_bytes, x[:32], device=CPU, backend=backend)


def audit(
    onnx_bytes: bytes,
    x: np.ndarray,
    y: np.ndarray,
    backend: BackendKind = BackendKind.AUTO,
    **spec: Any,
) -> AuditResult:
    loaded = load_cpu(onnx_bytes, x, backend)
    assert backend is BackendKind.AUTO or loaded.backend.kind is backend
    return run_audit(loaded.backend, x, y, AuditSpec(**spec), device=CPU)


def mean_psi(result: AuditResult, k: int = 0) -> float:
    return result.per_epsilon[k].divergence.mean

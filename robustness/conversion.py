"""ONNX graph → torch module: each converter in turn, the fused graph first, kept only where
its scores match onnxruntime's on real inputs (the parity check)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import torch

from robustness.backends.torch_backend import CONVERTERS, TorchBackend, fold_constants, parity
from robustness.errors import device_error
from robustness.onnx_fusion import FUSING_CONVERTERS
from robustness.onnx_fusion import fuse as fuse_patterns

PARITY_RTOL = 1e-4


@dataclass(frozen=True)
class BackendStatus:
    ok: bool
    parity_max_abs_diff: float | None = None
    parity_relative: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "parity_max_abs_diff": self.parity_max_abs_diff,
            "parity_relative": self.parity_relative,
            "reason": self.reason,
        }


def try_torch(
    graph: onnx.ModelProto,
    log_probs: bool,
    device: torch.device,
    probe: np.ndarray,
    reference: np.ndarray,
    *,
    fuse: bool = True,
) -> tuple[TorchBackend | None, BackendStatus, list[str]]:
    """The first converter whose module matches onnxruntime, its status, and what failed.

    Each converter first gets the graph with its decomposed patterns fused, where it can
    convert them; a fused module is kept only if it, too, matches onnxruntime's scores.
    """
    failures: list[str] = []
    status = BackendStatus(ok=False)
    for converter in CONVERTERS:
        if fuse and (
            fused := _convert_fused(graph, converter, log_probs, device, probe, reference)
        ):
            tried = f" ({'; '.join(failures)})" if failures else ""
            return fused[0], fused[1], [f"converted to torch by {converter}{tried}", fused[2]]
        candidate, status = _convert(graph, converter, log_probs, device, probe, reference)
        if candidate is not None:
            tried = f" ({'; '.join(failures)})" if failures else ""
            return candidate, status, [f"converted to torch by {converter}{tried}"]
        failures.append(f"{converter}: {status.reason}")
    return None, replace(status, reason="; ".join(failures)), []


def _convert_fused(
    graph: onnx.ModelProto,
    converter: str,
    log_probs: bool,
    device: torch.device,
    probe: np.ndarray,
    reference: np.ndarray,
) -> tuple[TorchBackend, BackendStatus, str] | None:
    """The converter's module of the fused graph, if any pattern fused and parity holds."""
    if converter not in FUSING_CONVERTERS:
        return None
    try:
        fusion = fuse_patterns(fold_constants(graph))  # shape arithmetic folds to constants
    except Exception:
        return None
    if not fusion.counts:
        return None
    candidate, status = _convert(fusion.model, converter, log_probs, device, probe, reference)
    if candidate is None:
        return None
    return candidate, status, f"rewritten for native torch ops: {fusion.label()} (checked)"


def _convert(
    graph: onnx.ModelProto,
    converter: str,
    log_probs: bool,
    device: torch.device,
    probe: np.ndarray,
    reference: np.ndarray,
) -> tuple[TorchBackend | None, BackendStatus]:
    try:
        candidate = TorchBackend(
            graph, log_probabilities=log_probs, device=device, converter=converter
        )
        got = candidate.raw_outputs(torch.from_numpy(probe)).cpu().numpy()
    except Exception as exc:
        if device_error(type(exc).__name__, str(exc)):
            raise  # a failing GPU must not silently turn an audit into finite differences
        return None, BackendStatus(ok=False, reason=f"conversion failed: {str(exc)[:300]}")
    if got.shape != reference.shape:
        return None, BackendStatus(
            ok=False, reason=f"converted output shape {got.shape} != onnxruntime {reference.shape}"
        )
    diff, rel = parity(got, reference)
    if not rel <= PARITY_RTOL:
        return None, BackendStatus(
            ok=False,
            parity_max_abs_diff=diff,
            parity_relative=rel,
            reason=f"parity failed: relative max |Δ| {rel:.2e} > {PARITY_RTOL:.0e}",
        )
    return candidate, BackendStatus(ok=True, parity_max_abs_diff=diff, parity_relative=rel)

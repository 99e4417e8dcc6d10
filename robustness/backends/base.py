"""The protocol every backend implements: differentiable class scores on an explicit device."""

from __future__ import annotations

from typing import Protocol

import torch

from robustness.config import BackendKind


class ScoreBackend(Protocol):
    """Class scores z(x) of shape [N, C] (logits, or log-probabilities), differentiable in x.

    The torch backend differentiates with autograd; the onnxruntime backend returns a tensor
    whose backward pass estimates the vector-Jacobian product by finite differences, so the
    attacks are written once for both.
    """

    kind: BackendKind
    device: torch.device

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, *input_shape] on `device` → [N, C] scores on `device`."""
        ...

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's own output (before any log), without gradient: for parity checks."""
        ...


def to_scores(raw: torch.Tensor, *, log_probabilities: bool) -> torch.Tensor:
    """Turn graph outputs into scores: probabilities become log-probabilities (metric.md)."""
    if raw.ndim != 2:
        raise ValueError(f"the score output has shape {list(raw.shape)}; expected [N, C]")
    return torch.log(raw.clamp_min(1e-12)) if log_probabilities else raw

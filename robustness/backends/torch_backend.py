"""Gradient backend: the ONNX graph converted to torch (onnx2pytorch), checked for parity.

onnx2pytorch 0.6.0 converted all nine light-zoo models (after constant folding), legacy torch
exports with Gelu, and skl2onnx MLPs; onnx2torch failed on opset >= 18 ops, hence the choice.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import torch

from robustness.backends.base import to_scores
from robustness.config import BackendKind
from robustness.errors import ModelRejected


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold with onnxslim: zoo models build weights with ConstantOfShape at run time."""
    import onnxslim

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded = onnxslim.slim(model, no_shape_infer=False)
    except Exception:
        return model
    return folded if isinstance(folded, onnx.ModelProto) else model


class TorchBackend:
    """Scores from a torch module converted from the scores-only ONNX graph."""

    kind = BackendKind.TORCH

    def __init__(
        self, graph: onnx.ModelProto, *, log_probabilities: bool, device: torch.device
    ) -> None:
        from onnx2pytorch import ConvertModel

        self.device = device
        self.log_probabilities = log_probabilities
        folded = fold_constants(graph)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = ConvertModel(folded, experimental=True)
        except Exception as exc:
            raise ModelRejected(f"onnx2pytorch cannot convert this graph: {exc}") from exc
        self.module = module.to(device).eval().float()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(x).float()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return to_scores(self._forward(x).float(), log_probabilities=self.log_probabilities)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x.to(self.device, torch.float32))
        if isinstance(out, list | tuple):
            out = out[0]
        return out


def parity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |Δ|, max |Δ| relative to the largest reference magnitude)."""
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    scale = float(np.max(np.abs(b))) or 1.0
    return diff, diff / scale

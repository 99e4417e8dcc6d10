"""Gradient backend: the ONNX graph converted to torch, checked for parity by the caller.

Two converters, tried in order (CONVERTERS); robustness.loading keeps the first whose scores
match onnxruntime's. onnx2torch 1.5.15 comes first: it builds a torch.fx graph, with no
Python dispatch per node, and the same PGD step cost 1.11× / 1.76× / 2.05× the native timm
module on resnet18 / vit_tiny / convnext_atto, against onnx2pytorch's 1.21× / 2.06× / 2.35×
(64×64 inputs, batch 16, CPU, one thread). It lacks some opset ≥ 18 forms (ReduceMean with
axes as an input, say). onnx2pytorch 0.6.0 converts those, and all nine light-zoo models
after constant folding.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import torch

from robustness.backends.base import to_scores
from robustness.config import BackendKind
from robustness.errors import ModelRejected
from robustness.onnx_converter_prep import layer_norm_shapes


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


def _onnx2pytorch(graph: onnx.ModelProto) -> torch.nn.Module:
    from onnx2pytorch import ConvertModel

    return ConvertModel(fold_constants(graph), experimental=True)


def _onnx2torch(graph: onnx.ModelProto) -> torch.nn.Module:
    from onnx2torch import convert

    from robustness.backends.fused_modules import register_onnx2torch

    register_onnx2torch()  # the fused LayerNorm / GELU ops of robustness.onnx_fusion
    return convert(layer_norm_shapes(fold_constants(graph)))


CONVERTERS: dict[str, Callable[[onnx.ModelProto], torch.nn.Module]] = {
    "onnx2torch": _onnx2torch,
    "onnx2pytorch": _onnx2pytorch,
}


class TorchBackend:
    """Scores from a torch module converted from the scores-only ONNX graph."""

    kind = BackendKind.TORCH

    def __init__(
        self,
        graph: onnx.ModelProto,
        *,
        log_probabilities: bool,
        device: torch.device,
        converter: str = "onnx2pytorch",
    ) -> None:
        self.device = device
        self.log_probabilities = log_probabilities
        self.converter = converter
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = CONVERTERS[converter](graph)
        except Exception as exc:
            raise ModelRejected(f"{converter} cannot convert this graph: {exc}") from exc
        if device.type == "cuda":
            ieee_float32()
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


def ieee_float32() -> None:
    """Full float32 convolutions and matrix products on CUDA, for this process.

    cuDNN's default lets convolutions round their inputs to TF32 (10-bit mantissa), which
    onnxruntime, the CPU and the parity check (relative 1e-4) do not: ψ on a GPU would
    then differ from ψ on a CPU by more than the search's own noise (tests/gpu measures
    it). The legacy flags, not the per-backend `fp32_precision` ones: once those are set,
    reading `allow_tf32` (torch.compile does) raises in torch 2.14.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def parity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |Δ|, max |Δ| relative to the largest reference magnitude)."""
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    scale = float(np.max(np.abs(b))) or 1.0
    return diff, diff / scale

"""onnx2torch converters for the fused ops of robustness.onnx_fusion: native torch modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustness.onnx_fusion import ATTENTION, FUSED_DOMAIN, GELU, LAYER_NORM, LINEAR


def register_onnx2torch() -> None:
    """Teach onnx2torch the fused ops (idempotent): nn.LayerNorm and nn.GELU modules."""
    from onnx2torch.node_converters.layer_norm import OnnxLayerNorm
    from onnx2torch.node_converters.registry import (
        _CONVERTER_REGISTRY,
        OperationDescription,
        get_converter,
    )
    from onnx2torch.utils.common import (
        OnnxMapping,
        OperationConverterResult,
        onnx_mapping_from_node,
    )

    def layer_norm(node, graph):  # type: ignore[no-untyped-def]
        eps = float(node.attributes.get("epsilon", 1e-5))
        x, scale, bias = node.input_values
        if scale in graph.initializers and bias in graph.initializers:
            weight = graph.initializers[scale].to_torch()
            module = torch.nn.LayerNorm(weight.shape[0], eps=eps)
            with torch.no_grad():
                module.weight.copy_(weight)
                module.bias.copy_(graph.initializers[bias].to_torch())
            mapping = OnnxMapping(inputs=(x,), outputs=node.output_values)
            return OperationConverterResult(torch_module=module, onnx_mapping=mapping)
        return OperationConverterResult(
            torch_module=OnnxLayerNorm(axis=-1, epsilon=eps),
            onnx_mapping=onnx_mapping_from_node(node),
        )

    def gelu(node, graph):  # type: ignore[no-untyped-def]
        approximate = node.attributes.get("approximate", "none")
        return OperationConverterResult(
            torch_module=torch.nn.GELU(approximate=approximate),
            onnx_mapping=onnx_mapping_from_node(node),
        )

    def attention(node, graph):  # type: ignore[no-untyped-def]
        return OperationConverterResult(
            torch_module=_Attention(float(node.attributes["scale"])),
            onnx_mapping=onnx_mapping_from_node(node),
        )

    def linear(node, graph):  # type: ignore[no-untyped-def]
        x, w, b = node.input_values
        if w not in graph.initializers or b not in graph.initializers:
            return OperationConverterResult(
                torch_module=_MatMulAdd(), onnx_mapping=onnx_mapping_from_node(node)
            )
        weight = graph.initializers[w].to_torch()
        module = torch.nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            module.weight.copy_(weight.T)
            module.bias.copy_(graph.initializers[b].to_torch())
        mapping = OnnxMapping(inputs=(x,), outputs=node.output_values)
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    converters = {LAYER_NORM: layer_norm, GELU: gelu, ATTENTION: attention, LINEAR: linear}
    # Opset 18-19 forms (robustness.onnx_fusion._NEWER_FORMS): onnx2torch's older converter.
    for op, version in (("Reshape", 14), ("Shape", 15), ("ReduceMean", 13)):
        converters[op] = get_converter(op, version)
    for op, converter in converters.items():
        _CONVERTER_REGISTRY[OperationDescription(FUSED_DOMAIN, op, 1)] = converter


class _Attention(torch.nn.Module):
    """softmax(q kᵀ · scale) v as one fused kernel."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


class _MatMulAdd(torch.nn.Module):
    """x·W + b when W and b are not plain initializers of the converted graph."""

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, w) + b

"""Lower onnxruntime's fused `com.microsoft` ops back to standard ONNX ops.

Users often save the graph an onnxruntime session optimised (`optimized_model_filepath`).
Those files contain fused contrib ops, such as FusedConv, BiasGelu and
SkipLayerNormalization. The torch converters do not know these ops. Each one is a short
formula over standard ops, so it is rewritten here. The parity check in robustness.loading
then compares the rewritten graph with onnxruntime running the original, which executes
these ops natively. Ops not listed in LOWERABLE are refused at intake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONTRIB = "com.microsoft"
# ORT's `com.microsoft.nchwc` ops come from ORT_ENABLE_ALL and fit one CPU's vector width.
NCHWC = "com.microsoft.nchwc"
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
LN_EPSILON = 1e-12  # SkipLayerNormalization's default epsilon in onnxruntime's schema
QUICK_GELU_ALPHA = 1.702  # QuickGelu's default alpha in onnxruntime's schema


class _Builder:
    """Emits standard nodes whose names derive from the node they replace."""

    def __init__(self, node: onnx.NodeProto) -> None:
        self.prefix = f"{node.name or node.output[0]}/lowered"
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return f"{self.prefix}/{self.count}"

    def const(self, value: float | Sequence[int], dtype: type = np.float32) -> str:
        out = self.name()
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self.name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(), **attrs))
        return out


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _activation(b: _Builder, x: str, name: str, params: Sequence[float], out: str) -> str | None:
    """The activation a fused op applies after its main op, or None when it is unknown."""
    if name in ("", "Identity"):
        return b.op("Identity", [x], out)
    if name in ("Relu", "Sigmoid", "Tanh"):
        return b.op(name, [x], out)
    if name == "LeakyRelu":
        return b.op("LeakyRelu", [x], out, alpha=float(params[0]) if params else 0.01)
    if name == "HardSigmoid" and len(params) >= 2:
        return b.op("HardSigmoid", [x], out, alpha=float(params[0]), beta=float(params[1]))
    if name == "Clip" and len(params) >= 2:
        return b.op("Clip", [x, b.const(params[0]), b.const(params[1])], out)
    return None


def _gelu_erf(b: _Builder, x: str, out: str) -> str:
    """0.5 · x · (1 + erf(x / √2)), the exact GELU."""
    erf = b.op("Erf", [b.op("Mul", [x, b.const(1.0 / math.sqrt(2.0))])])
    one_plus = b.op("Add", [erf, b.const(1.0)])
    return b.op("Mul", [b.op("Mul", [x, one_plus]), b.const(0.5)], out)


def _fused_conv(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    attrs = _attrs(node)
    conv_attrs = {k: v for k, v in attrs.items() if k not in ("activation", "activation_params")}
    inputs = list(node.input[:3])
    y = b.op("Conv", inputs, **conv_attrs)
    if len(node.input) > 3 and node.input[3]:
        y = b.op("Add", [y, node.input[3]])
    params = list(attrs.get("activation_params", []))
    return _activation(b, y, str(attrs.get("activation", "")), params, node.output[0]) is not None


def _fused_gemm(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    attrs = _attrs(node)
    gemm_attrs = {k: attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in attrs}
    y = b.op("Gemm", list(node.input), **gemm_attrs)
    params = [float(attrs[k]) for k in ("activation_alpha", "activation_beta") if k in attrs]
    return _activation(b, y, str(attrs.get("activation", "")), params, node.output[0]) is not None


def _gelu(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    _gelu_erf(b, node.input[0], node.output[0])
    return True


def _bias_gelu(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    _gelu_erf(b, b.op("Add", [node.input[0], node.input[1]]), node.output[0])
    return True


def _fast_gelu(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    """0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³))), after the optional bias."""
    x = node.input[0]
    if len(node.input) > 1 and node.input[1]:
        x = b.op("Add", [x, node.input[1]])
    cube = b.op("Mul", [b.op("Mul", [x, x]), x])
    inner = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715)])])
    tanh = b.op("Tanh", [b.op("Mul", [inner, b.const(SQRT_2_OVER_PI)])])
    one_plus = b.op("Add", [tanh, b.const(1.0)])
    b.op("Mul", [b.op("Mul", [x, one_plus]), b.const(0.5)], node.output[0])
    return True


def _quick_gelu(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    alpha = float(_attrs(node).get("alpha", QUICK_GELU_ALPHA))
    x = node.input[0]
    gate = b.op("Sigmoid", [b.op("Mul", [x, b.const(alpha)])])
    b.op("Mul", [x, gate], node.output[0])
    return True


def _skip_layer_norm(node: onnx.NodeProto, b: _Builder, opset: int) -> bool:
    """LayerNorm(input + skip + bias) over the last axis; the sum is output 3 when asked for."""
    epsilon = float(_attrs(node).get("epsilon", LN_EPSILON))
    ins = list(node.input) + [""] * (5 - len(node.input))
    total = b.op("Add", [ins[0], ins[1]])
    if ins[4]:
        total = b.op("Add", [total, ins[4]])
    outs = list(node.output) + [""] * (4 - len(node.output))
    if outs[3]:
        b.op("Identity", [total], outs[3])
    beta = [ins[3]] if ins[3] else []
    if opset >= 17:
        stats = list(outs[1:3])
        while stats and not stats[-1]:
            stats.pop()
        b.nodes.append(
            helper.make_node(
                "LayerNormalization",
                [total, ins[2], *beta],
                [outs[0], *stats],
                name=b.name(),
                axis=-1,
                epsilon=epsilon,
            )
        )
        return True
    if outs[1] or outs[2]:
        return False  # the statistics outputs exist as such only in opset 17's LayerNormalization
    mean = b.op("ReduceMean", [total], axes=[-1])
    centred = b.op("Sub", [total, mean])
    var = b.op("ReduceMean", [b.op("Mul", [centred, centred])], axes=[-1])
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(epsilon)])])])
    scaled = b.op("Mul", [b.op("Mul", [centred, inv_std]), ins[2]])
    b.op("Add", [scaled, ins[3]] if ins[3] else [scaled, b.const(0.0)], outs[0])
    return True


LOWERINGS: dict[str, Callable[[onnx.NodeProto, _Builder, int], bool]] = {
    "FusedConv": _fused_conv,
    "FusedGemm": _fused_gemm,
    "Gelu": _gelu,
    "BiasGelu": _bias_gelu,
    "FastGelu": _fast_gelu,
    "QuickGelu": _quick_gelu,
    "SkipLayerNormalization": _skip_layer_norm,
}
LOWERABLE = frozenset(LOWERINGS)


def contrib_ops(model: onnx.ModelProto) -> list[str]:
    """The com.microsoft op types in the main graph, sorted."""
    return sorted({n.op_type for n in model.graph.node if n.domain == CONTRIB})


def lower_contrib_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with every lowerable com.microsoft op rewritten, and the ops kept.

    Returns `model` itself when it has no such op. A node whose attributes fall outside the
    formulas above (an unknown fused activation, say) is kept as it is and named in the list.
    """
    if not any(n.domain == CONTRIB for n in model.graph.node):
        return model, []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes: list[onnx.NodeProto] = []
    kept: set[str] = set()
    for node in m.graph.node:
        lower = LOWERINGS.get(node.op_type) if node.domain == CONTRIB else None
        builder = _Builder(node)
        if lower is not None and lower(node, builder, opset):
            nodes.extend(builder.nodes)
            continue
        if node.domain == CONTRIB:
            kept.add(node.op_type)
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    if not kept:
        imports = [o for o in m.opset_import if o.domain != CONTRIB]
        del m.opset_import[:]
        m.opset_import.extend(imports)
    return m, sorted(kept)

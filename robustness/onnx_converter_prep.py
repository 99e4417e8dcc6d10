"""Shape facts onnx2torch needs and some valid graphs leave out.

onnx2torch 1.5.15 sizes `nn.LayerNorm` from the value_info of the LayerNormalization input.
That value_info is missing in files saved by an onnxruntime session, and its last dims are
symbolic after a dynamic Reshape (timm's MobileViT at opset 17). The conversion then fails
("normalized_shape = [0]", or a KeyError on the tensor's name), although the normalized dims
are known: they are the shape of the node's Scale initializer. This module writes them in.
The parity check in robustness.loading still judges the converted module.
"""

from __future__ import annotations

import onnx
from onnx import helper


def layer_norm_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which each LayerNormalization input's normalized dims are those of its Scale.

    Only nodes with a negative axis, an initializer Scale with one dim per normalized axis, and
    no known dim that disagrees are touched; `model` itself is returned when none is.
    """
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    targets: dict[str, list[int]] = {}
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and axis < 0 and len(scale) == -axis:
            targets[node.input[0]] = scale
    if not targets:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    values = {v.name: v for v in (*m.graph.value_info, *m.graph.input, *m.graph.output)}
    for name, dims in targets.items():
        value = values.get(name)
        if value is None:
            value = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)
            m.graph.value_info.append(value)
            continue
        shape = value.type.tensor_type.shape
        if not value.type.tensor_type.HasField("shape") or len(shape.dim) < len(dims):
            continue
        tail = shape.dim[len(shape.dim) - len(dims) :]
        if any(
            d.HasField("dim_value") and d.dim_value != n for d, n in zip(tail, dims, strict=True)
        ):
            continue  # a known dim disagrees: leave the graph as it is
        for d, n in zip(tail, dims, strict=True):
            d.Clear()
            d.dim_value = n
    return m

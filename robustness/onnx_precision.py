"""A float32 copy of a float16 or bfloat16 graph, so every backend can compute it.

Exports made after `model.half()` take and return float16 tensors, and onnxruntime refuses a
float32 feed. Gradients in half precision are coarse on a CPU, and onnx2pytorch converts only
float32 graphs. So robaudit computes such a model in float32 from a copy whose half-precision
tensors, casts and types are all widened. The copy is then compared with onnxruntime running
the original in its own precision, with a tolerance scaled to that precision
(`HALF_PARITY_RTOL`); robustness.loading keeps the copy only when the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HALF = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Relative max |Δ| allowed between the float32 copy and the half graph. It is a few units in
# the last place of float16 (2^-10 ≈ 1e-3) and of bfloat16 (2^-7 ≈ 8e-3) at the scale of the
# scores, accumulated over the graph's layers.
HALF_PARITY_RTOL: dict[int, float] = {TensorProto.FLOAT16: 1e-2, TensorProto.BFLOAT16: 5e-2}


def half_input_type(model: onnx.ModelProto) -> int | None:
    """The half type of the model's first graph input, or None when it takes no half tensor."""
    for value in model.graph.input:
        if value.type.tensor_type.elem_type in HALF:
            return int(value.type.tensor_type.elem_type)
    return None


def float32_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every float16/bfloat16 tensor, type and cast is float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _widen_graph(m.graph)
    for function in m.functions:
        _widen_nodes(function.node)
    return m


def _widen_tensor(tensor: TensorProto) -> None:
    if tensor.data_type in HALF:
        wide = numpy_helper.from_array(
            numpy_helper.to_array(tensor).astype(np.float32), tensor.name
        )
        tensor.CopyFrom(wide)


def _widen_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for sparse in graph.sparse_initializer:
        _widen_tensor(sparse.values)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type in HALF:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    _widen_nodes(graph.node)


def _widen_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    for node in nodes:
        for attr in node.attribute:
            if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT:
                if attr.i in HALF:
                    attr.i = TensorProto.FLOAT
            elif attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _widen_graph(sub)

"""Per-channel normalization as ONNX nodes: prepended to a graph, or found at its start.

Prepending puts `(x − mean) / std` in front of the graph as one Sub and one Div node with
constant initializers, so every backend runs the same graph: onnxruntime as is, and both
torch converters as plain `sub`/`div` ops that gradients flow through (no clamp, no cast).
The graph's data input is renamed `<name>__pixels` and the Div writes the old name, so no
node of the original graph, nor of any subgraph, needs rewriting.

Finding: a graph exported with its normalization inside begins with Sub/Div or Mul/Add by
constants (through Cast, Transpose or Identity). Declaring mean/std for such a graph would
normalize twice, so intake says what it found.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from robustness.preprocessing import Preprocessing

AFFINE_OPS = ("Sub", "Div", "Mul", "Add")
PASS_THROUGH = ("Cast", "Transpose", "Identity", "Unsqueeze")
MAX_LOOK = 6  # nodes followed from the input before giving up
SHOWN_VALUES = 4


def prepend_normalization(
    model: onnx.ModelProto, input_name: str, pre: Preprocessing
) -> onnx.ModelProto:
    """A copy of `model` whose data input takes pixels and is normalized by `pre` first."""
    if pre.mean is None or pre.std is None:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inp = next(i for i in graph.input if i.name == input_name)
    rank = len(inp.type.tensor_type.shape.dim)
    pre.check_input(_dims(inp))
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    # Broadcast from the right: [C, 1, 1] for NCHW images, [C] for channels last.
    shape = [len(pre.mean)] + [1] * (rank - 1 - pre.channel_axis(rank))
    taken = _names(graph)
    name = inp.name
    pixels, mean, std, centered = (
        _fresh(f"{name}__{part}", taken) for part in ("pixels", "mean", "std", "centered")
    )
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.asarray(pre.mean, dtype=dtype).reshape(shape), mean),
            numpy_helper.from_array(np.asarray(pre.std, dtype=dtype).reshape(shape), std),
        ]
    )
    inp.name = pixels
    nodes = [
        helper.make_node("Sub", [pixels, mean], [centered], name=f"{pixels}__sub_mean"),
        helper.make_node("Div", [centered, std], [name], name=f"{pixels}__div_std"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    if out.ir_version < 4:
        out.ir_version = 4  # the new initializers stand alone, as IR 4 allows
    return out


def input_normalization(model: onnx.ModelProto, input_name: str) -> str | None:
    """'Sub by [..], Div by [..]' if the graph's first nodes normalize its input; else None."""
    consts = _constants(model.graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    tensor = input_name
    found: list[str] = []
    for _ in range(MAX_LOOK):
        users = consumers.get(tensor, [])
        if len(users) != 1:
            break
        node = users[0]
        if node.op_type in PASS_THROUGH and node.input[0] == tensor:
            tensor = node.output[0]
            continue
        other = _constant_operand(node, tensor, consts)
        if other is None:
            break
        found.append(f"{node.op_type} by {_shown(other)}")
        tensor = node.output[0]
    return ", ".join(found) or None


def _constant_operand(
    node: onnx.NodeProto, tensor: str, consts: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The constant of `tensor − c`, `tensor / c`, `tensor · c` or `tensor + c`."""
    if node.op_type not in AFFINE_OPS or len(node.input) != 2:
        return None
    first, second = node.input
    if first == tensor and second in consts:
        return consts[second]
    if second == tensor and first in consts and node.op_type in ("Mul", "Add"):
        return consts[first]
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _shown(values: np.ndarray) -> str:
    flat = np.asarray(values, dtype=np.float64).ravel()
    text = ", ".join(f"{v:.4g}" for v in flat[:SHOWN_VALUES])
    return f"[{text}{', …' if flat.size > SHOWN_VALUES else ''}]"


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]

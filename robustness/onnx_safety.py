"""Intake rules for untrusted ONNX bytes: every graph, every tensor, every function.

Two passes. `prescan` reads the protobuf wire format directly, without building any message,
so a file of a million nodes or a thousand nested subgraphs is refused after a few hundred
thousand varint reads instead of after protobuf has materialised it (1.9 GB for 1M nodes).
`check_parsed` then walks the parsed model the way onnx and onnxruntime will: the main graph,
the subgraphs of If/Loop/Scan at any depth, training graphs, local functions, initializers,
sparse initializers and tensor attributes. It refuses external data anywhere (so nothing ever
resolves a path on the model's behalf), foreign operator domains, and shapes that are huge
as constants. Shapes computed at run time are bounded by the sandbox, not here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from robustness.errors import ModelRejected
from robustness.onnx_contrib import CONTRIB, LOWERABLE, NCHWC

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
SHAPE_VECTOR_MAX = 1024  # a constant that feeds a shape input is a short vector or a scalar

# Protobuf field numbers (onnx/onnx.proto) the prescan follows.
MODEL_GRAPH, MODEL_TRAINING, MODEL_FUNCTIONS = 7, 20, 25
TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
GRAPH_NODES = 1
FUNCTION_NODES = 7
NODE_ATTRIBUTES = 5
ATTR_GRAPH, ATTR_GRAPHS = 6, 11


@dataclass(frozen=True)
class IntakeLimits:
    """How big an untrusted graph may be; the defaults fit every model-zoo classifier."""

    max_nodes: int = 100_000  # all graphs and functions together; ResNet-50 has ~180
    max_depth: int = 8  # graph nesting: If in Loop in If…; real exports nest 1-3 deep
    max_elements: int = 1 << 28  # one tensor built from a constant shape: 1 GiB of float32
    max_loop_iterations: int = 1_000_000  # a constant Loop trip count


class _Malformed(Exception):
    pass


def prescan(data: bytes, limits: IntakeLimits) -> None:
    """Count nodes and nesting depth from the raw bytes; ModelRejected over a limit."""
    buf = memoryview(data)
    counter = _Counter(buf, limits)
    try:
        for field, start, end in _fields(buf, 0, len(buf)):
            if field == MODEL_GRAPH:
                counter.graph(start, end, 1, "the main graph")
            elif field == MODEL_TRAINING:
                for sub, s, e in _fields(buf, start, end):
                    if sub in TRAINING_GRAPHS:
                        counter.graph(s, e, 1, "a training graph")
            elif field == MODEL_FUNCTIONS:
                counter.nodes(start, end, FUNCTION_NODES, 1, "a function")
    except _Malformed as exc:
        raise ModelRejected(f"not a valid ONNX file: {exc}") from exc


class _Counter:
    def __init__(self, buf: memoryview, limits: IntakeLimits) -> None:
        self.buf, self.limits, self.count = buf, limits, 0

    def graph(self, start: int, end: int, depth: int, where: str) -> None:
        if depth > self.limits.max_depth:
            raise ModelRejected(
                f"{where} nests subgraphs {depth} deep; the limit is {self.limits.max_depth} "
                "(If/Loop/Scan bodies inside each other)"
            )
        self.nodes(start, end, GRAPH_NODES, depth, where)

    def nodes(self, start: int, end: int, node_field: int, depth: int, where: str) -> None:
        buf = self.buf
        for field, s, e in _fields(buf, start, end):
            if field != node_field:
                continue
            self.count += 1
            if self.count > self.limits.max_nodes:
                raise ModelRejected(
                    f"the model has more than {self.limits.max_nodes} nodes; that is the limit "
                    "for one model (all graphs and functions together)"
                )
            for nf, ns, ne in _fields(buf, s, e):
                if nf != NODE_ATTRIBUTES:
                    continue
                for af, a_s, a_e in _fields(buf, ns, ne):
                    if af in (ATTR_GRAPH, ATTR_GRAPHS):
                        self.graph(a_s, a_e, depth + 1, "a subgraph")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of every length-delimited field in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed("a field runs past the end of its message")
            yield key >> 3, pos, pos + length
            pos += length
        else:
            raise _Malformed(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise _Malformed("a field runs past the end of its message")


@dataclass(frozen=True)
class _Scope:
    """One graph or function body: where it is, its nodes, tensors and visible constants."""

    where: str
    nodes: tuple[onnx.NodeProto, ...]
    tensors: tuple[TensorProto, ...]
    sparse: tuple[onnx.SparseTensorProto, ...]
    consts: dict[str, TensorProto]


def check_parsed(model: onnx.ModelProto, limits: IntakeLimits) -> None:
    """Refuse external data, foreign domains and huge constant shapes in every scope."""
    scopes = list(_scopes(model))
    for scope in scopes:
        _reject_external_data(scope)
    local = {(f.domain, f.name) for f in model.functions}
    for scope in scopes:
        for node in scope.nodes:
            if node.domain not in ALLOWED_DOMAINS and (node.domain, node.op_type) not in local:
                _reject_foreign(node, scope.where)
        _reject_huge_shapes(scope, limits)


def _reject_foreign(node: onnx.NodeProto, where: str) -> None:
    """Refuse a node outside the standard domains, unless it is a contrib op we can lower."""
    label = f"node {node.name or node.op_type!r} in {where}"
    if node.domain == CONTRIB and node.op_type in LOWERABLE:
        return
    if node.domain == CONTRIB:
        raise ModelRejected(
            f"{label} uses onnxruntime's fused op {CONTRIB}.{node.op_type}, which robaudit "
            f"cannot rewrite to standard ops (it can: {', '.join(sorted(LOWERABLE))}); "
            "upload the graph as exported, before onnxruntime optimised it"
        )
    if node.domain == NCHWC:
        raise ModelRejected(
            f"{label} uses {NCHWC}.{node.op_type}, a CPU-specific layout op that onnxruntime "
            "writes at ORT_ENABLE_ALL; save the optimised graph at ORT_ENABLE_EXTENDED, or "
            "upload the graph as exported"
        )
    raise ModelRejected(
        f"{label} uses operator domain {node.domain!r}; allowed domains are the standard ONNX "
        f"ones ({sorted(ALLOWED_DOMAINS)}), the model's own functions, and these onnxruntime "
        f"fused ops: {', '.join(sorted(LOWERABLE))}"
    )


def _scopes(model: onnx.ModelProto) -> Iterator[_Scope]:
    yield from _graph_scopes(model.graph, "the main graph", {})
    for info in model.training_info:
        yield from _graph_scopes(info.initialization, "a training graph", {})
        yield from _graph_scopes(info.algorithm, "a training graph", {})
    for function in model.functions:
        where = f"function {function.name!r}"
        yield _scope(where, function.node, (), (), {})
        for node in function.node:
            yield from _subgraph_scopes(node, where, {})


def _graph_scopes(
    graph: onnx.GraphProto, where: str, outer: dict[str, TensorProto]
) -> Iterator[_Scope]:
    consts = {**outer, **{i.name: i for i in graph.initializer}}
    scope = _scope(where, graph.node, graph.initializer, graph.sparse_initializer, consts)
    yield scope
    for node in graph.node:
        yield from _subgraph_scopes(node, where, scope.consts)


def _subgraph_scopes(
    node: onnx.NodeProto, where: str, consts: dict[str, TensorProto]
) -> Iterator[_Scope]:
    for attr in node.attribute:
        subs = [attr.g] if attr.HasField("g") else []
        for sub in [*subs, *attr.graphs]:
            label = f"subgraph {attr.name!r} of node {node.name or node.op_type!r} in {where}"
            yield from _graph_scopes(sub, label, consts)


def _scope(
    where: str,
    nodes: Iterable[onnx.NodeProto],
    initializers: Iterable[TensorProto],
    sparse_initializers: Iterable[onnx.SparseTensorProto],
    consts: dict[str, TensorProto],
) -> _Scope:
    node_list = tuple(nodes)
    tensors = list(initializers)
    sparse = list(sparse_initializers)
    consts = dict(consts)
    for node in node_list:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
            if attr.HasField("sparse_tensor"):
                sparse.append(attr.sparse_tensor)
            sparse.extend(attr.sparse_tensors)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = _constant_value(node)
            if value is not None:
                consts[node.output[0]] = value
    return _Scope(where, node_list, tuple(tensors), tuple(sparse), consts)


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.HasField("t"):
            return attr.t
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), np.int64))
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, np.float32))
    return None


def _reject_external_data(scope: _Scope) -> None:
    sparse_parts = [t for s in scope.sparse for t in (s.values, s.indices)]
    for tensor in [*scope.tensors, *sparse_parts]:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise ModelRejected(
                f"tensor {tensor.name!r} in {scope.where} refers to external data; upload a "
                "single self-contained file "
                "(onnx.save_model(model, path, save_as_external_data=False))"
            )


def _reject_huge_shapes(scope: _Scope, limits: IntakeLimits) -> None:
    for sparse in scope.sparse:
        _check_elements(list(sparse.dims), f"sparse tensor {sparse.values.name!r}", scope, limits)
    for node in scope.nodes:
        label = f"node {node.name or node.op_type!r}"
        const = _ConstReader(scope.consts, node)
        if node.op_type in ("ConstantOfShape", "Reshape", "Expand", "Tile"):
            dims = const.ints(0 if node.op_type == "ConstantOfShape" else 1)
            if dims is not None and node.op_type == "Reshape":
                dims = [d if d > 0 else 1 for d in dims]  # 0 copies a dimension, -1 infers one
            if dims is not None:
                _check_elements(dims, label, scope, limits)
        elif node.op_type == "Range":
            start, stop, step = (const.number(i) for i in range(3))
            if start is not None and stop is not None and step:
                count = (stop - start) / step
                if not math.isfinite(count) or count > limits.max_elements:
                    raise ModelRejected(
                        f"{label} in {scope.where} would build a range from {start} to {stop} "
                        f"by {step}; the limit is {limits.max_elements} elements"
                    )
        elif node.op_type == "Loop":
            trips = const.number(0)
            if trips is not None and trips > limits.max_loop_iterations:
                raise ModelRejected(
                    f"{label} in {scope.where} loops {trips:.0f} times; the limit is "
                    f"{limits.max_loop_iterations} iterations"
                )


def _check_elements(dims: list[int], label: str, scope: _Scope, limits: IntakeLimits) -> None:
    if math.prod(abs(d) for d in dims) > limits.max_elements:
        raise ModelRejected(
            f"{label} in {scope.where} would build a tensor of shape {dims}; the limit is "
            f"{limits.max_elements} elements"
        )


class _ConstReader:
    """Small constant inputs of one node, read only when they are short vectors or scalars."""

    def __init__(self, consts: dict[str, TensorProto], node: onnx.NodeProto) -> None:
        self.consts, self.node = consts, node

    def _array(self, i: int) -> np.ndarray | None:
        if i >= len(self.node.input) or self.node.input[i] not in self.consts:
            return None
        tensor = self.consts[self.node.input[i]]
        if math.prod(tensor.dims) > SHAPE_VECTOR_MAX:
            return None
        try:
            return np.asarray(numpy_helper.to_array(tensor)).ravel()
        except Exception:
            return None  # malformed: the checker or the runtime refuses it later

    def ints(self, i: int) -> list[int] | None:
        array = self._array(i)
        if array is None or array.dtype.kind not in "iu":
            return None
        return [int(v) for v in array]

    def number(self, i: int) -> float | None:
        array = self._array(i)
        if array is None or array.size != 1 or array.dtype.kind not in "iuf":
            return None
        return float(array[0])

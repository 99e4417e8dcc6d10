"""ONNX intake with the `onnx` package alone: safety checks, data input, score output.

Real-world graphs are messy: old zoo models (IR 3) list their initializers as graph inputs,
skl2onnx classifiers emit an int64 label next to the scores or wrap them in a ZipMap, and many
exports end in a Softmax. This module finds the one input that carries data and the float
[N, C] score tensor, and rewrites the graph so that it has exactly that input and output, with
a symbolic batch dimension, and logits rather than probabilities where the Softmax can be cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
from onnx import TensorProto, helper, numpy_helper

from robustness.errors import ModelRejected
from robustness.onnx_normalization import input_normalization
from robustness.onnx_safety import IntakeLimits, check_parsed, prescan

MAX_INPUT_ELEMENTS = 50_000_000  # per sample; a 4k RGB image is 50M
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
PROBABILITY_OPS = {"Softmax", "Sigmoid", "Normalizer"}
BATCH = "N"

Dim = int | str | None
OutputKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class ModelInfo:
    """What the intake learned about a classifier graph."""

    opset: int
    ir_version: int
    input_name: str
    input_shape: tuple[Dim, ...]
    input_dtype: str
    output_name: str
    num_classes: int | None
    kind: OutputKind
    softmax_stripped: bool
    fixed_batch: bool
    notes: tuple[str, ...] = field(default=())
    # "Sub by [..], Div by [..]": the graph's first nodes normalize its input already.
    input_normalization: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "opset": self.opset,
            "ir_version": self.ir_version,
            "input": {
                "name": self.input_name,
                "shape": list(self.input_shape),
                "dtype": self.input_dtype,
            },
            "output": {
                "name": self.output_name,
                "num_classes": self.num_classes,
                "kind": self.kind,
                "softmax_stripped": self.softmax_stripped,
            },
            "fixed_batch": self.fixed_batch,
            "input_normalization": self.input_normalization,
            "notes": list(self.notes),
        }


def load_model_bytes(data: bytes, limits: IntakeLimits | None = None) -> onnx.ModelProto:
    """Parse and check an untrusted ONNX file; never follows paths named inside it.

    The node and depth limits are checked on the raw bytes before protobuf builds anything;
    external data is refused everywhere before the checker, which would stat such paths, runs.
    """
    limits = limits or IntakeLimits()
    prescan(data, limits)
    try:
        model = onnx.load_model_from_string(data)  # never loads external data
    except Exception as exc:
        if "alloc failed" in str(exc):  # protobuf's arena hit the memory cap: not bad bytes
            raise MemoryError(f"parsing the model ran out of memory: {_short(exc)}") from exc
        raise ModelRejected(f"not a valid ONNX file: {_short(exc)}") from exc
    if not model.graph.node:
        raise ModelRejected("not a valid ONNX file: the graph has no nodes")
    check_parsed(model, limits)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelRejected(f"the ONNX checker rejected the model: {_short(exc)}") from exc
    return model


def inspect(model: onnx.ModelProto, output: str | None = None) -> ModelInfo:
    """Find the data input and the score output of a checked classifier graph."""
    inp = data_input(model)
    shape = _dims(inp.type.tensor_type.shape)
    if inp.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise ModelRejected(
            f"input {inp.name!r} is {_dtype(inp.type.tensor_type.elem_type)}; "
            "robaudit audits models that take float tensors"
        )
    if len(shape) < 2:
        raise ModelRejected(
            f"input {inp.name!r} has shape {list(shape)}; expected a batch dimension first "
            "and at least one feature dimension"
        )
    per_sample = [d for d in shape[1:] if isinstance(d, int)]
    if math.prod(per_sample) > MAX_INPUT_ELEMENTS:
        raise ModelRejected(
            f"input {inp.name!r} declares {math.prod(per_sample)} elements per sample; "
            f"the limit is {MAX_INPUT_ELEMENTS}"
        )
    inferred = _infer(model)
    score, kind, notes = _score_tensor(model, inferred, output)
    strip_from = _softmax_input(model, score)
    out_shape = _dims(inferred[score].type.tensor_type.shape) if score in inferred else ()
    if len(out_shape) > 2 and all(d == 1 for d in out_shape[2:]):
        out_shape = out_shape[:2]  # [N, C, 1, 1] scores (SqueezeNet, DenseNet) are flattened
    if out_shape and len(out_shape) != 2:
        raise ModelRejected(
            f"output {score!r} has shape {list(out_shape)}; a classifier's score output is "
            "[batch, classes]. Name the right output with the `output` field"
        )
    num_classes = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    if num_classes is not None and num_classes < 2:
        raise ModelRejected(f"output {score!r} has {num_classes} class; a classifier needs two")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    normalizes = input_normalization(model, inp.name)
    if normalizes is not None:
        notes.append(
            f"the graph already normalizes its input ({normalizes}); declaring mean/std too "
            "would normalize twice"
        )
    return ModelInfo(
        opset=opset,
        ir_version=model.ir_version,
        input_name=inp.name,
        input_shape=shape,
        input_dtype=_dtype(inp.type.tensor_type.elem_type),
        output_name=score,
        num_classes=num_classes,
        kind=kind,
        softmax_stripped=strip_from is not None,
        fixed_batch=shape[0] == 1,
        notes=tuple(notes),
        input_normalization=normalizes,
    )


def scores_graph(
    model: onnx.ModelProto, info: ModelInfo, *, rebatch: bool = True, strip_softmax: bool = True
) -> onnx.ModelProto:
    """The subgraph from the data input to the scores: logits where a Softmax could be cut.

    Initializers leave the input list, every node that does not feed the scores (labels,
    ZipMap, ArrayFeatureExtractor) is dropped, and [N, C, 1, 1] scores are flattened.
    With `rebatch`, the batch dimension becomes symbolic; in a graph exported with a fixed
    batch of 1, constant Reshape targets that start with 1 then start with 0 ("copy the
    input's dimension"). That rewrite is a guess about the graph, so callers check it
    against the graph run as it was (see robustness.loading).
    """
    stripped = _softmax_input(model, info.output_name) if strip_softmax else None
    target = stripped or info.output_name
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {i.name for i in m.graph.initializer}
    kept_inputs = [i for i in m.graph.input if i.name not in init_names]
    del m.graph.input[:]
    m.graph.input.extend(kept_inputs)
    if m.ir_version < 4:
        m.ir_version = 4  # IR 3 requires initializers to be inputs; 4 lets them stand alone
    if rebatch:
        _symbolic_batch(m.graph.input[0])
        if info.fixed_batch:
            _rebatch_reshapes(m.graph)
    inferred = _infer(m)
    shape = _dims(inferred[target].type.tensor_type.shape) if target in inferred else ()
    if len(shape) > 2 and all(d == 1 for d in shape[2:]):
        flat = f"{target}__scores"
        m.graph.node.append(helper.make_node("Flatten", [target], [flat], axis=1))
        target = flat
        inferred = _infer(m)
    value = inferred.get(target)
    if value is None:
        value = helper.make_tensor_value_info(target, TensorProto.FLOAT, None)
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    if rebatch and out.type.tensor_type.HasField("shape") and out.type.tensor_type.shape.dim:
        _symbolic_batch(out)
    del m.graph.output[:]
    m.graph.output.append(out)
    _prune(m.graph, target)
    return m


def _rebatch_reshapes(graph: onnx.GraphProto) -> None:
    consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in consts:
            continue
        tensor = consts[node.input[1]]
        shape = numpy_helper.to_array(tensor).copy()
        if shape.ndim == 1 and shape.size >= 2 and shape[0] == 1:
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape.astype("int64"), tensor.name))


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one graph input that is not an initializer (IR 3 graphs list weights as inputs)."""
    init_names = {i.name for i in model.graph.initializer}
    candidates = [i for i in model.graph.input if i.name not in init_names]
    if len(candidates) != 1:
        names = [i.name for i in candidates]
        raise ModelRejected(
            f"the model has {len(candidates)} data inputs {names}; robaudit audits "
            "single-input classifiers"
        )
    return candidates[0]


def _score_tensor(
    model: onnx.ModelProto, inferred: dict[str, onnx.ValueInfoProto], requested: str | None
) -> tuple[str, OutputKind, list[str]]:
    producers = {o: n for n in model.graph.node for o in n.output}
    candidates: list[str] = []
    notes: list[str] = []
    for out in model.graph.output:
        producer = producers.get(out.name)
        if producer is not None and producer.op_type == "ZipMap":
            candidates.append(producer.input[0])
            notes.append(f"output {out.name!r} is a ZipMap; auditing its input tensor")
        elif out.type.HasField("tensor_type") and out.type.tensor_type.elem_type in FLOAT_TYPES:
            candidates.append(out.name)
        else:
            notes.append(f"skipped output {out.name!r}: not a float tensor")
    if requested is not None:
        names = {o.name for o in model.graph.output}
        if requested not in names and requested not in candidates:
            raise ModelRejected(f"output {requested!r} not found; outputs are {sorted(names)}")
        producer = producers.get(requested)
        score = (
            producer.input[0]
            if producer is not None and producer.op_type == "ZipMap"
            else requested
        )
        if score not in candidates:
            raise ModelRejected(f"output {requested!r} is not a float score tensor")
    else:
        if not candidates:
            raise ModelRejected(
                "the model has no float output; a classifier must output class scores [N, C]"
            )
        ranked = [c for c in candidates if _rank(inferred.get(c)) in (2, None)]
        if len(ranked) > 1:
            notes.append(f"several float outputs {ranked}; auditing the first, {ranked[0]!r}")
        score = (ranked or candidates)[0]
    producer = producers.get(score)
    is_prob = (producer is not None and producer.op_type in PROBABILITY_OPS) or any(
        n.op_type == "ZipMap" and n.input[0] == score for n in model.graph.node
    )
    is_prob = is_prob or "prob" in score.lower()
    return score, ("probabilities" if is_prob else "logits"), notes


def _softmax_input(model: onnx.ModelProto, tensor: str) -> str | None:
    """The input of a last-axis Softmax that produces `tensor`, looking through Identity/Cast."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(tensor)
    while node is not None and node.op_type in ("Identity", "Cast"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    # Softmax-1/11 default axis 1 == last axis for [N, C]; Softmax-13 defaults to -1.
    return str(node.input[0]) if axis in (None, 1, -1) else None


def _prune(graph: onnx.GraphProto, target: str) -> None:
    needed = {target}
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:
                for sub in list(attr.g.node) if attr.HasField("g") else []:
                    needed.update(sub.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _symbolic_batch(value: onnx.ValueInfoProto) -> None:
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[0].Clear()
        dims[0].dim_param = BATCH


def _infer(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    g = inferred.graph
    return {v.name: v for v in [*g.value_info, *g.output, *g.input]}


def _rank(value: onnx.ValueInfoProto | None) -> int | None:
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return len(value.type.tensor_type.shape.dim)


def _dims(shape: onnx.TensorShapeProto) -> tuple[Dim, ...]:
    out: list[Dim] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(str(d.dim_param))
        else:
            out.append(None)
    return tuple(out)


def _dtype(elem_type: int) -> str:
    return str(helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else "undefined"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def intake_file(
    payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, object]:
    """Sandbox entry point (infra.sandbox): check and inspect the ONNX file at payload["path"].

    payload: {"path": str, "output": str | None, "limits": IntakeLimits fields}. Returns
    ModelInfo.to_dict(); a ModelRejected reaches the parent as ChildRaised.
    """
    limits = IntakeLimits(**payload.get("limits", {}))
    data = Path(payload["path"]).read_bytes()
    return inspect(load_model_bytes(data, limits), payload.get("output")).to_dict()

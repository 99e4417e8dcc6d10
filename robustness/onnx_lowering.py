"""Rewrite ai.onnx.ml classifier ops into standard ONNX ops, so torch converters can run them.

skl2onnx's linear models emit `LinearClassifier` (+ an L1 `Normalizer`), which onnx2pytorch
cannot convert. Both are small linear-algebra formulas, rewritten here as equivalent graphs;
the parity check in robustness.loading verifies the result like any conversion.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

POST_TRANSFORMS = {"NONE": None, "SOFTMAX": "Softmax", "LOGISTIC": "Sigmoid"}


def lower_ml_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with LinearClassifier and L1 Normalizer as standard ops (when exact)."""
    if not any(n.domain == "ai.onnx.ml" for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = _opset(m)
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    new_nodes: list[onnx.NodeProto] = []
    changed = False
    for node in m.graph.node:
        replacement = None
        if node.domain == "ai.onnx.ml" and node.op_type == "LinearClassifier":
            replacement = _linear_classifier(node, m.graph)
        elif node.domain == "ai.onnx.ml" and node.op_type == "Normalizer":
            replacement = _normalizer(node, producers, m.graph, opset)
        if replacement is None:
            new_nodes.append(node)
        else:
            changed = True
            new_nodes.extend(replacement)
            producers.update({o: r.op_type for r in replacement for o in r.output})
    if not changed:
        return model
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return m


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _linear_classifier(node: onnx.NodeProto, graph: onnx.GraphProto) -> list[onnx.NodeProto] | None:
    attrs = _attrs(node)
    labels = attrs.get("classlabels_ints")
    post = attrs.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else str(post)
    if not labels or post not in POST_TRANSFORMS:
        return None
    n_classes = len(labels)  # type: ignore[arg-type]
    coefs = np.asarray(attrs["coefficients"], dtype=np.float32)
    if coefs.size % n_classes:
        return None
    weight = coefs.reshape(n_classes, -1)
    bias = np.asarray(attrs.get("intercepts", [0.0] * n_classes), dtype=np.float32)
    if bias.size != n_classes:
        return None
    base = f"{node.name or 'linear'}__lowered"
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight, f"{base}_W"),
            numpy_helper.from_array(bias, f"{base}_b"),
            numpy_helper.from_array(np.asarray(labels, dtype=np.int64), f"{base}_labels"),
        ]
    )
    label_out, score_out = node.output[0], node.output[1]
    raw = f"{base}_raw" if POST_TRANSFORMS[post] else score_out
    nodes = [helper.make_node("Gemm", [node.input[0], f"{base}_W", f"{base}_b"], [raw], transB=1)]
    if POST_TRANSFORMS[post] == "Softmax":
        nodes.append(helper.make_node("Softmax", [raw], [score_out], axis=1))
    elif POST_TRANSFORMS[post] == "Sigmoid":
        nodes.append(helper.make_node("Sigmoid", [raw], [score_out]))
    nodes += [
        helper.make_node("ArgMax", [raw], [f"{base}_argmax"], axis=1, keepdims=0),
        helper.make_node("Gather", [f"{base}_labels", f"{base}_argmax"], [label_out], axis=0),
    ]
    return nodes


def _normalizer(
    node: onnx.NodeProto, producers: dict[str, str], graph: onnx.GraphProto, opset: int
) -> list[onnx.NodeProto] | None:
    norm = _attrs(node).get("norm", b"MAX")
    norm = norm.decode() if isinstance(norm, bytes) else str(norm)
    if norm != "L1":
        return None
    x, y = node.input[0], node.output[0]
    if producers.get(x) == "Softmax":
        return [helper.make_node("Identity", [x], [y])]  # L1 of a softmax is the softmax
    base = f"{node.name or 'normalizer'}__lowered"
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.asarray([1], np.int64), f"{base}_axes"))
        total = helper.make_node(
            "ReduceSum", [f"{base}_abs", f"{base}_axes"], [f"{base}_sum"], keepdims=1
        )
    else:
        total = helper.make_node(
            "ReduceSum", [f"{base}_abs"], [f"{base}_sum"], axes=[1], keepdims=1
        )
    return [
        helper.make_node("Abs", [x], [f"{base}_abs"]),
        total,
        helper.make_node("Div", [x, f"{base}_sum"], [y]),
    ]


def batchnorm_inference_mode(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with training-mode BatchNormalization run on the graph's running statistics.

    A graph exported from a model left in train mode normalizes each sample by its batch's
    statistics. When the running mean and variance are initializers (what `model.eval()` would
    have used) and the node's running-statistics outputs feed nothing, dropping
    `training_mode` gives the inference graph. Returns (model, 0) when nothing is rewritable;
    callers check the result is batch independent.
    """
    inits = {i.name for i in model.graph.initializer}
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}

    def rewritable(node: onnx.NodeProto) -> bool:
        training = _attrs(node).get("training_mode", 0)
        return (
            node.op_type == "BatchNormalization"
            and node.domain in ("", "ai.onnx")
            and training == 1
            and len(node.input) == 5
            and node.input[3] in inits
            and node.input[4] in inits
            and not any(o in used for o in node.output[1:] if o)
        )

    if not any(rewritable(n) for n in model.graph.node):
        return model, 0
    m = onnx.ModelProto()
    m.CopyFrom(model)
    count = 0
    for node in m.graph.node:
        if rewritable(node):
            kept = [a for a in node.attribute if a.name not in ("training_mode", "momentum")]
            del node.attribute[:]
            node.attribute.extend(kept)
            del node.output[1:]
            count += 1
    return m, count

"""Exporters' decomposed LayerNorm, erf-GELU, attention and Linear, fused back before conversion.

torch.onnx below opset 17 writes every LayerNorm as nine element-wise nodes (ReduceMean, Sub,
Pow, ReduceMean, Add, Sqrt, Div, Mul, Add), and below opset 20 every exact GELU as five
(Div, Erf, Add, Mul, Mul); attention becomes Transpose, two Muls, MatMul, Softmax, MatMul, and
nn.Linear on a sequence MatMul then Add. Converted node by node, each node is its own torch op
and autograd node, plus a Python module call, where the native model runs one kernel: on
convnext_atto and a small ViT this is where the converted module lost its time
(benchmarks/bench_native.py, benchmarks/README.md).

`fuse` rewrites those patterns into ops of the private domain FUSED_DOMAIN, which
robustness.backends.fused_modules teaches onnx2torch to convert into torch.nn.LayerNorm,
torch.nn.GELU, F.scaled_dot_product_attention and torch.nn.Linear. onnxruntime cannot run
these ops, so the caller (robustness.loading) keeps a fused conversion only if its scores match
onnxruntime's on the unfused graph, like every other rewrite; if not, or for the other
converter, the unfused graph is converted as before.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_DOMAIN = "robaudit_fused"  # no dot: onnx2torch names modules after it
LAYER_NORM, GELU, ATTENTION, LINEAR = "LayerNorm", "Gelu", "Attention", "Linear"
FUSING_CONVERTERS = ("onnx2torch",)  # those register_onnx2torch teaches the fused ops
_TOL = 1e-5  # relative tolerance on the pattern's constants (√2, 1, 0.5, 2)


@dataclass(frozen=True)
class Fusion:
    """The rewritten graph and how many of each pattern were fused (empty: nothing changed)."""

    model: onnx.ModelProto
    counts: dict[str, int]

    def label(self) -> str:
        return ", ".join(f"{n} {op}" for op, n in sorted(self.counts.items()))


class _Graph:
    """Producers, consumers and constants of one graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.value_info = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":  # exporters dedupe equal weights
            return self.constant(node.input[0])
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def scalar_is(self, name: str, value: float) -> bool:
        c = self.constant(name)
        return (
            c is not None
            and c.size == 1
            and math.isclose(float(c.reshape(())), value, rel_tol=_TOL)
        )

    def rank(self, name: str) -> int:
        """The tensor's rank from shape inference, -1 when unknown."""
        info = self.value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return -1
        return len(info.type.tensor_type.shape.dim)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def other_input(self, node: onnx.NodeProto, name: str) -> str | None:
        """The other operand of a binary node one of whose inputs is `name`."""
        if len(node.input) != 2 or name not in node.input:
            return None
        a, b = node.input
        return b if a == name else a


def _axes(g: _Graph, node: onnx.NodeProto) -> list[int] | None:
    """ReduceMean's axes (attribute before opset 18, constant input after), keepdims required."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > 1 and (c := g.constant(node.input[1])) is not None:
        return [int(a) for a in c.reshape(-1)]
    return None


def _layer_norm(
    g: _Graph, mean: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """Match x - mean(x) ... * gamma + beta from its first ReduceMean, over the last axis."""
    if _axes(g, mean) != [-1]:
        return None
    x = mean.input[0]
    sub = g.only_consumer(mean.output[0])
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, mean.output[0]]:
        return None
    users = g.consumers.get(sub.output[0], [])
    pow_ = next((n for n in users if n.op_type == "Pow"), None)
    div = next((n for n in users if n.op_type == "Div"), None)
    if len(users) != 2 or pow_ is None or div is None or sub.output[0] in g.outputs:
        return None
    if pow_.input[0] != sub.output[0] or not g.scalar_is(pow_.input[1], 2.0):
        return None
    chain = [pow_]
    for op in ("ReduceMean", "Add", "Sqrt"):
        nxt = g.only_consumer(chain[-1].output[0])
        if nxt is None or nxt.op_type != op or nxt.input[0] != chain[-1].output[0]:
            return None
        chain.append(nxt)
    var, add_eps, sqrt = chain[1:]
    eps = g.constant(add_eps.input[1]) if len(add_eps.input) == 2 else None
    if (
        _axes(g, var) != [-1]
        or eps is None
        or eps.size != 1
        or list(div.input)
        != [
            sub.output[0],
            sqrt.output[0],
        ]
    ):
        return None
    affine = _affine(g, div)
    if affine is None:
        return None
    gamma, beta, mul, add = affine
    fused = helper.make_node(
        LAYER_NORM, [x, gamma, beta], [add.output[0]], domain=FUSED_DOMAIN,
        axis=-1, epsilon=float(eps.reshape(())),
    )  # fmt: skip
    return [mean, sub, pow_, var, add_eps, sqrt, div, mul, add], fused


def _affine(
    g: _Graph, div: onnx.NodeProto
) -> tuple[str, str, onnx.NodeProto, onnx.NodeProto] | None:
    """(gamma, beta, Mul, Add) of the `· gamma + beta` after the normalisation, 1-D constants."""
    mul = g.only_consumer(div.output[0])
    if mul is None or mul.op_type != "Mul" or (gamma := g.other_input(mul, div.output[0])) is None:
        return None
    add = g.only_consumer(mul.output[0])
    if add is None or add.op_type != "Add" or (beta := g.other_input(add, mul.output[0])) is None:
        return None
    if not (_is_vector(g, gamma) and _is_vector(g, beta)):
        return None
    return gamma, beta, mul, add


def _is_vector(g: _Graph, name: str) -> bool:
    """A 1-D constant: broadcasts over the last axis exactly as LayerNorm's weight does."""
    c = g.constant(name)
    return c is not None and c.ndim == 1 and c.dtype == np.float32


def _gelu(g: _Graph, erf: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """Match 0.5 · x · (1 + erf(x / √2)) from its Erf, in the operand orders exporters write."""
    scale = g.producer.get(erf.input[0])
    if scale is None or g.only_consumer(scale.output[0]) is not erf:
        return None
    if scale.op_type == "Div" and g.scalar_is(scale.input[1], math.sqrt(2.0)):
        x = scale.input[0]
    elif scale.op_type == "Mul" and (x := _operand_with(g, scale, math.sqrt(0.5))) is not None:
        pass
    else:
        return None
    plus = g.only_consumer(erf.output[0])
    if plus is None or plus.op_type != "Add":
        return None
    one = g.other_input(plus, erf.output[0])
    if one is None or not g.scalar_is(one, 1.0):
        return None
    times = g.only_consumer(plus.output[0])
    other = g.other_input(times, plus.output[0]) if times is not None else None
    if times is None or times.op_type != "Mul" or other is None:
        return None
    if other == x:  # (x · (1 + erf)) · 0.5
        half = g.only_consumer(times.output[0])
        if half is None or half.op_type != "Mul" or _operand_with(g, half, 0.5) != times.output[0]:
            return None
        nodes = [scale, erf, plus, times, half]
        out = half.output[0]
    else:  # (x · 0.5) · (1 + erf)
        half = g.producer.get(other)
        if half is None or half.op_type != "Mul" or _operand_with(g, half, 0.5) != x:
            return None
        if g.only_consumer(half.output[0]) is not times:
            return None
        nodes = [half, scale, erf, plus, times]
        out = times.output[0]
    return nodes, helper.make_node(GELU, [x], [out], domain=FUSED_DOMAIN)


def _operand_with(g: _Graph, node: onnx.NodeProto, value: float) -> str | None:
    """For a binary node with the scalar constant `value` on one side, the other operand."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    if g.scalar_is(b, value):
        return a
    if g.scalar_is(a, value):
        return b
    return None


def _attention(
    g: _Graph, softmax: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """Match softmax((q·s₁)(kᵀ·s₂))·v, the exporters' form of scaled dot-product attention."""
    axis = next(
        (helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), None
    )
    if axis != -1 and not (axis is not None and axis == g.rank(softmax.input[0]) - 1):
        return None
    scores = g.producer.get(softmax.input[0])
    out = g.only_consumer(softmax.output[0])
    if (
        scores is None
        or scores.op_type != "MatMul"
        or g.only_consumer(scores.output[0]) is not softmax
    ):
        return None
    if out is None or out.op_type != "MatMul" or out.input[0] != softmax.output[0]:
        return None
    q, s1, q_nodes = _scaled(g, scores.input[0], scores)
    kt, s2, k_nodes = _scaled(g, scores.input[1], scores)
    transpose = g.producer.get(kt)
    if transpose is None or transpose.op_type != "Transpose" or g.only_consumer(kt) is None:
        return None
    perm = next((list(helper.get_attribute_value(a)) for a in transpose.attribute), None)
    n = len(perm) if perm else 0
    if n < 3 or perm != [*range(n - 2), n - 1, n - 2]:
        return None
    nodes = [*q_nodes, transpose, *k_nodes, scores, softmax, out]
    fused = helper.make_node(
        ATTENTION, [q, transpose.input[0], out.input[1]], [out.output[0]],
        domain=FUSED_DOMAIN, scale=s1 * s2,
    )  # fmt: skip
    return nodes, fused


def _scaled(g: _Graph, name: str, user: onnx.NodeProto) -> tuple[str, float, list[onnx.NodeProto]]:
    """(t, s, [the Mul]) where `name` = t · s for a scalar constant s, else (name, 1, [])."""
    mul = g.producer.get(name)
    if mul is None or mul.op_type != "Mul" or g.only_consumer(name) is not user:
        return name, 1.0, []
    for t, c in (mul.input, mul.input[::-1]):
        value = g.constant(c)
        if value is not None and value.size == 1:
            return t, float(value.reshape(())), [mul]
    return name, 1.0, []


def _linear(
    g: _Graph, matmul: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """Match x·W + b with constant W [in, out] and b [out]: what exporters write for nn.Linear."""
    weight = g.constant(matmul.input[1])
    add = g.only_consumer(matmul.output[0])
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or add is None:
        return None
    bias_name = g.other_input(add, matmul.output[0]) if add.op_type == "Add" else None
    if bias_name is None:
        return None
    bias = g.constant(bias_name)
    if bias is None or bias.shape != (weight.shape[1],) or bias.dtype != np.float32:
        return None
    fused = helper.make_node(
        LINEAR, [matmul.input[0], matmul.input[1], bias_name], [add.output[0]], domain=FUSED_DOMAIN
    )
    return [matmul, add], fused


_PATTERNS = (
    ("ReduceMean", LAYER_NORM, _layer_norm),
    ("Erf", GELU, _gelu),
    ("Softmax", ATTENTION, _attention),
    ("MatMul", LINEAR, _linear),
)


# Opset 18-20 forms onnx2torch 1.5 has no converter for, with the since-version they need;
# each means what the older form onnx2torch converts means (Reshape-19 and Shape-19 only add
# types; ReduceMean-18 moves axes from an attribute to an input; Gelu is new in 20).
_NEWER_FORMS = {"Reshape": 19, "Shape": 19, "ReduceMean": 18, "Gelu": 20}


def _retag_newer_ops(model: onnx.ModelProto) -> Counter[str]:
    """Move those ops into FUSED_DOMAIN, where robustness.backends.fused_modules converts them."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = _Graph(model.graph, list(model.graph.node))
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        since = _NEWER_FORMS.get(node.op_type)
        if node.domain not in ("", "ai.onnx") or since is None or opset < since:
            continue
        if node.op_type == "ReduceMean":
            axes = g.constant(node.input[1]) if len(node.input) > 1 else None
            if axes is None:
                continue
            del node.input[1:]
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes.ravel()]))
        if node.op_type == "Reshape" and not _allowzero_moot(g, node):
            continue
        node.domain = FUSED_DOMAIN
        counts[f"{node.op_type}-{since}"] += 1
    return counts


def _allowzero_moot(g: _Graph, reshape: onnx.NodeProto) -> bool:
    """True (and the attribute dropped) unless allowzero=1 could change this Reshape's result."""
    attrs = {a.name: helper.get_attribute_value(a) for a in reshape.attribute}
    if not attrs.get("allowzero", 0):
        return True
    shape = g.constant(reshape.input[1])
    if shape is None or (shape == 0).any():
        return False
    kept = [a for a in reshape.attribute if a.name != "allowzero"]
    del reshape.attribute[:]
    reshape.attribute.extend(kept)
    return True


def fuse(model: onnx.ModelProto) -> Fusion:
    """A copy of the model with its LayerNorm and GELU patterns fused (top-level graph only).

    Shapes are inferred first, so the converter still knows every tensor's shape after
    ops that onnx's shape inference cannot see through.
    """
    out = onnx.shape_inference.infer_shapes(model)
    counts: Counter[str] = Counter()
    for anchor, label, match in _PATTERNS:
        # One snapshot of the node wrappers: protobuf does not keep their identities.
        nodes = list(out.graph.node)
        g = _Graph(out.graph, nodes)
        replace: dict[int, onnx.NodeProto] = {}  # id of a pattern's last node -> fused node
        drop: set[int] = set()
        for node in nodes:
            if node.op_type != anchor or node.domain not in ("", "ai.onnx") or id(node) in drop:
                continue
            found = match(g, node)
            if found is None or any(id(n) in drop for n in found[0]):
                continue
            matched, fused = found
            fused.name = f"fused_{label}_{counts[label]}"
            drop.update(id(n) for n in matched)
            ids = {id(n) for n in matched}
            replace[id([n for n in nodes if id(n) in ids][-1])] = fused
            counts[label] += 1
        if replace:
            kept = [replace.get(id(n), n) for n in nodes if id(n) not in drop or id(n) in replace]
            copies = [onnx.NodeProto() for _ in kept]
            for copy, node in zip(copies, kept, strict=True):
                copy.CopyFrom(node)
            del out.graph.node[:]
            out.graph.node.extend(copies)
    counts.update(_retag_newer_ops(out))
    if not counts:
        return Fusion(model, {})
    if all(o.domain != FUSED_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    return Fusion(out, dict(counts))

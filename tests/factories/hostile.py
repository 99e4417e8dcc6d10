"""Hostile and malformed uploads, built in memory."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _graph_model(
    nodes: list[onnx.NodeProto], inputs, outputs, inits=(), opset: int = 17
) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def linear_classifier(n_in: int = 4, n_out: int = 3) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((n_in, n_out), np.float32), "W")
    return _graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["scores"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", n_out])],
        [w],
    )


def external_data_model(location: str = "../../etc/passwd") -> bytes:
    model = linear_classifier()
    _external(model.graph.initializer[0], location)
    return model.SerializeToString()


def foreign_domain_model() -> bytes:
    model = _graph_model(
        [helper.make_node("Exfiltrate", ["x"], ["scores"], domain="com.evil")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    )
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return model.SerializeToString()


def huge_constant_model() -> bytes:
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    return _graph_model(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("MatMul", ["x", "big"], ["scores"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1 << 20])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1 << 20])],
        [shape],
    ).SerializeToString()


def huge_input_model() -> bytes:
    return _graph_model(
        [helper.make_node("ReduceMean", ["x"], ["scores"], axes=[2], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10, 1 << 30])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        opset=17,
    ).SerializeToString()


def not_a_classifier_model() -> bytes:
    """Outputs an image-shaped tensor (say, a denoiser): [N, 8, 8]."""
    return _graph_model(
        [helper.make_node("Identity", ["x"], ["image"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8])],
    ).SerializeToString()


def two_input_model() -> bytes:
    return _graph_model(
        [helper.make_node("Add", ["a", "b"], ["scores"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    ).SerializeToString()


def int_input_model() -> bytes:
    return _graph_model(
        [helper.make_node("Cast", ["tokens"], ["scores"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
    ).SerializeToString()


def nan_model() -> bytes:
    """Divides by zero: every score is NaN or inf."""
    zero = numpy_helper.from_array(np.zeros((1,), np.float32), "zero")
    return _graph_model(
        [helper.make_node("Div", ["x", "zero"], ["scores"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [zero],
    ).SerializeToString()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def pickled_npz() -> bytes:
    """An object array: loading it would need pickle."""
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    return buf.getvalue()


def zip_bomb_npz() -> bytes:
    """x.npy holds 64 MiB of zeros deflated to ~64 KiB (~1000:1, what bombs look like)."""
    buf = io.BytesIO()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 24,)}
    )
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(4):
                f.write(chunk)
        y = io.BytesIO()
        np.save(y, np.zeros(4, np.int64))
        zf.writestr("y.npy", y.getvalue())
    return buf.getvalue()


# --- every place a graph can hide external data, foreign operators or huge shapes -----------

SCORES_IO = (
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
)


def _external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    """Point `tensor` at `location` the way onnx.save_model(save_as_external_data=True) does."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _weights(name: str = "w") -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(4, np.float32), name)


def _branch(nodes: list[onnx.NodeProto], inits=(), name: str = "b") -> onnx.GraphProto:  # type: ignore[no-untyped-def]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return helper.make_graph(nodes, name, [], [out], initializer=list(inits))


def _if_model(then: onnx.GraphProto, extra_inits=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    cond = numpy_helper.from_array(np.array(True), "cond")
    other = _branch([helper.make_node("Identity", ["x"], ["y"])], name="else")
    node = helper.make_node("If", ["cond"], ["scores"], then_branch=then, else_branch=other)
    return _graph_model([node], *SCORES_IO, [cond, *extra_inits])


def external_in_if(location: str) -> bytes:
    then = _branch([helper.make_node("Add", ["x", "w"], ["y"])], [_external(_weights(), location)])
    return _if_model(then).SerializeToString()


def _loop_body(nodes: list[onnx.NodeProto], inits=()) -> onnx.GraphProto:  # type: ignore[no-untyped-def]
    inputs = [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        helper.make_tensor_value_info("acc", TensorProto.FLOAT, ["N", 4]),
    ]
    outputs = [
        helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 4]),
    ]
    keep = helper.make_node("Identity", ["c"], ["c_out"])
    return helper.make_graph([keep, *nodes], "body", inputs, outputs, initializer=list(inits))


def _loop_model(body: onnx.GraphProto, trips: int = 2) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.array(trips, np.int64), "M"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    node = helper.make_node("Loop", ["M", "cond", "x"], ["scores"], body=body)
    return _graph_model([node], *SCORES_IO, inits)


def external_in_loop(location: str) -> bytes:
    body = _loop_body(
        [helper.make_node("Add", ["acc", "w"], ["acc_out"])], [_external(_weights(), location)]
    )
    return _loop_model(body).SerializeToString()


def external_in_if_in_loop(location: str) -> bytes:
    """Two levels down: a tensor attribute of a Constant inside an If inside a Loop body."""
    value = _external(_weights("k"), location)
    then = _branch([helper.make_node("Constant", [], ["y"], value=value)])
    other = _branch([helper.make_node("Identity", ["acc"], ["y"])], name="else")
    body = _loop_body(
        [helper.make_node("If", ["c"], ["acc_out"], then_branch=then, else_branch=other)]
    )
    return _loop_model(body).SerializeToString()


def external_in_sparse_initializer(location: str) -> bytes:
    model = linear_classifier()
    values = _external(numpy_helper.from_array(np.ones(1, np.float32), "sv"), location)
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "si")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return model.SerializeToString()


def external_in_constant_attribute(location: str) -> bytes:
    value = _external(_weights("k"), location)
    return _graph_model(
        [
            helper.make_node("Constant", [], ["k"], value=value),
            helper.make_node("Add", ["x", "k"], ["scores"]),
        ],
        *SCORES_IO,
    ).SerializeToString()


def _function_model(body: list[onnx.NodeProto], extra_opsets=()) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    opsets = [helper.make_opsetid("", 17), *extra_opsets]
    function = helper.make_function("local", "F", ["a"], ["b"], body, opsets)
    model = _graph_model([helper.make_node("F", ["x"], ["scores"], domain="local")], *SCORES_IO)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    return model


def external_in_function(location: str) -> bytes:
    body = [
        helper.make_node("Constant", [], ["k"], value=_external(_weights("k"), location)),
        helper.make_node("Add", ["a", "k"], ["b"]),
    ]
    return _function_model(body).SerializeToString()


def external_in_training_graph(location: str) -> bytes:
    model = linear_classifier()
    init = _branch([helper.make_node("Identity", ["w"], ["y"])], [_external(_weights(), location)])
    model.training_info.add().initialization.CopyFrom(init)
    return model.SerializeToString()


EXTERNAL_DATA_PLACES = {
    "main-initializer": external_data_model,
    "if-branch": external_in_if,
    "loop-body": external_in_loop,
    "if-in-loop-constant": external_in_if_in_loop,
    "sparse-initializer": external_in_sparse_initializer,
    "constant-attribute": external_in_constant_attribute,
    "function-body": external_in_function,
    "training-graph": external_in_training_graph,
}


def foreign_domain_in_function() -> bytes:
    body = [helper.make_node("Exfiltrate", ["a"], ["b"], domain="com.evil")]
    return _function_model(body, [helper.make_opsetid("com.evil", 1)]).SerializeToString()


def foreign_domain_in_if() -> bytes:
    then = _branch([helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.evil")])
    model = _if_model(then)
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return model.SerializeToString()


# --- size: node counts and nesting, written at the wire level so building them is cheap -----


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def many_nodes_model(n: int) -> bytes:
    """A valid-looking classifier followed by n Identity nodes: 1M nodes is ~22 MB."""
    model = linear_classifier()
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    node = helper.make_node("Identity", ["x"], ["t"]).SerializeToString()
    return model.SerializeToString() + _field(7, graph + _field(1, node) * n)


def deeply_nested_model(depth: int) -> bytes:
    inner = _branch([helper.make_node("Identity", ["x"], ["y"])])
    for _ in range(depth):
        cond = numpy_helper.from_array(np.array(True), "cond")
        other = _branch([helper.make_node("Identity", ["x"], ["y"])], name="else")
        node = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other)
        inner = _branch([node], [cond])
    return _if_model(inner).SerializeToString()


def truncated_model() -> bytes:
    return linear_classifier().SerializeToString()[:-7]


# --- shapes that are huge as constants ------------------------------------------------------


def _shape_op_model(op: str, second: np.ndarray, **attrs: object) -> bytes:
    inits = [numpy_helper.from_array(second, "s")]
    node = helper.make_node(op, ["x", "s"], ["big"], **attrs)
    reduce = helper.make_node("ReduceMean", ["big"], ["scores"], axes=[0], keepdims=0)
    return _graph_model([node, reduce], *SCORES_IO, inits).SerializeToString()


def expand_bomb() -> bytes:
    return _shape_op_model("Expand", np.array([1 << 20, 1 << 16, 4], np.int64))


def tile_bomb() -> bytes:
    return _shape_op_model("Tile", np.array([1 << 20, 1 << 20], np.int64))


def reshape_bomb() -> bytes:
    return _shape_op_model("Reshape", np.array([1 << 30, 1 << 30], np.int64))


def range_bomb() -> bytes:
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), "start"),
        numpy_helper.from_array(np.array(1e12, np.float32), "limit"),
        numpy_helper.from_array(np.array(1.0, np.float32), "delta"),
    ]
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        helper.make_node("Add", ["x", "r"], ["scores"]),
    ]
    return _graph_model(nodes, *SCORES_IO, inits).SerializeToString()


def constant_of_shape_in_loop() -> bytes:
    """The shape comes from a Constant node (value_ints) inside a Loop body."""
    body = _loop_body(
        [
            helper.make_node("Constant", [], ["shape"], value_ints=[1 << 20, 1 << 20]),
            helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
            helper.make_node("Identity", ["acc"], ["acc_out"]),
        ]
    )
    return _loop_model(body).SerializeToString()


def endless_loop() -> bytes:
    body = _loop_body([helper.make_node("Identity", ["acc"], ["acc_out"])])
    return _loop_model(body, trips=1 << 50).SerializeToString()


def huge_sparse_initializer() -> bytes:
    model = linear_classifier()
    values = numpy_helper.from_array(np.ones(1, np.float32), "sv")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "si")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1 << 40]))
    return model.SerializeToString()


# --- archives -------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def small_xy() -> dict[str, bytes]:
    return {"x.npy": _npy(np.zeros((2, 4), np.float32)), "y.npy": _npy(np.zeros(2, np.int64))}


def nested_member_npz() -> bytes:
    """`sub/x.npy` used to replace `x.npy` (members were keyed by stem)."""
    members = small_xy()
    members["sub/x.npy"] = _npy(np.ones((2, 4), np.float32))
    return zip_of(members)


def duplicate_member_npz() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in [*small_xy().items(), ("x.npy", _npy(np.ones((2, 4), np.float32)))]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
                zf.writestr(name, data)
    return buf.getvalue()


def many_members_npz(n: int = 5000) -> bytes:
    return zip_of({f"m{i}.npy": b"" for i in range(n)}, compression=zipfile.ZIP_STORED)


def total_over_cap_npz(cap: int) -> bytes:
    """x is 95% of `cap` and y 12%: each member under `cap`, both together over it."""
    rows = cap * 95 // 100 // 64
    rng = np.random.default_rng(0)
    x = rng.random((rows, 16), dtype=np.float32)
    y = rng.integers(0, 3, rows, dtype=np.int64)
    return zip_of({"x.npy": _npy(x), "y.npy": _npy(y)}, compression=zipfile.ZIP_STORED)


def lying_header_npz() -> bytes:
    """The header claims 2^40 floats; the member holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
    )
    members = small_xy()
    members["x.npy"] = header.getvalue() + bytes(16)
    return zip_of(members)


# --- shapes that are huge only at run time (passed by intake, bounded by the sandbox) -------


def runtime_shape_bomb() -> bytes:
    """A valid classifier that also fills N × 8 GiB of zeros, sized from its input's batch.

    The shape comes from `Shape(x)`, so no static check can see it: only the worker's
    sandbox memory limit stops it (RLIMIT_AS: the allocation fails, nothing is touched).
    """
    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.float32), "W"),
        numpy_helper.from_array(np.array([1 << 29, 1], np.int64), "factor"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logits"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mul", ["shape", "factor"], ["big_shape"]),
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["logits", "nothing"], ["scores"]),
    ]
    return _graph_model(nodes, *SCORES_IO, inits).SerializeToString()

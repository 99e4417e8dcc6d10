"""Hostile and malformed uploads, built in memory."""

from __future__ import annotations

import io
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


def external_data_model() -> bytes:
    model = linear_classifier()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "48")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
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

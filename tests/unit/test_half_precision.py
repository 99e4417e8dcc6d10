"""Issue 8, req. 3: float16 exports are computed in float32 from a checked, widened copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robustness.backends.torch_backend import TorchBackend
from robustness.errors import ModelRejected
from robustness.loading import load
from robustness.onnx_precision import float32_copy

PROBE = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)


def _half_export(tmp_path: Path) -> bytes:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
    )
    path = tmp_path / "half.onnx"
    torch.onnx.export(
        net.eval().half(),
        (torch.rand(2, 1, 8, 8).half(),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    return path.read_bytes()


def test_a_float16_export_gets_a_gradient_backend_with_a_visible_note(tmp_path: Path) -> None:
    data = _half_export(tmp_path)
    half = onnx.load_from_string(data)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16  # the premise
    loaded = load(data, PROBE, device=torch.device("cpu"))
    assert isinstance(loaded.backend, TorchBackend)
    assert any(note.startswith("float16 graph computed in float32") for note in loaded.notes)


def _scaled_graph(scale: float, dtype: int) -> onnx.ModelProto:
    """y = flatten(x) · s · s with s in `dtype`; large s overflows float16 but not float32."""
    s = numpy_helper.from_array(np.array(scale, dtype=helper.tensor_dtype_to_np_dtype(dtype)), "s")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Mul", ["f", "s"], ["a"]),
        helper.make_node("Mul", ["a", "s"], ["b"]),
        helper.make_node("Slice", ["b", "zero", "ten", "one"], ["y"]),
    ]
    ints = {
        k: numpy_helper.from_array(np.array([v], np.int64), k)
        for k, v in (("zero", 0), ("ten", 10), ("one", 1))
    }
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("x", dtype, ["b", 1, 8, 8])],
        [helper.make_tensor_value_info("y", dtype, ["b", 10])],
        [s, *ints.values()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_widened_copy_has_no_half_tensor_left() -> None:
    wide = float32_copy(_scaled_graph(2.0, TensorProto.FLOAT16))
    assert all(t.data_type != TensorProto.FLOAT16 for t in wide.graph.initializer)
    assert wide.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_a_graph_that_overflows_in_float16_is_refused_rather_than_audited_differently() -> None:
    data = _scaled_graph(300.0, TensorProto.FLOAT16).SerializeToString()  # 300² · x > 65504
    with pytest.raises(ModelRejected, match="export the model in float32"):
        load(data, PROBE, device=torch.device("cpu"))


def test_bfloat16_inputs_are_refused_with_what_to_do() -> None:
    data = _scaled_graph(2.0, TensorProto.BFLOAT16).SerializeToString()
    with pytest.raises(ModelRejected, match="bfloat16 inputs are not supported"):
        load(data, PROBE, device=torch.device("cpu"))

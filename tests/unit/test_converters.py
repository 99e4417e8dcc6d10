"""Issue 8, req. 3: two torch converters, tried in order; parity with onnxruntime decides."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from robustness.backends.torch_backend import CONVERTERS, TorchBackend
from robustness.loading import load
from robustness.spec import BackendKind

PROBE = np.random.default_rng(0).random((6, 2, 4, 4), dtype=np.float32)


def _pooled_classifier(opset: int) -> bytes:
    """ReduceMean over H, W, then a linear layer: ReduceMean takes `axes` as an input at 18."""
    w = numpy_helper.from_array(
        np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32), "w"
    )
    if opset >= 18:
        axes = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
        mean = helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0)
    else:
        axes = []
        mean = helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph(
        [mean, helper.make_node("MatMul", ["m", "w"], ["y"])],
        "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [w, *axes],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)]
    ).SerializeToString()


def test_the_first_converter_is_used_when_it_matches() -> None:
    loaded = load(_pooled_classifier(17), PROBE, device=torch.device("cpu"))
    first = next(iter(CONVERTERS))
    assert isinstance(loaded.backend, TorchBackend)
    assert loaded.backend.converter == first
    assert f"converted to torch by {first}" in loaded.notes


def test_a_graph_the_first_converter_refuses_goes_to_the_second_and_says_so() -> None:
    # fuse=False: robustness.onnx_fusion would rewrite ReduceMean-18 into a form onnx2torch takes.
    loaded = load(_pooled_classifier(18), PROBE, device=torch.device("cpu"), fuse=False)
    first, second = CONVERTERS
    assert isinstance(loaded.backend, TorchBackend)
    assert loaded.backend.converter == second
    note = next(n for n in loaded.notes if n.startswith("converted to torch by"))
    assert note.startswith(f"converted to torch by {second} ({first}: conversion failed")
    assert loaded.statuses[BackendKind.TORCH].ok

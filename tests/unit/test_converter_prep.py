"""onnx2torch gets the LayerNormalization shapes it needs from the node's Scale (issue 8)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robustness.backends.torch_backend import TorchBackend
from robustness.onnx_converter_prep import layer_norm_shapes


def _symbolic_layer_norm() -> onnx.ModelProto:
    """LayerNorm over a last dim that is only named, as after MobileViT's dynamic Reshape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), name)
        for name in ("scale", "bias")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["h"], axis=-1),
            helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0),
        ],
        "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "t", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "c"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx2torch_converts_a_layer_norm_over_a_named_dim_after_the_rewrite() -> None:
    from onnx2torch import convert

    model = _symbolic_layer_norm()
    with pytest.raises(RuntimeError, match="normalized_shape"):  # the premise
        convert(model)(torch.zeros(2, 3, 8))
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": x})[0]
    backend = TorchBackend(
        model, log_probabilities=False, device=torch.device("cpu"), converter="onnx2torch"
    )
    got = backend.raw_outputs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_scale_that_disagrees_with_a_known_dim_leaves_the_graph_alone() -> None:
    model = _symbolic_layer_norm()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 5
    assert layer_norm_shapes(model) is not model  # a copy, but with nothing rewritten
    assert layer_norm_shapes(model).graph.input[0] == model.graph.input[0]

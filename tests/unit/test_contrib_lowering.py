"""Issue 8, req. 3: onnxruntime-optimised graphs are lowered to standard ops, checked by parity.

The reference is onnxruntime itself running the fused com.microsoft op, so each lowering is
compared with the implementation users' files were optimised for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from robaudit.cli import main
from robustness.backends.torch_backend import TorchBackend
from robustness.errors import ModelRejected
from robustness.loading import load
from robustness.onnx_contrib import CONTRIB, LOWERABLE, lower_contrib_ops
from robustness.onnx_graph import load_model_bytes

RNG = np.random.default_rng(0)
VEC = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])
IMG = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, 6, 6])


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def _graph(
    node: onnx.NodeProto, x: onnx.ValueInfoProto, inits: dict[str, np.ndarray], opset: int = 17
) -> onnx.ModelProto:
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in node.output if o]
    graph = helper.make_graph(
        [node], "g", [x], outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _op(
    op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs: object
) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs or ["y"], domain=CONTRIB, **attrs)


def _vec(n: int = 8) -> np.ndarray:
    return RNG.normal(size=n).astype(np.float32)


CONV_W = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)
GEMM_W = RNG.normal(size=(5, 8)).astype(np.float32)
SKIP = {"skip": RNG.normal(size=(4, 8)).astype(np.float32), "g": _vec(), "be": _vec(), "b": _vec()}
CASES = {
    "Gelu": (_op("Gelu", ["x"]), VEC, {}),
    "BiasGelu": (_op("BiasGelu", ["x", "b"]), VEC, {"b": _vec()}),
    "FastGelu": (_op("FastGelu", ["x", "b"]), VEC, {"b": _vec()}),
    "FastGelu-no-bias": (_op("FastGelu", ["x"]), VEC, {}),
    "QuickGelu": (_op("QuickGelu", ["x"], alpha=1.5), VEC, {}),
    "SkipLayerNormalization": (
        _op("SkipLayerNormalization", ["x", "skip", "g", "be", "b"], epsilon=1e-5),
        VEC,
        SKIP,
    ),
    "SkipLayerNormalization-sum-output": (
        _op("SkipLayerNormalization", ["x", "skip", "g", "be", "b"], ["y", "", "", "sum"]),
        VEC,
        SKIP,
    ),
    "FusedGemm-LeakyRelu": (
        _op(
            "FusedGemm",
            ["x", "W", "C"],
            transB=1,
            alpha=0.7,
            beta=1.3,
            activation="LeakyRelu",
            activation_alpha=0.2,
        ),
        VEC,
        {"W": GEMM_W, "C": _vec(5)},
    ),
    "FusedConv-Relu": (
        _op(
            "FusedConv", ["x", "W", "B"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], activation="Relu"
        ),
        IMG,
        {"W": CONV_W, "B": _vec(3)},
    ),
    "FusedConv-Clip": (
        _op(
            "FusedConv",
            ["x", "W", "B"],
            kernel_shape=[3, 3],
            activation="Clip",
            activation_params=[-0.5, 0.5],
        ),
        IMG,
        {"W": CONV_W, "B": _vec(3)},
    ),
}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_fused_op_lowers_to_what_onnxruntime_computes(case: str, opset: int) -> None:
    node, x, inits = CASES[case]
    model = _graph(node, x, inits, opset)
    lowered, kept = lower_contrib_ops(model)
    assert kept == []
    assert not any(n.domain == CONTRIB for n in lowered.graph.node)
    shape = [4, 8] if x is VEC else [2, 2, 6, 6]
    feeds = {"x": (3 * RNG.normal(size=shape)).astype(np.float32)}
    for want, got in zip(_outputs(model, feeds), _outputs(lowered, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_an_unknown_fused_activation_is_kept_and_named() -> None:
    node = _op("FusedGemm", ["x", "W", "C"], transB=1, activation="Softsign")
    lowered, kept = lower_contrib_ops(_graph(node, VEC, {"W": GEMM_W, "C": _vec(5)}))
    assert kept == ["FusedGemm"]
    assert any(n.domain == CONTRIB for n in lowered.graph.node)


class _Net(torch.nn.Module):
    """Conv+ReLU, GELU and x·σ(1.702x): what onnxruntime fuses into contrib ops on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        a = self.fc(h)
        z = self.norm(torch.nn.functional.gelu(a) + a)
        return self.head(z * torch.sigmoid(1.702 * z))


def _ort_optimised(tmp_path: Path, level: ort.GraphOptimizationLevel) -> bytes:
    torch.manual_seed(0)
    exported = tmp_path / "net.onnx"
    torch.onnx.export(
        _Net().eval(),
        (torch.rand(2, 1, 8, 8),),
        str(exported),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
    return (tmp_path / "optimised.onnx").read_bytes()


def test_a_file_saved_by_an_onnxruntime_session_gets_the_torch_backend(tmp_path: Path) -> None:
    data = _ort_optimised(tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    fused = {n.op_type for n in onnx.load_from_string(data).graph.node if n.domain == CONTRIB}
    assert fused, "the premise: onnxruntime fused something"
    assert fused <= LOWERABLE, fused
    probe = np.random.default_rng(1).random((8, 1, 8, 8), dtype=np.float32)
    loaded = load(data, probe, device=torch.device("cpu"))
    assert isinstance(loaded.backend, TorchBackend)
    assert any("rewritten to standard ops (checked)" in note for note in loaded.notes)


def test_layout_ops_of_ort_enable_all_are_refused_with_what_to_do(tmp_path: Path) -> None:
    data = _ort_optimised(tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    with pytest.raises(ModelRejected, match="ORT_ENABLE_EXTENDED"):
        load_model_bytes(data)


def test_a_contrib_op_without_a_lowering_is_refused_naming_the_ones_we_lower() -> None:
    node = _op("Attention", ["x"])
    with pytest.raises(ModelRejected, match=r"com\.microsoft\.Attention.*FusedConv"):
        load_model_bytes(_graph(node, VEC, {}).SerializeToString())


def test_check_shows_the_rewrites_and_the_converter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "optimised.onnx"
    path.write_bytes(_ort_optimised(tmp_path, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
    assert main(["check", str(path)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note")]
    assert any("com.microsoft" in n and "rewritten to standard ops (checked)" in n for n in notes)
    assert any("converted to torch by" in n for n in notes)

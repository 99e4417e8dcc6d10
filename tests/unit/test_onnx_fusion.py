"""Pattern fusion before conversion: same scores as the unfused graph, native modules used.

Tiny timm models (two blocks, small widths) exported by the legacy exporter at opset 14, where
LayerNorm, GELU, attention and nn.Linear are all written out node by node.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from robustness.backends.torch_backend import fold_constants
from robustness.loading import load
from robustness.onnx_fusion import ATTENTION, FUSED_DOMAIN, GELU, LAYER_NORM, LINEAR, fuse

CPU = torch.device("cpu")
SIZE = 32


def _tiny(name: str) -> torch.nn.Module:
    import timm

    if name == "vit":
        model = timm.models.vision_transformer.VisionTransformer(
            img_size=SIZE, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3
        )
    else:
        model = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=3)
    model.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():  # trained weights are never exactly 1 or 0
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _onnx(model: torch.nn.Module, opset: int = 14) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(2, 3, SIZE, SIZE),), buf, dynamo=False, opset_version=opset,
            input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[torch.nn.Module, bytes]]:
    return {name: (model, _onnx(model)) for name in ("vit", "convnext") for model in [_tiny(name)]}


def _probe(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 3, SIZE, SIZE)).astype(np.float32)


def _native_counts(model: torch.nn.Module) -> dict[str, int]:
    """What the fusions should find: one fused op per native module (the head is a Gemm)."""
    from timm.models.vision_transformer import Attention

    kinds = [type(m) for m in model.modules()]
    counts = {
        LAYER_NORM: sum(issubclass(k, torch.nn.LayerNorm) for k in kinds),
        GELU: sum(k.__name__ == "GELU" for k in kinds),  # torch.nn.GELU or timm's own
        ATTENTION: sum(issubclass(k, Attention) for k in kinds),
        LINEAR: sum(issubclass(k, torch.nn.Linear) for k in kinds) - 1,
    }
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("name", ["vit", "convnext"])
def test_every_decomposed_pattern_is_fused_and_the_scores_stay(
    exported: dict[str, tuple[torch.nn.Module, bytes]], name: str
) -> None:
    native, data = exported[name]
    expected = _native_counts(native)
    fusion = fuse(fold_constants(onnx.load_from_string(data)))
    assert fusion.counts == expected
    fused_ops = Counter(n.op_type for n in fusion.model.graph.node if n.domain == FUSED_DOMAIN)
    assert fused_ops == Counter(fusion.counts)
    assert not {"Erf", "Pow", "Softmax"} & {n.op_type for n in fusion.model.graph.node}

    fused = load(data, _probe(), device=CPU)
    unfused = load(data, _probe(), device=CPU, fuse=False)
    assert any(
        note.startswith("rewritten for native torch ops") and "(checked)" in note
        for note in fused.notes
    )
    assert not any(note.startswith("rewritten for") for note in unfused.notes)
    kinds = Counter(type(m).__name__ for m in fused.backend.module.modules())  # type: ignore[attr-defined]
    assert kinds["LayerNorm"] == expected[LAYER_NORM]
    assert kinds["GELU"] == expected[GELU]
    assert kinds["_Attention"] == expected.get(ATTENTION, 0)
    assert not Counter(type(m).__name__ for m in unfused.backend.module.modules())["LayerNorm"]

    x = torch.from_numpy(_probe(6))
    want = native(x)
    for loaded in (fused, unfused):
        got = loaded.backend.raw_outputs(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # Gradients too: the attacks differentiate through the fused modules.
    grads = []
    for loaded in (fused, unfused):
        xg = x.clone().requires_grad_(True)
        loaded.backend.scores(xg).sum().backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_a_pattern_with_a_changed_constant_is_left_alone(
    exported: dict[str, tuple[torch.nn.Module, bytes]],
) -> None:
    """x · (1 + erf(x / 1.5)) · 0.5 is not GELU: no fusion may claim it."""
    model = fold_constants(onnx.load_from_string(exported["convnext"][1]))
    gelus = fuse(model).counts[GELU]
    erf = next(n for n in model.graph.node if n.op_type == "Erf")
    div = next(n for n in model.graph.node if erf.input[0] in n.output)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.5, np.float32), "c"))
    div.input[1] = "c"
    assert fuse(model).counts[GELU] == gelus - 1


def test_a_graph_without_patterns_is_returned_unchanged() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    graph = onnx.load_from_string(_onnx(model.eval()))
    fusion = fuse(graph)
    assert fusion.counts == {}
    assert fusion.model is graph


def _opset20_graph() -> bytes:
    """Gelu-20, ReduceMean-18 (axes an input) and Reshape-19 with allowzero=1, as dynamo writes."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).normal(size=(24, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
            helper.make_node("Sub", ["x", "m"], ["c"]),
            helper.make_node("Reshape", ["c", "shape"], ["flat"], allowzero=1),
            helper.make_node("Gelu", ["flat"], ["g"]),
            helper.make_node("MatMul", ["g", "w"], ["logits"]),
        ],
        "opset20",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(np.array([-1], np.int64), "axes"),
            numpy_helper.from_array(np.array([-1, 24], np.int64), "shape"),
            numpy_helper.from_array(w, "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def test_opset_20_forms_onnx2torch_lacks_are_converted_by_it_after_the_rewrite() -> None:
    data = _opset20_graph()
    probe = np.random.default_rng(0).normal(size=(4, 4, 6)).astype(np.float32)
    fused = load(data, probe, device=CPU)
    unfused = load(data, probe, device=CPU, fuse=False)
    assert "converted to torch by onnx2torch" in fused.notes
    assert "rewritten for native torch ops: 1 Gelu-20, 1 ReduceMean-18, 1 Reshape-19 (checked)" in (
        fused.notes
    )
    assert any(n.startswith("converted to torch by onnx2pytorch") for n in unfused.notes)
    x = torch.from_numpy(probe)
    torch.testing.assert_close(fused.backend.raw_outputs(x), unfused.backend.raw_outputs(x))

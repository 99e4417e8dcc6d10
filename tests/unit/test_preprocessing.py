"""Issue 8, req. 1: preprocessing belongs to the model record; the audit runs in pixel space."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError

from robustness.config import BackendKind
from robustness.engine import run_audit
from robustness.errors import AuditInputError
from robustness.loading import load
from robustness.onnx_graph import inspect, load_model_bytes
from robustness.preprocessing import Layout, Preprocessing, epsilon_label, resolve_range
from robustness.spec import AuditSpec
from tests.factories.models import MEAN, STD, pixels, twins

CPU = torch.device("cpu")
EPS = 8 / 255


def _psi(data: bytes, x: np.ndarray, y: np.ndarray, pre: Preprocessing | None) -> np.ndarray:
    loaded = load(data, x, device=CPU, preprocessing=pre)
    assert loaded.backend.kind is BackendKind.TORCH, loaded.statuses_dict()
    spec = AuditSpec(epsilons=(EPS,), steps=5, baselines=(), landscape_samples=0)
    result = run_audit(loaded.backend, x, y, spec, device=CPU)
    return np.asarray(result.per_epsilon[0].per_sample)


@pytest.mark.parametrize("layout", [Layout.NCHW, Layout.NHWC])
def test_normalizing_outside_with_declared_preprocessing_equals_normalizing_inside(
    layout: Layout,
) -> None:
    inside, outside = twins(layout)
    x, y = pixels(layout)
    pre = Preprocessing(mean=MEAN, std=STD, layout=layout)
    baked = _psi(inside, x, y, None)
    declared = _psi(outside, x, y, pre)
    assert baked.mean() > 1e-4  # ψ measures something here
    np.testing.assert_allclose(declared, baked, rtol=1e-3, atol=1e-6)
    # Undeclared, the same pixels would reach the network unnormalized: other scores.
    plain = load(outside, x, device=CPU).backend.raw_outputs(torch.from_numpy(x))
    normalized = load(inside, x, device=CPU).backend.raw_outputs(torch.from_numpy(x))
    assert not np.allclose(plain.numpy(), normalized.numpy(), rtol=1e-2)


def test_the_prepended_normalization_is_in_the_graph_every_backend_runs() -> None:
    _, outside = twins(Layout.NCHW)
    x, _ = pixels(Layout.NCHW, 4)
    pre = Preprocessing(mean=MEAN, std=STD)
    loaded = load(outside, x, device=CPU, preprocessing=pre)
    assert loaded.info.input_name == "input__pixels"
    assert any("(x − mean [0.485, 0.456, 0.406])" in n for n in loaded.notes), loaded.notes
    torch_scores = loaded.backend.raw_outputs(torch.from_numpy(x)).detach().numpy()
    ort_scores = loaded.reference.raw_outputs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_scores, ort_scores, rtol=1e-4, atol=1e-5)
    grad = torch.from_numpy(x).requires_grad_(True)
    loaded.backend.scores(grad).sum().backward()
    assert grad.grad is not None
    assert float(grad.grad.abs().sum()) > 0


def test_a_graph_that_normalizes_its_input_is_detected() -> None:
    inside, outside = twins(Layout.NCHW)
    info = inspect(load_model_bytes(inside))
    assert info.input_normalization == "Sub by [0.485, 0.456, 0.406], Div by [0.229, 0.224, 0.225]"
    assert any("already normalizes its input" in n for n in info.notes)
    assert inspect(load_model_bytes(outside)).input_normalization is None
    x, _ = pixels(Layout.NCHW, 4)
    twice = load(inside, x, device=CPU, preprocessing=Preprocessing(mean=MEAN, std=STD))
    assert any("normalized twice" in n for n in twice.notes), twice.notes


def test_normalization_through_a_cast_and_by_mul_add_is_detected() -> None:
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.full((1,), 2.0, np.float32), "k")
    shift = numpy_helper.from_array(np.full((1,), -1.0, np.float32), "b")
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["k", "c"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            helper.make_node("MatMul", ["a", "w"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [scale, shift, w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    info = inspect(load_model_bytes(model.SerializeToString()))
    assert info.input_normalization == "Mul by [2], Add by [-1]"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"mean": [0.5, 0.5], "std": [0.2]}, "give one of each per channel"),
        ({"mean": [0.5]}, "give mean and std together"),
        ({"mean": [0.5], "std": [0.0]}, "must be > 0"),
        ({"mean": [0.5], "std": [-1.0]}, "must be > 0"),
        ({"mean": [float("nan")], "std": [1.0]}, "finite number"),
        ({"scale": 100}, "1 or 255"),
        ({"layout": "NCWH"}, "'NCHW' or 'NHWC'"),
        ({"mean": [], "std": []}, "at least 1"),
        ({"gamma": 2}, "Extra inputs"),
    ],
)
def test_bad_preprocessing_is_refused_with_what_to_fix(fields: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Preprocessing.model_validate(fields)


def test_preprocessing_that_does_not_fit_the_input_is_refused() -> None:
    with pytest.raises(AuditInputError, match="has 3 channels on axis 1"):
        Preprocessing(mean=(0.5,), std=(0.2,)).check_input(["N", 3, 8, 8])
    with pytest.raises(AuditInputError, match="has 3 channels on axis 3"):
        Preprocessing(mean=(0.5, 0.5), std=(1, 1), layout=Layout.NHWC).check_input([1, 8, 8, 3])
    with pytest.raises(AuditInputError, match="layout NHWC needs"):
        Preprocessing(layout=Layout.NHWC).check_input(["N", 64])
    Preprocessing(mean=(0.5,) * 3, std=(0.2,) * 3).check_input(["N", "C", 8, 8])  # dynamic: ok
    _, outside = twins(Layout.NCHW)
    x, _ = pixels(Layout.NCHW, 2)
    with pytest.raises(AuditInputError, match="one value per channel"):
        load(outside, x, device=CPU, preprocessing=Preprocessing(mean=(0.5,), std=(0.2,)))


def test_input_range_follows_the_pixel_scale_and_a_contradiction_is_refused() -> None:
    assert resolve_range(Preprocessing(scale=255), None) == [0.0, 255.0]
    assert resolve_range(Preprocessing(), [0, 1]) == [0.0, 1.0]
    assert resolve_range(None, [-1, 1]) == [-1.0, 1.0]
    assert resolve_range(None, None) is None
    with pytest.raises(AuditInputError, match="contradicts preprocessing scale 255"):
        resolve_range(Preprocessing(scale=255), [0, 1])


def test_epsilon_is_stated_in_pixel_units() -> None:
    pixels = Preprocessing(mean=MEAN, std=STD)
    assert epsilon_label(8 / 255, [0, 1], pixels) == "ε = 8/255 (0.03137) in pixel space [0, 1]"
    assert epsilon_label(8, [0, 255], Preprocessing(scale=255)) == (
        "ε = 8 (of 255) in pixel space [0, 255]"
    )
    assert epsilon_label(0.03, [-2, 2], None) == (
        "ε = 0.03 in input space [-2, 2] (no preprocessing declared)"
    )


def test_the_prepended_graph_stays_a_valid_onnx_model() -> None:
    from robustness.onnx_normalization import prepend_normalization

    _, outside = twins(Layout.NHWC)
    model = onnx.load_model_from_string(outside)
    out = prepend_normalization(model, "input", Preprocessing(mean=MEAN, std=STD, layout="NHWC"))
    onnx.checker.check_model(out)
    mean = next(i for i in out.graph.initializer if i.name == "input__mean")
    assert list(mean.dims) == [3]  # broadcast on the last axis
    assert [i.name for i in out.graph.input] == ["input__pixels"]


@pytest.mark.parametrize("layout", [Layout.NCHW, Layout.NHWC])
def test_both_converters_map_the_prepended_nodes_to_torch_ops_with_a_gradient(
    layout: Layout,
) -> None:
    from robustness.backends.torch_backend import CONVERTERS, TorchBackend
    from robustness.onnx_graph import scores_graph
    from robustness.onnx_normalization import prepend_normalization

    inside, outside = twins(layout)
    x, _ = pixels(layout, 4)
    model = prepend_normalization(
        load_model_bytes(outside), "input", Preprocessing(mean=MEAN, std=STD, layout=layout)
    )
    graph = scores_graph(model, inspect(model))
    want = load(inside, x, device=CPU).reference.raw_outputs(torch.from_numpy(x)).numpy()
    for converter in CONVERTERS:
        backend = TorchBackend(graph, log_probabilities=False, device=CPU, converter=converter)
        got = backend.raw_outputs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=converter)
        grad = torch.from_numpy(x).requires_grad_(True)
        backend.scores(grad).sum().backward()
        assert grad.grad is not None
        assert float(grad.grad.abs().sum()) > 0, converter

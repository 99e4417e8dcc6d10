"""Models whose ψ says nothing about robustness are flagged, never called robust (issue 6.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustness.config import Baseline
from robustness.degeneracy import detect
from robustness.engine import run_audit
from robustness.report import merge_results, result_to_dict
from robustness.results import AuditResult, DegeneracyKind, Verdict
from robustness.spec import AuditSpec
from tests.factories.corpus import LIGHT_ZOO
from tests.factories.models import Constant, digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import CPU, load_cpu

FAST = {"steps": 5, "landscape_samples": 0, "baselines": (Baseline.CLEAN,)}


class Quantized(nn.Module):
    """Reads its input through floor(4x)/4: the output moves, its gradient is zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.floor(x.flatten(1) * 4) / 4)


def _result(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray, **spec: object) -> dict:
    backend = load_cpu(onnx_bytes, x).backend
    return result_to_dict(run_audit(backend, x, y, AuditSpec(**{**FAST, **spec}), device=CPU))


def test_light_zoo_graph_is_constant_output_not_robust() -> None:
    # Its weights come from ConstantOfShape: every class gets the same logit for every input.
    x = np.random.default_rng(0).uniform(size=(3, 3, 224, 224)).astype(np.float32)
    onnx_bytes = (LIGHT_ZOO / "light_squeezenet.onnx").read_bytes()
    result = _result(onnx_bytes, x, np.zeros(3, np.int64), steps=2, random_probes=1)
    assert result["per_epsilon"][0]["divergence"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert result["verdict"] == Verdict.DEGENERATE
    assert result["diagnostics"]["degenerate"]["kind"] == DegeneracyKind.CONSTANT_OUTPUT
    assert "do not depend on its input" in result["diagnostics"]["degenerate"]["reason"]


def test_constant_model_is_flagged_and_a_trained_cnn_is_measured() -> None:
    split = digits_split()
    x, y = split.x_test[:48], split.y_test[:48]
    constant = _result(to_onnx(Constant()), x, y)
    assert constant["verdict"] == "degenerate"
    assert constant["diagnostics"]["degenerate"]["kind"] == "constant_output"
    trained = _result(to_onnx(natural_cnn()), x, y)
    assert trained["verdict"] == "measured"
    assert trained["diagnostics"]["degenerate"] is None


def test_vanishing_gradient_is_flagged() -> None:
    split = digits_split()
    x, y = split.x_test[:48], split.y_test[:48]
    result = _result(to_onnx(Quantized().eval()), x, y)
    assert result["per_epsilon"][0]["divergence"]["mean"] > 0  # the output does move
    assert result["verdict"] == "degenerate"
    assert result["diagnostics"]["degenerate"]["kind"] == "vanishing_gradient"


def test_detector_thresholds() -> None:
    rng = np.random.default_rng(0)
    row = np.log(np.full((1, 10), 0.1))
    flat = np.repeat(row, 8, axis=0)
    assert detect(flat, flat + 1e-7, dead_gradient_fraction=0.0) is not None
    moving = flat + rng.normal(scale=1e-3, size=flat.shape)
    assert detect(flat, moving, dead_gradient_fraction=0.0) is None
    assert detect(moving, moving, dead_gradient_fraction=0.5) is None
    found = detect(moving, moving, dead_gradient_fraction=0.9)
    assert found is not None
    assert found.kind is DegeneracyKind.VANISHING_GRADIENT
    assert "90%" in found.reason


def test_shards_keep_the_verdict() -> None:
    split = digits_split()
    x, y = split.x_test[:32], split.y_test[:32]
    spec = AuditSpec(**{**FAST, "batch_size": 8})
    for net, verdict in ((Constant(), "degenerate"), (Quantized().eval(), "degenerate")):
        backend = load_cpu(to_onnx(net), x).backend
        parts = [
            result_to_dict(run_audit(backend, x[i : i + 16], y[i : i + 16], spec, device=CPU,
                                     sample_offset=i))
            for i in (0, 16)
        ]  # fmt: skip
        whole = result_to_dict(run_audit(backend, x, y, spec, device=CPU))
        # Shards come back as stored JSON, read through the result model, as in the worker.
        merged = result_to_dict(merge_results([AuditResult.model_validate(p) for p in parts]))
        assert merged["verdict"] == whole["verdict"] == verdict
        assert (
            merged["diagnostics"]["degenerate"]["kind"]
            == whole["diagnostics"]["degenerate"]["kind"]
        )

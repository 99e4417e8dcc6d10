"""Coverage corpus: every model is auditable; ≥ 90% run on the gradient backend with parity."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from robustness.config import BackendKind
from robustness.loading import PARITY_RTOL, load
from tests.factories.corpus import LIGHT_ZOO, Case, corpus

CASES = corpus()
OUTCOMES: dict[str, BackendKind] = {}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_is_auditable(case: Case) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # torch's dynamo exporter prints progress
        data = case.build()
    probe = case.probe()
    loaded = load(data, probe, device=torch.device("cpu"))
    torch_status = loaded.statuses[BackendKind.TORCH]
    if loaded.backend.kind is BackendKind.TORCH:
        assert torch_status.parity_relative is not None
        assert torch_status.parity_relative <= PARITY_RTOL
    else:
        assert torch_status.reason  # a fallback always says why
    x = torch.from_numpy(probe[:2]).requires_grad_(True)
    scores = loaded.backend.scores(x)
    assert scores.shape[0] == 2
    assert scores.shape[1] >= 2
    assert torch.isfinite(scores).all()
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert grad.shape == x.shape
    assert bool(torch.isfinite(grad).all())
    OUTCOMES[case.name] = loaded.backend.kind


@pytest.mark.slow
def test_gradient_backend_coverage_is_at_least_90_percent() -> None:
    if len(OUTCOMES) < len(CASES):
        pytest.skip("runs after the whole corpus (run the module, not this test alone)")
    on_torch = sum(kind is BackendKind.TORCH for kind in OUTCOMES.values())
    assert on_torch / len(OUTCOMES) >= 0.9, OUTCOMES


def test_zoo_is_present() -> None:
    assert len(list(LIGHT_ZOO.glob("*.onnx"))) == 9


def test_zoo_data_input_is_the_one_that_is_not_an_initializer() -> None:
    import onnx

    from robustness.onnx_graph import data_input

    for path in sorted(LIGHT_ZOO.glob("*.onnx")):
        model = onnx.load_model_from_string(path.read_bytes())
        inits = {i.name for i in model.graph.initializer}
        chosen = data_input(model)
        assert chosen.name not in inits
        assert np.prod([d.dim_value for d in chosen.type.tensor_type.shape.dim]) == 3 * 224 * 224

"""Coverage corpus: every model is auditable; ≥ 90% run on the gradient backend with parity."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness.config import BackendKind
from robustness.loading import PARITY_RTOL, load
from tests.factories.corpus import FULL_ONLY, LIGHT_ZOO, Case, corpus

CASES = corpus()
FULL = os.environ.get("ROBAUDIT_CORPUS") == "full"
ACTIVE = tuple(c for c in CASES if FULL or c.name not in FULL_ONLY)


@dataclass(frozen=True)
class Outcome:
    """What the tests assert about one loaded case; small, so every case's can be kept."""

    kind: BackendKind
    parity_relative: float | None
    fallback_reason: str | None
    scores_shape: tuple[int, ...]
    scores_finite: bool
    grad_shape_matches: bool
    grad_finite: bool


@cache
def outcome(name: str) -> Outcome:
    """Load one case and probe its backend, once per session whichever test asks first."""
    case = next(c for c in CASES if c.name == name)
    with contextlib.redirect_stdout(io.StringIO()):  # torch's dynamo exporter prints progress
        data = case.build()
    probe = case.probe()
    loaded = load(data, probe, device=torch.device("cpu"))
    torch_status = loaded.statuses[BackendKind.TORCH]
    x = torch.from_numpy(probe[:2]).requires_grad_(True)
    scores = loaded.backend.scores(x)
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    return Outcome(
        kind=loaded.backend.kind,
        parity_relative=torch_status.parity_relative,
        fallback_reason=torch_status.reason,
        scores_shape=tuple(scores.shape),
        scores_finite=bool(torch.isfinite(scores).all()),
        grad_shape_matches=grad.shape == x.shape,
        grad_finite=bool(torch.isfinite(grad).all()),
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_model_is_auditable(case: Case) -> None:
    if case not in ACTIVE:
        pytest.skip("outside the core corpus; ROBAUDIT_CORPUS=full runs it")
    result = outcome(case.name)
    if result.kind is BackendKind.TORCH:
        assert result.parity_relative is not None
        assert result.parity_relative <= PARITY_RTOL
    else:
        assert result.fallback_reason  # a fallback always says why
    assert result.scores_shape[0] == 2
    assert result.scores_shape[1] >= 2
    assert result.scores_finite
    assert result.grad_shape_matches
    assert result.grad_finite


@pytest.mark.slow
def test_gradient_backend_coverage_is_at_least_90_percent() -> None:
    """Loads whatever cases no test loaded yet, so it holds alone and in any order."""
    kinds = {case.name: outcome(case.name).kind for case in ACTIVE}
    on_torch = sum(kind is BackendKind.TORCH for kind in kinds.values())
    assert on_torch / len(kinds) >= 0.9, kinds


def test_zoo_is_present() -> None:
    assert len(list(LIGHT_ZOO.glob("*.onnx"))) == 9


def _path(path: Path) -> tuple[int, int, frozenset[tuple[str, str]]]:
    """What decides a zoo graph's way through the intake: IR version, opset and operators."""
    import onnx

    model = onnx.load_model_from_string(path.read_bytes())
    ops = frozenset((node.domain, node.op_type) for node in model.graph.node)
    return model.ir_version, model.opset_import[0].version, ops


def test_each_full_only_zoo_graph_takes_a_path_a_core_one_takes() -> None:
    """The zoo graphs left to ROBAUDIT_CORPUS=full add weight, not a new path: each one's IR
    version and opset equal a core zoo graph's, and its operators are a subset of that one's."""
    paths = {p.stem.removeprefix("light_"): _path(p) for p in LIGHT_ZOO.glob("*.onnx")}
    core = {name: path for name, path in paths.items() if name not in FULL_ONLY}
    for name in FULL_ONLY:
        ir, opset, ops = paths[name]
        covering = [c for c, (i, o, core_ops) in core.items() if (i, o) == (ir, opset)
                    and ops <= core_ops]  # fmt: skip
        assert covering, f"{name} ({sorted(ops)}) needs a core case of its own"


def test_zoo_data_input_is_the_one_that_is_not_an_initializer() -> None:
    import onnx

    from robustness.onnx_graph import data_input

    for path in sorted(LIGHT_ZOO.glob("*.onnx")):
        model = onnx.load_model_from_string(path.read_bytes())
        inits = {i.name for i in model.graph.initializer}
        chosen = data_input(model)
        assert chosen.name not in inits
        assert np.prod([d.dim_value for d in chosen.type.tensor_type.shape.dim]) == 3 * 224 * 224

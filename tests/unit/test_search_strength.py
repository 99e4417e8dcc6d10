"""Issue 6: the default search is tight, reports its convergence, and the black-box path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustness.attacks.budget import search_info
from robustness.attacks.divergence import DivergenceSearch
from robustness.attacks.search import build_search
from robustness.config import BackendKind, Baseline, Norm, SearchAlgorithm
from robustness.engine import run_audit
from robustness.report import merge_results, result_to_dict
from robustness.results import AuditResult
from robustness.spec import AuditSpec
from tests.factories.models import adversarial_cnn, digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import CPU, audit, load_cpu

N = 64
EPS = 0.1
METRIC_ONLY = (Baseline.CLEAN,)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    split = digits_split()
    return split.x_test[:N], split.y_test[:N]


class CountingBackend:
    """Counts forward rows, and the rows whose gradient is asked for (a hook on the scores)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.kind, self.device = inner.kind, inner.device  # type: ignore[attr-defined]
        self.gradient_rows = 0
        self.forward_rows = 0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner.scores(x)  # type: ignore[attr-defined]
        self.forward_rows += x.shape[0]
        if out.requires_grad:
            rows = x.shape[0]

            def count(_: torch.Tensor) -> None:
                self.gradient_rows += rows

            out.register_hook(count)
        return out

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.raw_outputs(x)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(("norm", "eps"), [(Norm.LINF, EPS), (Norm.L2, 1.0)], ids=["linf", "l2"])
def test_default_search_reaches_095_of_a_strong_reference_at_2x_cost(
    data: tuple[np.ndarray, np.ndarray], norm: Norm, eps: float
) -> None:
    """Reference, test-sized: best of 8 runs of 50-step PGD-KL (α = ε/10, ε/40; 4 seeds).

    Measured (Nov 2026, this PGD-trained CNN, these 48 samples): the old default reached
    0.81 (L∞) / 0.76 (L2) of this reference, the new one 1.02 / 1.00. This reference is
    cheaper and weaker than the benchmark's (benchmarks/README.md: new 0.955-0.99).
    """
    x = data[0][:48]
    backend = CountingBackend(load_cpu(to_onnx(adversarial_cnn()), x).backend)
    xt = torch.from_numpy(x)
    ref = torch.zeros(len(x), dtype=torch.float64)
    for alpha in (eps / 10, eps / 40):
        long_pgd = DivergenceSearch(backend, norm=norm, eps=eps, steps=50, alpha=alpha)  # type: ignore[arg-type]
        for seed in range(4):
            ref = torch.maximum(ref, long_pgd(xt, torch.Generator().manual_seed(seed)).psi)
    spec = AuditSpec(norm=norm, epsilons=(eps,))
    backend.gradient_rows = 0
    psi = build_search(backend, spec, eps)(xt, torch.Generator().manual_seed(0)).psi  # type: ignore[arg-type]
    assert backend.gradient_rows / len(x) <= 2 * spec.steps
    assert backend.gradient_rows / len(x) == search_info(spec).gradient_evaluations_per_sample
    assert float(psi.mean()) >= 0.95 * float(ref.mean())
    old = build_search(
        backend, AuditSpec(norm=norm, epsilons=(eps,), search=SearchAlgorithm.PGD_KL), eps
    )  # type: ignore[arg-type]
    assert float(psi.mean()) > float(old(xt, torch.Generator().manual_seed(0)).psi.mean())


def test_short_search_is_not_converged_and_a_long_one_is(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = data
    model = to_onnx(natural_cnn())
    short = audit(model, x, y, epsilons=(EPS,), steps=3, baselines=METRIC_ONLY, landscape_samples=0)
    long = audit(model, x, y, epsilons=(EPS,), steps=40, baselines=METRIC_ONLY, landscape_samples=0)
    c_short, c_long = short.per_epsilon[0].convergence, long.per_epsilon[0].convergence
    assert c_short is not None
    assert c_long is not None
    assert not c_short.converged
    assert c_short.suggested_steps is not None
    assert c_short.suggested_steps > 3
    assert c_short.relative_gain > c_long.relative_gain
    assert c_long.converged
    assert c_long.suggested_steps is None
    body = result_to_dict(short)
    assert body["search"]["algorithm"] == "apgd-kl/1"
    assert body["search"]["steps"] == 3
    assert body["per_epsilon"][0]["convergence"]["converged"] is False


def test_convergence_and_search_survive_a_shard_merge(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    backend = load_cpu(to_onnx(natural_cnn()), x).backend
    spec = AuditSpec(
        epsilons=(EPS,), steps=4, baselines=METRIC_ONLY, batch_size=16, landscape_samples=0
    )
    whole = result_to_dict(run_audit(backend, x[:32], y[:32], spec, device=CPU))
    parts = [
        result_to_dict(
            run_audit(backend, x[i : i + 16], y[i : i + 16], spec, device=CPU, sample_offset=i)
        )
        for i in (0, 16)
    ]
    # Shards come back as stored JSON, read through the result model, as in the worker.
    merged = result_to_dict(merge_results([AuditResult.model_validate(p) for p in parts]))
    assert merged["search"] == whole["search"]
    a, b = whole["per_epsilon"][0]["convergence"], merged["per_epsilon"][0]["convergence"]
    assert a["converged"] == b["converged"]
    assert b["psi_mean_half"] == pytest.approx(a["psi_mean_half"], rel=1e-9)
    assert b["relative_gain"] == pytest.approx(a["relative_gain"], rel=1e-6)


def test_blackbox_reaches_09_of_autograd_on_a_relu_maxpool_cnn(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """Central differences on the 64-pixel CNN (ReLU, max-pool), default budget.

    Measured (Nov 2026, 100 samples, ε=0.1): 1.000 of the autograd ψ in L∞ and 0.999 in L2.
    """
    x, y = data[0][:24], data[1][:24]
    model = to_onnx(natural_cnn())
    grad = audit(
        model, x, y, BackendKind.TORCH, epsilons=(EPS,), baselines=METRIC_ONLY, landscape_samples=0
    )
    black = audit(
        model,
        x,
        y,
        BackendKind.ONNXRUNTIME,
        epsilons=(EPS,),
        baselines=METRIC_ONLY,
        landscape_samples=0,
    )
    ratio = black.per_epsilon[0].divergence.mean / grad.per_epsilon[0].divergence.mean
    assert 0.9 <= ratio <= 1.01
    assert black.diagnostics.blackbox_note is None


def test_random_direction_mode_states_its_expected_shortfall(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = data[0][:8], data[1][:8]
    backend = load_cpu(to_onnx(natural_cnn()), x, BackendKind.ONNXRUNTIME).backend
    backend.coordinate_limit = 0  # type: ignore[attr-defined]
    backend.directions = 16  # type: ignore[attr-defined]  # fewer than the 64 features
    spec = AuditSpec(epsilons=(EPS,), steps=2, baselines=METRIC_ONLY, landscape_samples=0)
    result = run_audit(backend, x, y, spec, device=CPU)
    note = result.diagnostics.blackbox_note
    assert note is not None
    assert "expected shortfall" in note
    assert result_to_dict(result)["diagnostics"]["blackbox_note"] == note


@pytest.mark.parametrize("search", list(SearchAlgorithm))
def test_cost_estimate_counts_the_passes_the_engine_makes(
    data: tuple[np.ndarray, np.ndarray], search: SearchAlgorithm
) -> None:
    from robustness.cost import estimate_cost

    x, y = data[0][:16], data[1][:16]
    backend = CountingBackend(load_cpu(to_onnx(natural_cnn()), x).backend)
    spec = AuditSpec(epsilons=(EPS, 2 * EPS), steps=7, landscape_samples=0, search=search)
    run_audit(backend, x, y, spec, device=CPU)  # type: ignore[arg-type]
    estimate = estimate_cost(spec, len(x))
    assert backend.forward_rows == estimate.forward_passes  # with the degeneracy noise probe
    assert backend.gradient_rows / len(x) == estimate.backward_passes_per_sample

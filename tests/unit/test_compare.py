"""Verdicts between audits, on hand-built result objects."""

from __future__ import annotations

import pytest

from robustness.compare import Comparison, compare, parse_increase
from robustness.config import AuditConfig
from robustness.results import AuditResult

CFG = AuditConfig()
DIAGNOSTICS = {
    "gradient_masking_suspected": False,
    "zero_gradient_fraction": 0.0,
    "nonfinite_gradient_fraction": 0.0,
    "random_search_wins": 0,
    "parity_max_abs_diff": None,
}


def result(*per_eps: tuple[float, float, float, float]) -> AuditResult:
    """A result without per-sample values: (ε, mean ψ, CI low, CI high) per ε."""
    summary = {"median": 0.0, "p90": 0.0, "max": 0.0}
    return AuditResult.model_validate(
        {
            "per_epsilon": [
                {"epsilon": e, "divergence": {"mean": m, "ci95": [lo, hi], **summary},
                 "clean_accuracy": None, "fgsm_accuracy": None, "pgd_accuracy": 0.5}
                for e, m, lo, hi in per_eps
            ],
            "samples": 100,
            "backend": "torch",
            "diagnostics": DIAGNOSTICS,
        }
    )  # fmt: skip


def test_regression_needs_both_size_and_separation() -> None:
    base = result((0.03, 0.010, 0.0098, 0.0102))
    big_and_clear = result((0.03, 0.014, 0.013, 0.015))
    small_but_clear = result((0.03, 0.0105, 0.0103, 0.0107))  # +5%: separated, under 10%
    big_but_noisy = result((0.03, 0.014, 0.008, 0.020))

    def cmp(cand: AuditResult) -> Comparison:
        return compare(base, cand, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)

    assert cmp(big_and_clear).verdict == "regressed"
    assert cmp(big_and_clear).regressed
    assert cmp(small_but_clear).verdict == "worse"
    assert cmp(big_but_noisy).verdict == "same"
    assert cmp(result((0.03, 0.005, 0.004, 0.006))).verdict == "better"


def test_worst_epsilon_decides_and_other_epsilons_are_incomparable() -> None:
    base = result((0.03, 0.01, 0.009, 0.011), (0.06, 0.02, 0.019, 0.021))
    cand = result((0.03, 0.005, 0.004, 0.006), (0.06, 0.03, 0.029, 0.031))
    out = compare(base, cand, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "regressed"
    assert [v.epsilon for v in out.per_epsilon] == [0.03, 0.06]
    assert "0.06" in out.reason
    extra = result((0.03, 0.005, 0.004, 0.006), (0.06, 0.03, 0.029, 0.031), (0.1, 9.0, 8.0, 10.0))
    out = compare(base, extra, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "incomparable"
    assert "ε differs" in out.reason


def test_different_threat_models_are_incomparable() -> None:
    base = result((0.03, 0.01, 0.009, 0.011))
    out = compare(
        base, base, max_increase=0.1, baseline_config=CFG, candidate_config=AuditConfig(norm="l2")
    )
    assert out.verdict == "incomparable"
    assert "norm" in out.reason
    disjoint = compare(
        base, result((0.5, 1, 1, 1)), max_increase=0.1, baseline_config=CFG, candidate_config=CFG
    )
    assert disjoint.verdict == "incomparable"


@pytest.mark.parametrize(("text", "value"), [("10%", 0.1), ("0.25", 0.25), (" 5 %", 0.05)])
def test_parse_increase(text: str, value: float) -> None:
    assert parse_increase(text.replace(" %", "%")) == pytest.approx(value)

"""Compare and gate judge only like with like, and pair samples when they can (issue 6.6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from robustness.compare import compare, paired_test
from robustness.engine import run_audit
from robustness.report import divergence_dict, result_to_dict
from robustness.spec import AuditSpec, Baseline
from robustness.stats import summarize
from tests.factories.models import adversarial_cnn, digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import CPU, load_cpu

CFG: dict[str, Any] = {
    "norm": "linf",
    "logit_normalization": "l2",
    "epsilons": [0.03],
    "steps": 20,
    "restarts": 1,
    "step_size": None,
    "backend": "auto",
    "fd_directions": 64,
    "seed": 0,
}


def result(psi: np.ndarray, *, sha: str = "d" * 64, **extra: Any) -> dict[str, Any]:
    """A result as the worker stores it: per-sample ψ, its summary, the manifest."""
    return {
        "per_epsilon": [
            {
                "epsilon": 0.03,
                "divergence": divergence_dict(summarize(psi, seed=0)),
                "pgd_accuracy": 0.5,
                "per_sample": psi.tolist(),
            }
        ],
        "backend": "torch",
        "diagnostics": {"degenerate": None},
        "verdict": "measured",
        "manifest": {"dataset_sha256": sha, "input_range": [0.0, 1.0]},
        **extra,
    }


def spread_psi(n: int = 200, seed: int = 0) -> np.ndarray:
    """ψ that varies a lot between samples, as real ones do (heavy right tail)."""
    return np.random.default_rng(seed).lognormal(mean=-5, sigma=1.5, size=n)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"config": {"steps": 50}}, "steps differs"),
        ({"config": {"restarts": 3}}, "restarts differs"),
        ({"config": {"step_size": 0.001}}, "step_size differs"),
        ({"config": {"norm": "l2"}}, "norm differs"),
        ({"config": {"logit_normalization": "none"}}, "logit_normalization differs"),
        ({"config": {"epsilons": [0.03, 0.1]}}, "ε differs"),
        ({"result": {"backend": "onnxruntime"}}, "backend differs"),
        ({"result": {"search": {"algorithm": "apgd-kl/2"}}}, "search algorithm differs"),
        ({"sha": "e" * 64}, "dataset (sha256) differs"),
        ({"manifest": {"input_range": [-1.0, 1.0]}}, "input_range differs"),
        ({"manifest": {"preprocessing": {"scale": 255}}}, "preprocessing differs"),
    ],
)
def test_audits_measured_differently_are_incomparable(change: dict[str, Any], reason: str) -> None:
    psi = spread_psi()
    base = result(psi)
    cand = result(psi, sha=change.get("sha", "d" * 64), **change.get("result", {}))
    cand["manifest"].update(change.get("manifest", {}))
    out = compare(
        base,
        cand,
        max_increase=0.1,
        baseline_config=CFG,
        candidate_config={**CFG, **change.get("config", {})},
    )
    assert out.verdict == "incomparable"
    assert any(reason in r for r in out.reasons), out.reasons
    assert out.to_dict()["reasons"] == list(out.reasons)


def test_seed_and_an_implicit_algorithm_version_still_compare() -> None:
    psi = spread_psi()
    base = result(psi)  # written before the engine recorded its algorithm
    cand = result(psi, search={"algorithm": "pgd-kl/1"})
    out = compare(
        base, cand, max_increase=0.1, baseline_config=CFG, candidate_config={**CFG, "seed": 7}
    )
    assert out.verdict == "same"


def test_a_degenerate_model_cannot_pass_the_gate() -> None:
    psi = spread_psi()
    flat = np.zeros_like(psi)
    dead = result(flat, verdict="degenerate")
    dead["diagnostics"]["degenerate"] = {"kind": "constant_output", "reason": "ignores input"}
    out = compare(result(psi), dead, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "incomparable"  # ψ = 0 would otherwise read as "better"
    assert "candidate audit's model is degenerate (constant_output)" in out.reason


def test_paired_test_sees_a_shift_the_overlapping_intervals_hide() -> None:
    psi = spread_psi()
    shifted = psi * 1.2 * np.random.default_rng(1).uniform(0.97, 1.03, size=psi.shape)
    base, cand = result(psi), result(shifted)
    b, c = base["per_epsilon"][0]["divergence"], cand["per_epsilon"][0]["divergence"]
    assert c["ci95"][0] < b["ci95"][1]  # the two intervals overlap: the old verdict was "same"
    out = compare(base, cand, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "regressed"
    item = out.to_dict()["per_epsilon"][0]
    assert item["test"] == "paired"
    assert item["paired"]["ci95"][0] > 0
    assert item["relative_change"] == pytest.approx(0.2, abs=0.02)
    unpaired = compare(
        {**base, "manifest": {}}, {**cand, "manifest": {}}, max_increase=0.1,
        baseline_config=CFG, candidate_config=CFG,
    )  # fmt: skip
    assert unpaired.verdict == "same"


def test_paired_test_on_noise_alone_is_same() -> None:
    psi = spread_psi()
    noisy = psi * np.random.default_rng(2).uniform(0.9, 1.1, size=psi.shape)
    out = compare(result(psi), result(noisy), max_increase=0.1, baseline_config=CFG,
                  candidate_config=CFG)  # fmt: skip
    assert out.verdict == "same"
    test = paired_test(psi.tolist(), noisy.tolist())
    assert test.ci95[0] <= 0 <= test.ci95[1]
    assert paired_test(psi.tolist(), psi.tolist()[:50]).samples == 50  # the common prefix


def test_real_audits_adversarial_training_is_better_and_undoing_it_regresses() -> None:
    split = digits_split()
    x, y = split.x_test[:64], split.y_test[:64]
    spec = AuditSpec(epsilons=(0.1,), steps=5, landscape_samples=0, baselines=(Baseline.PGD,))
    manifest = {"dataset_sha256": "f" * 64, "input_range": [0.0, 1.0]}
    audits = {}
    for name, net in (("natural", natural_cnn()), ("adversarial", adversarial_cnn())):
        backend = load_cpu(to_onnx(net), x).backend
        audits[name] = {**result_to_dict(run_audit(backend, x, y, spec, device=CPU)),
                        "manifest": manifest}  # fmt: skip
    cfg = {**CFG, "epsilons": [0.1], "steps": 5}
    kw: dict[str, Any] = {"max_increase": 0.1, "baseline_config": cfg, "candidate_config": cfg}
    assert compare(audits["natural"], audits["adversarial"], **kw).verdict == "better"
    back = compare(audits["adversarial"], audits["natural"], **kw)
    assert back.verdict == "regressed"
    assert back.per_epsilon[0].paired is not None

"""Compare and gate judge only like with like, and pair samples when they can (issue 6.6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from robustness.compare import compare, paired_test
from robustness.config import AuditConfig, Baseline
from robustness.engine import run_audit
from robustness.results import AuditResult, Manifest
from robustness.spec import AuditSpec
from robustness.stats import summarize
from tests.factories.models import adversarial_cnn, digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import CPU, load_cpu

CFG = AuditConfig(epsilons=[0.03])
DIAGNOSTICS = {
    "gradient_masking_suspected": False,
    "zero_gradient_fraction": 0.0,
    "nonfinite_gradient_fraction": 0.0,
    "random_search_wins": 0,
    "parity_max_abs_diff": None,
}


def search(algorithm: str) -> dict[str, Any]:
    return {"algorithm": algorithm, "steps": 20, "restarts": 1, "runs": 3, "steps_per_run": 13,
            "gradient_evaluations_per_sample": 40}  # fmt: skip


def stored(psi: np.ndarray, *, sha: str = "d" * 64, eps: float = 0.03, **extra: Any) -> dict:
    """A result as the worker stores it (JSON): per-sample ψ, its summary, the manifest."""
    return {
        "per_epsilon": [
            {
                "epsilon": eps,
                "divergence": summarize(psi, seed=0).model_dump(mode="json"),
                "clean_accuracy": None,
                "fgsm_accuracy": None,
                "pgd_accuracy": 0.5,
                "per_sample": psi.tolist(),
            }
        ],
        "samples": len(psi),
        "backend": "torch",
        "diagnostics": DIAGNOSTICS,
        "manifest": {"dataset_sha256": sha, "input_range": [0.0, 1.0]},
        **extra,
    }


def result(psi: np.ndarray, **kw: Any) -> AuditResult:
    """A stored result read back, as the API and the gate read it."""
    return AuditResult.model_validate(stored(psi, **kw))


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
        ({"eps": 0.1}, "ε differs"),
        ({"config": {"fd_directions": 16}, "result": {"backend": "onnxruntime"}}, "fd_directions"),
        ({"result": {"backend": "onnxruntime"}}, "backend differs"),
        ({"result": {"search": search("apgd-kl/2")}}, "search algorithm differs"),
        ({"sha": "e" * 64}, "dataset (sha256) differs"),
        ({"manifest": {"input_range": [-1.0, 1.0]}}, "pixel space (the input range"),
        ({"manifest": {"preprocessing": {"scale": 255}}}, "pixel space (the input range"),
    ],
)
def test_audits_measured_differently_are_incomparable(change: dict[str, Any], reason: str) -> None:
    psi = spread_psi()
    base = result(psi)
    cand = stored(psi, sha=change.get("sha", "d" * 64), eps=change.get("eps", 0.03),
                  **change.get("result", {}))  # fmt: skip
    cand["manifest"].update(change.get("manifest", {}))
    out = compare(
        base,
        AuditResult.model_validate(cand),
        max_increase=0.1,
        baseline_config=CFG,
        candidate_config=CFG.model_copy(update=change.get("config", {})),
    )
    assert out.verdict == "incomparable"
    assert any(reason in r for r in out.reasons), out.reasons
    assert out.model_dump(mode="json")["reasons"] == list(out.reasons)


def test_a_config_stored_before_fd_directions_compares_with_its_default() -> None:
    psi = spread_psi()
    old = AuditConfig.from_stored({"epsilons": [0.03], "backend": "onnxruntime"})
    new = AuditConfig(epsilons=[0.03], backend="onnxruntime", fd_directions=64)
    black = result(psi, backend="onnxruntime")
    out = compare(black, black, max_increase=0.1, baseline_config=old, candidate_config=new)
    assert out.verdict == "same", out.reasons


def test_seed_and_an_implicit_algorithm_version_still_compare() -> None:
    psi = spread_psi()
    base = result(psi)  # written before the engine recorded its algorithm
    cand = result(psi, search=search("pgd-kl/1"))
    out = compare(
        base,
        cand,
        max_increase=0.1,
        baseline_config=CFG,
        candidate_config=CFG.model_copy(update={"seed": 7}),
    )
    assert out.verdict == "same"


def test_a_degenerate_model_cannot_pass_the_gate() -> None:
    psi = spread_psi()
    flat = np.zeros_like(psi)
    degenerate = {"kind": "constant_output", "reason": "ignores input"}
    dead = result(flat, diagnostics={**DIAGNOSTICS, "degenerate": degenerate})
    assert dead.verdict == "degenerate"  # derived for rows stored without a verdict
    out = compare(result(psi), dead, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "incomparable"  # ψ = 0 would otherwise read as "better"
    assert "candidate audit's model is degenerate (constant_output)" in out.reason


def test_paired_test_sees_a_shift_the_overlapping_intervals_hide() -> None:
    psi = spread_psi()
    shifted = psi * 1.2 * np.random.default_rng(1).uniform(0.97, 1.03, size=psi.shape)
    base, cand = result(psi), result(shifted)
    b, c = base.per_epsilon[0].divergence, cand.per_epsilon[0].divergence
    assert c.ci95[0] < b.ci95[1]  # the two intervals overlap: the old verdict was "same"
    out = compare(base, cand, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "regressed"
    item = out.model_dump(mode="json")["per_epsilon"][0]
    assert item["test"] == "paired"
    assert item["paired"]["ci95"][0] > 0
    assert item["relative_change"] == pytest.approx(0.2, abs=0.02)
    unpaired = compare(
        base.model_copy(update={"manifest": None}), cand.model_copy(update={"manifest": None}),
        max_increase=0.1,
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
    manifest = Manifest(dataset_sha256="f" * 64, input_range=[0.0, 1.0])
    audits = {}
    for name, net in (("natural", natural_cnn()), ("adversarial", adversarial_cnn())):
        backend = load_cpu(to_onnx(net), x).backend
        audits[name] = run_audit(backend, x, y, spec, device=CPU).model_copy(
            update={"manifest": manifest}
        )
    cfg = AuditConfig(epsilons=[0.1], steps=5)
    kw: dict[str, Any] = {"max_increase": 0.1, "baseline_config": cfg, "candidate_config": cfg}
    assert compare(audits["natural"], audits["adversarial"], **kw).verdict == "better"
    back = compare(audits["adversarial"], audits["natural"], **kw)
    assert back.verdict == "regressed"
    assert back.per_epsilon[0].paired is not None


def test_normalizing_inside_or_declaring_it_outside_measures_the_same_pixel_space() -> None:
    psi = spread_psi()
    base = result(psi)  # input_range [0, 1], no preprocessing: normalizes inside its graph
    declared = stored(psi)
    declared["manifest"]["preprocessing"] = {
        "scale": 1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NHWC"
    }  # fmt: skip
    cand = AuditResult.model_validate(declared)
    out = compare(base, cand, max_increase=0.1, baseline_config=CFG, candidate_config=CFG)
    assert out.verdict == "same", out.reasons
    other = stored(psi)
    other["manifest"]["preprocessing"] = {"scale": 1, "mean": [0.5], "std": [0.5]}
    out = compare(cand, AuditResult.model_validate(other), max_increase=0.1,
                  baseline_config=CFG, candidate_config=CFG)  # fmt: skip
    assert out.verdict == "same", out.reasons  # other mean/std: still the same pixels
    pixels_255 = stored(psi)
    pixels_255["manifest"].update(input_range=[0.0, 255.0], preprocessing={"scale": 255})
    out = compare(cand, AuditResult.model_validate(pixels_255), max_increase=0.1,
                  baseline_config=CFG, candidate_config=CFG)  # fmt: skip
    assert out.verdict == "incomparable"
    assert any("[0.0, 1.0] vs [0.0, 255.0]" in r for r in out.reasons), out.reasons

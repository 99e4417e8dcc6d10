"""Verdicts between audits: did the divergence regress against a baseline, beyond noise?

Works on `result` objects (api-v1.md) so the API, the CLI gate and offline reports share it.
Lower divergence is better. Two values of ψ compare only when measured the same way
(metric.md, "Comparability"); otherwise, or when either model is degenerate, the verdict is
`incomparable` with every reason.

A candidate regresses at an ε when its mean divergence exceeds the baseline's by more than
`max_increase` (relative) *and* the increase is beyond noise, so noise alone cannot fail a
release. On the same dataset, "beyond noise" is a paired test: the seeded bootstrap 95%
interval of the mean per-sample difference excludes 0. Without per-sample values on the same
samples it falls back to the two audits' bootstrap intervals not overlapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from robustness.config import AuditConfig, BackendKind
from robustness.results import AuditResult, EpsilonResult, Manifest, Verdict

ComparisonVerdict = Literal["better", "same", "worse", "regressed", "incomparable"]
# Audits written before the engine recorded its search algorithm ran this one.
DEFAULT_ALGORITHM = "pgd-kl/1"
SEARCH_KEYS = ("steps", "restarts", "step_size")
THREAT_KEYS = ("norm", "logit_normalization")
PAIRED_RESAMPLES = 2000


class _Out(BaseModel):
    # relative_change is ∞ when the baseline's ψ is 0: written as Infinity, as it always was.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class PairedTest(_Out):
    """Paired bootstrap of the mean of candidate − baseline ψ over the same samples."""

    test: Literal["paired bootstrap of the mean per-sample difference"] = (
        "paired bootstrap of the mean per-sample difference"
    )
    samples: int = Field(description="Samples both audits measured (their common prefix)")
    mean_difference: float
    ci95: tuple[float, float]


class EpsilonVerdict(_Out):
    """The verdict at one ε both audits measured."""

    epsilon: float
    baseline_divergence: float = Field(description="The baseline's mean ψ")
    candidate_divergence: float = Field(description="The candidate's mean ψ")
    relative_change: float
    pgd_accuracy_change: float | None
    verdict: ComparisonVerdict
    test: Literal["paired", "ci_overlap"] = Field(
        description="paired: bootstrap of per-sample differences; ci_overlap: separate CIs"
    )
    paired: PairedTest | None = None


class Comparison(_Out):
    """A candidate audit against a baseline: the worst ε decides."""

    verdict: ComparisonVerdict
    reason: str
    reasons: tuple[str, ...] = Field(description="Every reason (several when incomparable)")
    per_epsilon: tuple[EpsilonVerdict, ...] = ()
    regressed: bool = Field(description="verdict is regressed: the gate fails")


def _outcome(
    verdict: ComparisonVerdict, reasons: list[str], per_eps: tuple[EpsilonVerdict, ...] = ()
) -> Comparison:
    return Comparison(
        verdict=verdict,
        reason="; ".join(reasons),
        reasons=tuple(reasons),
        per_epsilon=per_eps,
        regressed=verdict == "regressed",
    )


def compare(
    baseline: AuditResult,
    candidate: AuditResult,
    *,
    max_increase: float,
    baseline_config: AuditConfig,
    candidate_config: AuditConfig,
) -> Comparison:
    """Compare two succeeded audits, ε by ε, when they measured the same thing."""
    reasons = incomparable_reasons(baseline, candidate, baseline_config, candidate_config)
    if reasons:
        return _outcome("incomparable", reasons)
    paired = same_samples(baseline, candidate)
    base = {round(e.epsilon, 12): e for e in baseline.per_epsilon}
    verdicts = []
    for cand in candidate.per_epsilon:
        ref = base.get(round(cand.epsilon, 12))
        if ref is not None:
            verdicts.append(_at_epsilon(ref, cand, max_increase, paired=paired))
    if not verdicts:
        return _outcome("incomparable", ["the audits share no ε"])
    order: list[ComparisonVerdict] = ["regressed", "worse", "same", "better"]
    worst = min((v.verdict for v in verdicts), key=order.index)
    noise = "beyond a paired test" if paired else "beyond the 95% CI"
    if worst == "regressed":
        eps = ", ".join(f"{v.epsilon:g}" for v in verdicts if v.verdict == "regressed")
        reason = f"divergence rose by more than {max_increase:.0%} {noise} at ε = {eps}"
    else:
        reason = f"no ε regressed by more than {max_increase:.0%} {noise}"
    return _outcome(worst, [reason], tuple(verdicts))


def incomparable_reasons(
    baseline: AuditResult,
    candidate: AuditResult,
    baseline_config: AuditConfig,
    candidate_config: AuditConfig,
) -> list[str]:
    """Every way the two audits measured differently, and every degenerate model."""
    reasons = [
        f"{role} audit's model is degenerate ({kind}): {reason}"
        for role, result in (("baseline", baseline), ("candidate", candidate))
        if (found := degenerate(result)) is not None
        for kind, reason in [found]
    ]
    return reasons + measured_differently(baseline, candidate, baseline_config, candidate_config)


def measured_differently(
    baseline: AuditResult,
    candidate: AuditResult,
    baseline_config: AuditConfig,
    candidate_config: AuditConfig,
) -> list[str]:
    """Every way the two audits' threat models differ (metric.md, "Comparability"): backend,
    search, norm, normalization, ε, search settings, dataset and preprocessing. Empty: the
    same threat model, whatever either model's verdict."""
    bc, cc = baseline_config, candidate_config
    backends = (baseline.backend, candidate.backend)
    pairs: list[tuple[str, Any, Any]] = [
        ("backend", *backends),
        ("search algorithm", _algorithm(baseline), _algorithm(candidate)),
        *((k, getattr(bc, k), getattr(cc, k)) for k in THREAT_KEYS),
        ("ε", _epsilons(baseline), _epsilons(candidate)),
        *((k, getattr(bc, k), getattr(cc, k)) for k in SEARCH_KEYS),
    ]
    if BackendKind.ONNXRUNTIME in backends:  # the black-box search's query budget
        pairs.append(("fd_directions", bc.fd_directions, cc.fd_directions))
    bm, cm = baseline.manifest, candidate.manifest
    pairs += [
        ("dataset (sha256)", bm and bm.dataset_sha256, cm and cm.dataset_sha256),
        ("pixel space (the input range ε is measured in)", _space(bm), _space(cm)),
    ]
    return [f"{name} differs: {b} vs {c}" for name, b, c in pairs if _differ(b, c)]


def degenerate(result: AuditResult) -> tuple[str, str] | None:
    """(kind, reason) if the result's verdict says ψ is not a robustness measure."""
    found = result.diagnostics.degenerate
    if found is not None:
        return found.kind.value, found.reason
    if result.verdict is Verdict.DEGENERATE:
        return "unknown", "the audit's verdict is degenerate"
    return None


def same_samples(baseline: AuditResult, candidate: AuditResult) -> bool:
    """Both audits ran on the same dataset (by sha256) and kept their per-sample values."""
    sha = baseline.manifest.dataset_sha256 if baseline.manifest else None
    if sha is None or candidate.manifest is None or sha != candidate.manifest.dataset_sha256:
        return False
    return all(e.per_sample is not None for r in (baseline, candidate) for e in r.per_epsilon)


def paired_test(base: Sequence[float], cand: Sequence[float], *, seed: int = 0) -> PairedTest:
    """Bootstrap the mean of cand − base over the samples both audited (the common prefix)."""
    n = min(len(base), len(cand))
    diff = np.asarray(cand[:n], dtype=np.float64) - np.asarray(base[:n], dtype=np.float64)
    if n == 0:
        return PairedTest(samples=0, mean_difference=0.0, ci95=(0.0, 0.0))
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(PAIRED_RESAMPLES, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return PairedTest(samples=n, mean_difference=float(diff.mean()), ci95=(float(lo), float(hi)))


def _at_epsilon(
    ref: EpsilonResult, cand: EpsilonResult, max_increase: float, *, paired: bool
) -> EpsilonVerdict:
    b, c = ref.divergence, cand.divergence
    test = paired_test(ref.per_sample or (), cand.per_sample or ()) if paired else None
    base_mean = float(np.mean((ref.per_sample or ())[: test.samples])) if test else b.mean
    change = (c.mean - b.mean) / b.mean if b.mean > 0 else (0.0 if c.mean == 0 else float("inf"))
    if test is not None:
        change = test.mean_difference / base_mean if base_mean > 0 else change
        up, down = test.ci95[0] > 0, test.ci95[1] < 0
    else:
        up, down = c.ci95[0] > b.ci95[1], c.ci95[1] < b.ci95[0]
    verdict: ComparisonVerdict
    if up and change > max_increase:
        verdict = "regressed"
    elif up:
        verdict = "worse"
    elif down:
        verdict = "better"
    else:
        verdict = "same"
    pgd = None
    if ref.pgd_accuracy is not None and cand.pgd_accuracy is not None:
        pgd = cand.pgd_accuracy - ref.pgd_accuracy
    return EpsilonVerdict(
        epsilon=cand.epsilon, baseline_divergence=b.mean, candidate_divergence=c.mean,
        relative_change=change, pgd_accuracy_change=pgd, verdict=verdict,
        test="paired" if test else "ci_overlap", paired=test,
    )  # fmt: skip


def _algorithm(result: AuditResult) -> str:
    return result.search.algorithm if result.search is not None else DEFAULT_ALGORITHM


def _space(manifest: Manifest | None) -> list[float] | None:
    """The range ε was measured in: [0, scale] for declared preprocessing, else input_range.

    Mean, std and layout are not compared: normalizing inside the graph or declaring it
    outside measures the same pixel-space ball, and an L∞ or L2 ball ignores the layout.
    """
    if manifest is None:
        return None
    if manifest.preprocessing is not None:
        return list(manifest.preprocessing.pixel_range)
    return None if manifest.input_range is None else [float(v) for v in manifest.input_range]


def _epsilons(result: AuditResult) -> list[float]:
    """The ε the audit measured (its results; the config asks for the same ones)."""
    return sorted(round(float(e.epsilon), 12) for e in result.per_epsilon)


def _differ(a: Any, b: Any) -> bool:
    """Only a value both audits recorded can differ; lists and tuples compare alike."""
    if a is None and b is None:
        return False
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return list(a) != list(b)
    return bool(a != b)


def parse_increase(text: str) -> float:
    """'10%' → 0.10, '0.1' → 0.1."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if value < 0:
        raise ValueError("max increase must be ≥ 0")
    return value

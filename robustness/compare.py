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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["better", "same", "worse", "regressed", "incomparable"]
# Audits written before the engine recorded its search algorithm ran this one.
DEFAULT_ALGORITHM = "pgd-kl/1"
SEARCH_KEYS = ("steps", "restarts", "step_size")
THREAT_KEYS = ("norm", "logit_normalization")
PAIRED_RESAMPLES = 2000


@dataclass(frozen=True)
class PairedTest:
    """Paired bootstrap of the mean of candidate − baseline ψ over the same samples."""

    samples: int
    mean_difference: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": "paired bootstrap of the mean per-sample difference",
            "samples": self.samples,
            "mean_difference": self.mean_difference,
            "ci95": list(self.ci95),
        }


@dataclass(frozen=True)
class EpsilonVerdict:
    epsilon: float
    baseline_mean: float
    candidate_mean: float
    relative_change: float
    pgd_accuracy_change: float | None
    verdict: Verdict
    paired: PairedTest | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "baseline_divergence": self.baseline_mean,
            "candidate_divergence": self.candidate_mean,
            "relative_change": self.relative_change,
            "pgd_accuracy_change": self.pgd_accuracy_change,
            "verdict": self.verdict,
            "test": "paired" if self.paired else "ci_overlap",
            "paired": self.paired.to_dict() if self.paired else None,
        }


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    per_epsilon: tuple[EpsilonVerdict, ...]
    reason: str
    reasons: tuple[str, ...] = ()

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "regressed": self.regressed,
            "reason": self.reason,
            "reasons": list(self.reasons or (self.reason,)),
            "per_epsilon": [v.to_dict() for v in self.per_epsilon],
        }


def compare(
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    max_increase: float,
    baseline_config: Mapping[str, Any],
    candidate_config: Mapping[str, Any],
) -> Comparison:
    """Compare two succeeded audits, ε by ε, when they measured the same thing."""
    reasons = incomparable_reasons(baseline, candidate, baseline_config, candidate_config)
    if reasons:
        return Comparison("incomparable", (), "; ".join(reasons), tuple(reasons))
    paired = same_samples(baseline, candidate)
    base = {round(e["epsilon"], 12): e for e in baseline["per_epsilon"]}
    verdicts = []
    for cand in candidate["per_epsilon"]:
        ref = base.get(round(cand["epsilon"], 12))
        if ref is not None:
            verdicts.append(_at_epsilon(ref, cand, max_increase, paired=paired))
    if not verdicts:
        return Comparison("incomparable", (), "the audits share no ε")
    order: list[Verdict] = ["regressed", "worse", "same", "better"]
    worst = min((v.verdict for v in verdicts), key=order.index)
    noise = "beyond a paired test" if paired else "beyond the 95% CI"
    if worst == "regressed":
        eps = ", ".join(f"{v.epsilon:g}" for v in verdicts if v.verdict == "regressed")
        reason = f"divergence rose by more than {max_increase:.0%} {noise} at ε = {eps}"
    else:
        reason = f"no ε regressed by more than {max_increase:.0%} {noise}"
    return Comparison(worst, tuple(verdicts), reason)


def incomparable_reasons(
    baseline: Mapping[str, Any],
    candidate: Mapping[str, Any],
    baseline_config: Mapping[str, Any],
    candidate_config: Mapping[str, Any],
) -> list[str]:
    """Every way the two audits measured differently, and every degenerate model."""
    reasons = [
        f"{role} audit's model is degenerate ({d.get('kind')}): {d.get('reason')}"
        for role, result in (("baseline", baseline), ("candidate", candidate))
        if (d := degenerate(result)) is not None
    ]
    pairs: list[tuple[str, Any, Any]] = [
        ("backend", _backend(baseline, baseline_config), _backend(candidate, candidate_config)),
        ("search algorithm", _algorithm(baseline), _algorithm(candidate)),
        *((k, baseline_config.get(k), candidate_config.get(k)) for k in THREAT_KEYS),
        ("ε", _epsilons(baseline, baseline_config), _epsilons(candidate, candidate_config)),
        *((k, baseline_config.get(k), candidate_config.get(k)) for k in SEARCH_KEYS),
    ]
    if "onnxruntime" in (pairs[0][1], pairs[0][2]):  # the black-box search's query budget
        pairs.append(
            ("fd_directions", baseline_config.get("fd_directions"),
             candidate_config.get("fd_directions"))
        )  # fmt: skip
    bm, cm = baseline.get("manifest") or {}, candidate.get("manifest") or {}
    pairs += [
        ("dataset (sha256)", bm.get("dataset_sha256"), cm.get("dataset_sha256")),
        ("preprocessing: input_range", bm.get("input_range"), cm.get("input_range")),
        ("preprocessing", _preprocessing(baseline, baseline_config),
         _preprocessing(candidate, candidate_config)),
    ]  # fmt: skip
    reasons += [f"{name} differs: {b} vs {c}" for name, b, c in pairs if _differ(b, c)]
    return reasons


def degenerate(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The result's degeneracy record, if its verdict says ψ is not a robustness measure."""
    found = (result.get("diagnostics") or {}).get("degenerate")
    if found is None and result.get("verdict") == "degenerate":
        return {"kind": "unknown", "reason": "the audit's verdict is degenerate"}
    return found


def same_samples(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> bool:
    """Both audits ran on the same dataset (by sha256) and kept their per-sample values."""
    bm, cm = baseline.get("manifest") or {}, candidate.get("manifest") or {}
    sha = bm.get("dataset_sha256")
    if sha is None or sha != cm.get("dataset_sha256"):
        return False
    return all("per_sample" in e for r in (baseline, candidate) for e in r["per_epsilon"])


def paired_test(base: list[float], cand: list[float], *, seed: int = 0) -> PairedTest:
    """Bootstrap the mean of cand − base over the samples both audited (the common prefix)."""
    n = min(len(base), len(cand))
    diff = np.asarray(cand[:n], dtype=np.float64) - np.asarray(base[:n], dtype=np.float64)
    if n == 0:
        return PairedTest(0, 0.0, (0.0, 0.0))
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(PAIRED_RESAMPLES, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return PairedTest(n, float(diff.mean()), (float(lo), float(hi)))


def _at_epsilon(
    ref: Mapping[str, Any], cand: Mapping[str, Any], max_increase: float, *, paired: bool
) -> EpsilonVerdict:
    b, c = ref["divergence"], cand["divergence"]
    test = paired_test(ref["per_sample"], cand["per_sample"]) if paired else None
    base_mean = float(np.mean(ref["per_sample"][: test.samples])) if test else b["mean"]
    change = (
        (c["mean"] - b["mean"]) / b["mean"]
        if b["mean"] > 0
        else (0.0 if c["mean"] == 0 else float("inf"))
    )
    if test is not None:
        change = test.mean_difference / base_mean if base_mean > 0 else change
        up, down = test.ci95[0] > 0, test.ci95[1] < 0
    else:
        up, down = c["ci95"][0] > b["ci95"][1], c["ci95"][1] < b["ci95"][0]
    verdict: Verdict
    if up and change > max_increase:
        verdict = "regressed"
    elif up:
        verdict = "worse"
    elif down:
        verdict = "better"
    else:
        verdict = "same"
    pgd = None
    if ref.get("pgd_accuracy") is not None and cand.get("pgd_accuracy") is not None:
        pgd = cand["pgd_accuracy"] - ref["pgd_accuracy"]
    return EpsilonVerdict(cand["epsilon"], b["mean"], c["mean"], change, pgd, verdict, test)


def _backend(result: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """The backend that ran (the result's), else the one asked for."""
    return (
        result.get("backend")
        or (result.get("manifest") or {}).get("backend")
        or config.get("backend")
    )


def _algorithm(result: Mapping[str, Any]) -> Any:
    return (result.get("search") or {}).get("algorithm") or DEFAULT_ALGORITHM


def _epsilons(result: Mapping[str, Any], config: Mapping[str, Any]) -> list[float] | None:
    values = config.get("epsilons") or [e["epsilon"] for e in result.get("per_epsilon", [])]
    return sorted(round(float(e), 12) for e in values) if values else None


def _preprocessing(result: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    return (result.get("manifest") or {}).get("preprocessing") or config.get("preprocessing")


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

"""Verdicts between audits: did the divergence regress against a baseline, beyond noise?

Works on `result` objects (api-v1.md) so the API, the CLI gate and offline reports share it.
Lower divergence is better. A candidate regresses at an ε when its mean divergence exceeds
the baseline's by more than `max_increase` (relative) *and* the bootstrap 95% intervals do
not overlap, so noise alone cannot fail a release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["better", "same", "worse", "regressed", "incomparable"]
COMPARABLE_KEYS = ("norm", "logit_normalization")


@dataclass(frozen=True)
class EpsilonVerdict:
    epsilon: float
    baseline_mean: float
    candidate_mean: float
    relative_change: float
    pgd_accuracy_change: float | None
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "baseline_divergence": self.baseline_mean,
            "candidate_divergence": self.candidate_mean,
            "relative_change": self.relative_change,
            "pgd_accuracy_change": self.pgd_accuracy_change,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Comparison:
    verdict: Verdict
    per_epsilon: tuple[EpsilonVerdict, ...]
    reason: str

    @property
    def regressed(self) -> bool:
        return self.verdict == "regressed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "regressed": self.regressed,
            "reason": self.reason,
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
    """Compare two succeeded audits' results at the ε they share."""
    for key in COMPARABLE_KEYS:
        if baseline_config.get(key) != candidate_config.get(key):
            return Comparison(
                "incomparable",
                (),
                f"{key} differs: {baseline_config.get(key)} vs {candidate_config.get(key)}",
            )
    base = {round(e["epsilon"], 12): e for e in baseline["per_epsilon"]}
    verdicts = []
    for cand in candidate["per_epsilon"]:
        ref = base.get(round(cand["epsilon"], 12))
        if ref is not None:
            verdicts.append(_at_epsilon(ref, cand, max_increase))
    if not verdicts:
        return Comparison("incomparable", (), "the audits share no ε")
    order: list[Verdict] = ["regressed", "worse", "same", "better"]
    worst = min((v.verdict for v in verdicts), key=order.index)
    if worst == "regressed":
        eps = ", ".join(f"{v.epsilon:g}" for v in verdicts if v.verdict == "regressed")
        reason = f"divergence rose by more than {max_increase:.0%} beyond the 95% CI at ε = {eps}"
    else:
        reason = f"no ε regressed by more than {max_increase:.0%} beyond the 95% CI"
    return Comparison(worst, tuple(verdicts), reason)


def _at_epsilon(
    ref: Mapping[str, Any], cand: Mapping[str, Any], max_increase: float
) -> EpsilonVerdict:
    b, c = ref["divergence"], cand["divergence"]
    change = (
        (c["mean"] - b["mean"]) / b["mean"]
        if b["mean"] > 0
        else (0.0 if c["mean"] == 0 else float("inf"))
    )
    separated_up = c["ci95"][0] > b["ci95"][1]
    separated_down = c["ci95"][1] < b["ci95"][0]
    verdict: Verdict
    if separated_up and change > max_increase:
        verdict = "regressed"
    elif separated_up:
        verdict = "worse"
    elif separated_down:
        verdict = "better"
    else:
        verdict = "same"
    pgd = None
    if ref.get("pgd_accuracy") is not None and cand.get("pgd_accuracy") is not None:
        pgd = cand["pgd_accuracy"] - ref["pgd_accuracy"]
    return EpsilonVerdict(cand["epsilon"], b["mean"], c["mean"], change, pgd, verdict)


def parse_increase(text: str) -> float:
    """'10%' → 0.10, '0.1' → 0.1."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if value < 0:
        raise ValueError("max increase must be ≥ 0")
    return value

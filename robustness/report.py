"""Shard results merged into one audit result, and the JSON of a result (the API's `result`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from robustness import degeneracy, vulnerable
from robustness.results import (
    AuditResult,
    Convergence,
    Diagnostics,
    EpsilonResult,
    Manifest,
    Timing,
    verdict_of,
)
from robustness.stats import convergence, merge_per_class, summarize

Weighted = Callable[[Sequence[float | None]], float | None]


def result_to_dict(result: AuditResult, *, include_per_sample: bool = True) -> dict[str, Any]:
    """The audit `result` object as the API returns it: AuditResult.to_json as a function."""
    return result.to_json(include_per_sample=include_per_sample)


def merge_results(parts: Sequence[AuditResult], *, seed: int = 0) -> AuditResult:
    """One result from the results of consecutive shards (in sample order).

    Per-sample divergences are concatenated and summarised again; accuracies and gradient
    fractions are weighted by shard size; per-class counts add up; landscapes come from the
    shards that drew them; the most vulnerable samples are the global top K of the shards'
    top K; stage seconds add up; the manifest is the first shard's, with the shard count.
    """
    if not parts:
        raise ValueError("no shard results to merge")
    sizes = [p.samples for p in parts]
    total = sum(sizes)

    def weighted(values: Sequence[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return sum(v * n for v, n in zip(values, sizes, strict=True) if v is not None) / total

    steps = parts[0].search.steps if parts[0].search is not None else None
    per_eps = tuple(
        _merge_epsilon([p.per_epsilon[k] for p in parts], sizes, steps, weighted, seed)
        for k in range(len(parts[0].per_epsilon))
    )
    diagnostics = _merge_diagnostics([p.diagnostics for p in parts], weighted)
    stages: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part.stage_seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    first = parts[0].manifest or Manifest()
    return AuditResult(
        per_epsilon=per_eps,
        samples=total,
        backend=parts[0].backend,
        batch_size=max(p.batch_size for p in parts),
        diagnostics=diagnostics,
        verdict=verdict_of(diagnostics.degenerate),
        landscapes=tuple(ls for p in parts for ls in p.landscapes),
        vulnerable=vulnerable.merge(p.vulnerable for p in parts),
        search=parts[0].search,
        manifest=first.model_copy(update={"shards": len(parts)}),
        timing=Timing(stages=stages),
    )


def _merge_epsilon(
    column: list[EpsilonResult],
    sizes: list[int],
    steps: int | None,
    weighted: Weighted,
    seed: int,
) -> EpsilonResult:
    """One ε across shards: ψ summarised again over all samples, accuracies weighted."""
    psi = np.concatenate([np.asarray(c.per_sample or (), dtype=np.float64) for c in column])
    return EpsilonResult(
        epsilon=column[0].epsilon,
        divergence=summarize(psi, seed=seed),
        clean_accuracy=weighted([c.clean_accuracy for c in column]),
        fgsm_accuracy=weighted([c.fgsm_accuracy for c in column]),
        pgd_accuracy=weighted([c.pgd_accuracy for c in column]),
        per_sample=tuple(psi.tolist()),
        convergence=_merged_convergence(column, sizes, steps),
        per_class=merge_per_class([c.per_class for c in column]),
    )


def _merged_convergence(
    column: list[EpsilonResult], sizes: list[int], steps: int | None
) -> Convergence | None:
    """Convergence of merged shards: ψ means weighted by shard size, judged again."""
    found = [c.convergence for c in column]
    if steps is None or any(c is None for c in found):
        return None
    total = sum(sizes)
    mean = sum(c.psi_mean * n for c, n in zip(found, sizes, strict=True) if c is not None)
    half = sum(c.psi_mean_half * n for c, n in zip(found, sizes, strict=True) if c is not None)
    return convergence(mean / total, half / total, steps)


def _merge_diagnostics(diags: list[Diagnostics], weighted: Weighted) -> Diagnostics:
    parities = [d.parity_max_abs_diff for d in diags if d.parity_max_abs_diff is not None]
    zero = weighted([d.zero_gradient_fraction for d in diags]) or 0.0
    nonfinite = weighted([d.nonfinite_gradient_fraction for d in diags]) or 0.0
    # An all-zero and a non-finite gradient never coincide, so the fractions add up.
    degenerate = degeneracy.merged([d.degenerate for d in diags], zero + nonfinite)
    return Diagnostics(
        gradient_masking_suspected=any(d.gradient_masking_suspected for d in diags),
        zero_gradient_fraction=zero,
        nonfinite_gradient_fraction=nonfinite,
        random_search_wins=sum(d.random_search_wins for d in diags),
        parity_max_abs_diff=max(parities) if parities else None,
        evidence=tuple(e for d in diags for e in d.evidence)[:10],
        degenerate=degenerate,
        blackbox_note=next((d.blackbox_note for d in diags if d.blackbox_note), None),
    )

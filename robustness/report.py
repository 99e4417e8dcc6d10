"""JSON-ready views of the core's dataclasses (the `result` object of api-v1.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from robustness import degeneracy
from robustness.spec import AuditResult, Convergence, DivergenceSummary

DEAD_GRADIENT_KEYS = ("zero_gradient_fraction", "nonfinite_gradient_fraction")


def divergence_dict(d: DivergenceSummary) -> dict[str, Any]:
    return {"mean": d.mean, "median": d.median, "p90": d.p90, "max": d.max, "ci95": list(d.ci95)}


def result_to_dict(result: AuditResult, *, include_per_sample: bool = True) -> dict[str, Any]:
    """The audit `result` object: per_epsilon, samples, diagnostics (manifest added by callers)."""
    per_eps = []
    for r in result.per_epsilon:
        item: dict[str, Any] = {
            "epsilon": r.epsilon,
            "divergence": divergence_dict(r.divergence),
            "clean_accuracy": r.clean_accuracy,
            "fgsm_accuracy": r.fgsm_accuracy,
            "pgd_accuracy": r.pgd_accuracy,
        }
        if r.convergence is not None:
            item["convergence"] = convergence_dict(r.convergence)
        if include_per_sample:
            item["per_sample"] = list(r.per_sample)
        per_eps.append(item)
    diag = result.diagnostics
    body: dict[str, Any] = {
        "per_epsilon": per_eps,
        "samples": result.samples,
        "backend": result.backend.value,
        "batch_size": result.batch_size,
        "diagnostics": {
            "gradient_masking_suspected": diag.gradient_masking_suspected,
            "zero_gradient_fraction": diag.zero_gradient_fraction,
            "nonfinite_gradient_fraction": diag.nonfinite_gradient_fraction,
            "random_search_wins": diag.random_search_wins,
            "parity_max_abs_diff": diag.parity_max_abs_diff,
            "evidence": list(diag.evidence),
            "degenerate": diag.degenerate.to_dict() if diag.degenerate else None,
            "blackbox_note": diag.blackbox_note,
        },
        "verdict": degeneracy.verdict(diag.degenerate).value,
        "landscapes": [landscape.to_dict() for landscape in result.landscapes],
    }
    if result.search is not None:
        body["search"] = asdict(result.search)
    return body


def convergence_dict(c: Convergence) -> dict[str, Any]:
    return asdict(c)


def merged_convergence(column: list[dict[str, Any]], sizes: list[int], steps: int) -> Any:
    """Convergence of merged shards: ψ means weighted by shard size, judged again."""
    from robustness.stats import convergence

    if any("convergence" not in c for c in column):
        return None
    total = sum(sizes)
    mean = sum(c["convergence"]["psi_mean"] * n for c, n in zip(column, sizes, strict=True))
    half = sum(c["convergence"]["psi_mean_half"] * n for c, n in zip(column, sizes, strict=True))
    return convergence_dict(convergence(mean / total, half / total, steps))


def merge_results(parts: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """One `result` from the results of consecutive shards (in sample order).

    Per-sample divergences are concatenated and summarised again; accuracies and gradient
    fractions are weighted by shard size; landscapes come from the shards that drew them.
    """
    import numpy as np

    from robustness.stats import summarize

    if not parts:
        raise ValueError("no shard results to merge")
    sizes = [p["samples"] for p in parts]
    total = sum(sizes)

    def weighted(values: list[float | None]) -> float | None:
        if any(v is None for v in values):
            return None
        return sum(v * n for v, n in zip(values, sizes, strict=True)) / total

    search = parts[0].get("search")
    per_eps = []
    for k, first in enumerate(parts[0]["per_epsilon"]):
        column = [p["per_epsilon"][k] for p in parts]
        psi = np.concatenate([np.asarray(c["per_sample"], dtype=np.float64) for c in column])
        item = {
            "epsilon": first["epsilon"],
            "divergence": divergence_dict(summarize(psi, seed=seed)),
            "clean_accuracy": weighted([c["clean_accuracy"] for c in column]),
            "fgsm_accuracy": weighted([c["fgsm_accuracy"] for c in column]),
            "pgd_accuracy": weighted([c["pgd_accuracy"] for c in column]),
            "per_sample": psi.tolist(),
        }
        if search is not None and (merged := merged_convergence(column, sizes, search["steps"])):
            item["convergence"] = merged
        per_eps.append(item)
    diags = [p["diagnostics"] for p in parts]
    parities = [d["parity_max_abs_diff"] for d in diags if d["parity_max_abs_diff"] is not None]
    # An all-zero and a non-finite gradient never coincide, so the fractions add up.
    dead = sum(weighted([d[k] for d in diags]) or 0.0 for k in DEAD_GRADIENT_KEYS)
    degenerate = degeneracy.merged([d.get("degenerate") for d in diags], dead)
    merged_result: dict[str, Any] = {
        "per_epsilon": per_eps,
        "samples": total,
        "backend": parts[0]["backend"],
        "batch_size": max(p.get("batch_size", 0) for p in parts),
        "diagnostics": {
            "gradient_masking_suspected": any(d["gradient_masking_suspected"] for d in diags),
            "zero_gradient_fraction": weighted([d["zero_gradient_fraction"] for d in diags]),
            "nonfinite_gradient_fraction": weighted(
                [d["nonfinite_gradient_fraction"] for d in diags]
            ),
            "random_search_wins": sum(d["random_search_wins"] for d in diags),
            "parity_max_abs_diff": max(parities) if parities else None,
            "evidence": [e for d in diags for e in d.get("evidence", [])][:10],
            "degenerate": degenerate.to_dict() if degenerate else None,
            "blackbox_note": next(
                (d["blackbox_note"] for d in diags if d.get("blackbox_note")), None
            ),
        },
        "verdict": degeneracy.verdict(degenerate).value,
        "landscapes": [ls for p in parts for ls in p.get("landscapes", [])],
    }
    if search is not None:
        merged_result["search"] = search
    return merged_result

"""JSON-ready views of the core's dataclasses (the `result` object of api-v1.md)."""

from __future__ import annotations

from typing import Any

from robustness.spec import AuditResult


def result_to_dict(result: AuditResult, *, include_per_sample: bool = True) -> dict[str, Any]:
    """The audit `result` object: per_epsilon, samples, diagnostics (manifest added by callers)."""
    per_eps = []
    for r in result.per_epsilon:
        d = r.divergence
        item: dict[str, Any] = {
            "epsilon": r.epsilon,
            "divergence": {
                "mean": d.mean,
                "median": d.median,
                "p90": d.p90,
                "max": d.max,
                "ci95": list(d.ci95),
            },
            "clean_accuracy": r.clean_accuracy,
            "fgsm_accuracy": r.fgsm_accuracy,
            "pgd_accuracy": r.pgd_accuracy,
        }
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
        },
        "landscapes": [landscape.to_dict() for landscape in result.landscapes],
    }
    return body

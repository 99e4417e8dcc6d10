"""Summary statistics for per-sample ψ values."""

from __future__ import annotations

import numpy as np

from robustness.spec import DivergenceSummary


def summarize(values: np.ndarray, *, seed: int = 0, resamples: int = 2000) -> DivergenceSummary:
    """Mean, median, p90, max and a percentile-bootstrap 95% CI of the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no samples to summarize")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return DivergenceSummary(
        mean=float(v.mean()),
        median=float(np.median(v)),
        p90=float(np.percentile(v, 90)),
        max=float(v.max()),
        ci95=(float(lo), float(hi)),
    )

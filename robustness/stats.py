"""Summary statistics for per-sample ψ values, and whether the search behind them converged."""

from __future__ import annotations

import math

import numpy as np

from robustness.results import Convergence, DivergenceSummary


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


# ψ that still grows by more than this over the second half of the search is not converged.
CONVERGENCE_TOLERANCE = 0.02


def convergence(psi_mean: float, psi_mean_half: float, steps: int) -> Convergence:
    """Compare mean ψ after half the search with mean ψ at its end.

    The growth over the second half is the relative gain g. If g exceeds the tolerance, the
    hint assumes each doubling of the steps at least halves the remaining growth (the search
    keeps its best iterate, so growth only slows) and suggests the K that brings g below it.
    """
    gain = (psi_mean - psi_mean_half) / psi_mean if psi_mean > 0 else 0.0
    converged = gain <= CONVERGENCE_TOLERANCE
    suggested = None
    if not converged:
        doublings = max(1, math.ceil(math.log2(gain / CONVERGENCE_TOLERANCE)))
        suggested = steps * 2**doublings
    return Convergence(
        psi_mean_half=psi_mean_half,
        psi_mean=psi_mean,
        relative_gain=gain,
        converged=converged,
        suggested_steps=suggested,
    )

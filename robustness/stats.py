"""Summary statistics for per-sample ψ values, and whether the search behind them converged."""

from __future__ import annotations

import math

import numpy as np

from robustness.results import ClassResult, Convergence, DivergenceSummary

# Resampled values held at once by the bootstrap: 2^20 (4 MiB of indices, 8 MiB of values).
# Measured at 100k samples (benchmarks/bench_bootstrap.py): larger batches are slower, not
# faster, once they leave the cache; one (resamples × n) matrix took 3.2 GB and 19 s.
BOOTSTRAP_BATCH_VALUES = 1 << 20


def summarize(values: np.ndarray, *, seed: int = 0, resamples: int = 2000) -> DivergenceSummary:
    """Mean, median, p90, max and a percentile-bootstrap 95% CI of the mean."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no samples to summarize")
    lo, hi = np.percentile(bootstrap_means(v, seed=seed, resamples=resamples), [2.5, 97.5])
    return DivergenceSummary(
        mean=float(v.mean()),
        median=float(np.median(v)),
        p90=float(np.percentile(v, 90)),
        max=float(v.max()),
        ci95=(float(lo), float(hi)),
    )


def bootstrap_means(v: np.ndarray, *, seed: int, resamples: int) -> np.ndarray:
    """The means of `resamples` resamples of v with replacement, drawn a batch of rows at a time.

    The generator fills rows in order whatever the batch, so every batch size draws the very
    indices one (resamples × n) matrix would: the same seed gives the same means as before
    batching, bit for bit, in bounded memory (tests/unit/test_bootstrap.py).
    """
    rng = np.random.default_rng(seed)
    n = v.size
    index_type = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    rows = max(1, BOOTSTRAP_BATCH_VALUES // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        batch = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(batch, n), dtype=index_type)
        means[start : start + batch] = v[idx].mean(axis=1)
    return means


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


def per_class(
    labels: np.ndarray,
    psi: np.ndarray,
    clean: np.ndarray | None,
    fgsm: np.ndarray | None,
    pgd: np.ndarray | None,
) -> tuple[ClassResult, ...]:
    """ψ and the accuracies by true label; a None mask is a baseline that was not run."""

    def correct(mask: np.ndarray | None, rows: np.ndarray) -> int | None:
        return None if mask is None else int(np.asarray(mask)[rows].sum())

    found = []
    for label in np.unique(labels):
        rows = labels == label
        found.append(
            ClassResult(
                label=int(label),
                samples=int(rows.sum()),
                divergence_mean=float(np.asarray(psi, dtype=np.float64)[rows].mean()),
                clean_correct=correct(clean, rows),
                fgsm_correct=correct(fgsm, rows),
                pgd_correct=correct(pgd, rows),
            )
        )
    return tuple(found)


def merge_per_class(
    columns: list[tuple[ClassResult, ...] | None],
) -> tuple[ClassResult, ...] | None:
    """Shards' per-class results added up (ψ means weighted by their sample counts)."""
    if any(c is None for c in columns):
        return None
    by_label: dict[int, list[ClassResult]] = {}
    for column in columns:
        for row in column or ():
            by_label.setdefault(row.label, []).append(row)

    def added(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    merged = []
    for label in sorted(by_label):
        rows = by_label[label]
        n = sum(r.samples for r in rows)
        merged.append(
            ClassResult(
                label=label,
                samples=n,
                divergence_mean=sum(r.divergence_mean * r.samples for r in rows) / n,
                clean_correct=added([r.clean_correct for r in rows]),
                fgsm_correct=added([r.fgsm_correct for r in rows]),
                pgd_correct=added([r.pgd_correct for r in rows]),
            )
        )
    return tuple(merged)

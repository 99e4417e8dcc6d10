"""The batched bootstrap draws what the one-matrix bootstrap drew, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from robustness import stats
from robustness.stats import bootstrap_means, summarize


def one_matrix_means(v: np.ndarray, *, seed: int, resamples: int) -> np.ndarray:
    """The bootstrap as it was before batching: every resample's indices in one matrix."""
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    return v[idx].mean(axis=1)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4099])
def test_batches_draw_the_same_resamples_as_one_matrix(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = np.random.default_rng(n).gamma(0.5, 0.02, size=n)
    # a batch that does not divide the rows, nor n the batch: the boundaries fall anywhere
    monkeypatch.setattr(stats, "BOOTSTRAP_BATCH_VALUES", 3 * n + 1)
    batched = bootstrap_means(v, seed=11, resamples=301)
    np.testing.assert_array_equal(batched, one_matrix_means(v, seed=11, resamples=301))


def test_the_interval_is_the_one_matrix_percentile_interval() -> None:
    v = np.random.default_rng(5).exponential(0.01, size=3000)
    lo, hi = np.percentile(one_matrix_means(v, seed=3, resamples=2000), [2.5, 97.5])
    assert summarize(v, seed=3).ci95 == (lo, hi)
    assert summarize(v, seed=3) == summarize(v, seed=3)
    assert summarize(v, seed=4).ci95 != (lo, hi)


def test_the_interval_has_the_width_of_the_normal_interval() -> None:
    """Statistically right, not only the same as before: the mean of 3000 draws has standard
    error s/√n, and the percentile interval is about ±1.96 of those."""
    v = np.random.default_rng(6).exponential(0.01, size=3000)
    lo, hi = summarize(v, seed=0).ci95
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert lo < v.mean() < hi

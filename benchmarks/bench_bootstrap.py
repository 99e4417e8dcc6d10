"""The bootstrap CI of `summarize` at 100k samples: one (resamples × n) matrix vs batches.

Each contender runs in its own fresh process, so its peak resident memory (ru_maxrss) is its
own; the figure reported is the peak minus the process's RSS after the imports and the data.
Rounds alternate the order. The two must give the same interval, bit for bit.

Run: `PYTHONPATH=$PWD python benchmarks/bench_bootstrap.py [--samples 100000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np


def one_matrix_ci(v: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    """`summarize`'s bootstrap before batching, as it was."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    lo, hi = np.percentile(v[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def batched_ci(v: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    from robustness.stats import summarize

    return summarize(v, seed=seed, resamples=resamples).ci95


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(which: str, samples: int) -> dict[str, Any]:
    """In this (fresh) process: one call of the contender on heavy-tailed ψ-like values."""
    v = np.random.default_rng(0).gamma(0.5, 0.02, size=samples)
    run = {"one-matrix": one_matrix_ci, "batched": batched_ci}[which]
    import robustness.stats  # noqa: F401  (imports outside the timing and the memory figure)

    base = rss_mib()
    start = time.perf_counter()
    ci = run(v, 0, 2000)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"which": which, "seconds": seconds, "peak_mib": peak - base, "ci95": ci}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=["one-matrix", "batched"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.samples)))
        return
    runs: dict[str, list[dict[str, Any]]] = {"one-matrix": [], "batched": []}
    for r in range(args.rounds):
        order = ["one-matrix", "batched"] if r % 2 == 0 else ["batched", "one-matrix"]
        for which in order:
            argv = [sys.executable, __file__, "--child", which, "--samples", str(args.samples)]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            runs[which].append(json.loads(out))
    cis = {tuple(x["ci95"]) for rs in runs.values() for x in rs}
    print(f"samples {args.samples}, 2000 resamples, {args.rounds} rounds; same CI: {len(cis) == 1}")
    for which, rs in runs.items():
        secs = [float(x["seconds"]) for x in rs]
        peaks = [float(x["peak_mib"]) for x in rs]
        print(
            f"{which:>10}: median {statistics.median(secs):.2f} s "
            f"({', '.join(f'{s:.2f}' for s in secs)}), peak +{max(peaks):.0f} MiB"
        )


if __name__ == "__main__":
    main()

"""How close the default search gets to the maximum, and what it costs (issue 6, req. 1).

For each model of a small test set (natural and adversarially trained, MLP and CNN on
sklearn's digits) and each threat model (L∞ and L2, a small and a large ε):

- a strong reference: per sample, the best KL over 10 runs of 200-step PGD-KL (two step
  sizes, ε/10 and ε/40, × five seeds), best over all iterates;
- contenders on the same samples: the old default (pgd-kl/1: K = 20, α = 2.5ε/K, one random
  start) and the engine's new default (apgd-kl/1 at K = 20), plus variants with --variants;
- strength = mean ψ / mean reference ψ; cost = gradient evaluations per sample (counted on
  the backend) and seconds, old and new timed in alternating order in the same process.

Run: `PYTHONPATH=$PWD python benchmarks/bench_search.py [--samples 200] [--variants]`.
Prints a markdown table for benchmarks/README.md and writes benchmarks/search_results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from demo.digits import DigitsSplit, load_split, to_onnx, train_cnn
from robustness.attacks.apgd_divergence import APGDDivergence
from robustness.attacks.divergence import DivergenceSearch
from robustness.attacks.search import build_search
from robustness.loading import load
from robustness.spec import AuditSpec, Norm, SearchAlgorithm

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent
THREATS = ((Norm.LINF, 0.03), (Norm.LINF, 0.1), (Norm.L2, 0.3), (Norm.L2, 1.0))
Search = Callable[[torch.Tensor, torch.Generator], Any]


class Counting:
    """A backend wrapper that counts forward rows and backward (gradient) rows."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.kind, self.device = inner, inner.kind, inner.device
        self.forward_rows = 0
        self.gradient_rows = 0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner.scores(x)
        self.forward_rows += x.shape[0]
        if out.requires_grad:
            rows = x.shape[0]

            def count(grad: torch.Tensor) -> None:
                self.gradient_rows += rows

            out.register_hook(count)
        return out  # type: ignore[no-any-return]

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.raw_outputs(x)  # type: ignore[no-any-return]


def train_mlp(split: DigitsSplit, *, adversarial_eps: float = 0.0, seed: int = 0) -> nn.Module:
    """A ReLU MLP 64-128-64-10; with adversarial_eps > 0, trained on 5-step L∞ PGD points."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(30):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            xb, yb = x[order[start : start + 64]], y[order[start : start + 64]]
            if adversarial_eps > 0:
                xb = _linf_pgd(net, xb, yb, adversarial_eps)
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    return net.eval()


def _linf_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(5):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(net(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = (x_adv + eps / 2 * g.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    return x_adv.detach()


def models(split: DigitsSplit, cache: Path) -> dict[str, bytes]:
    """The test set, trained once and cached as ONNX under `cache`."""
    builders: dict[str, Callable[[], nn.Module]] = {
        "mlp-natural": lambda: train_mlp(split),
        "mlp-pgd": lambda: train_mlp(split, adversarial_eps=0.1),
        "cnn-natural": lambda: train_cnn(split, epochs=10),
        "cnn-fgsm": lambda: train_cnn(split, adversarial_eps=0.1, epochs=10, pgd_steps=1),
        "cnn-pgd": lambda: train_cnn(split, adversarial_eps=0.1, epochs=10),
    }
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, build in builders.items():
        path = cache / f"{name}.onnx"
        if not path.exists():
            path.write_bytes(to_onnx(build()))
        out[name] = path.read_bytes()
    return out


def reference(backend: Any, x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Per-sample best over 10 PGD-KL runs of 200 steps: α ∈ {ε/10, ε/40} × seeds 0-4."""
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    for alpha in (eps / 10, eps / 40):
        search = DivergenceSearch(backend, norm=norm, eps=eps, steps=200, alpha=alpha)
        for seed in range(5):
            best = torch.maximum(best, search(x, torch.Generator().manual_seed(seed)).psi)
    return best


def contenders(backend: Any, norm: Norm, eps: float, variants: bool) -> dict[str, Search]:
    """The old default, the engine's new default (built as run_audit builds it), variants."""
    old = AuditSpec(norm=norm, epsilons=(eps,), search=SearchAlgorithm.PGD_KL)
    new = AuditSpec(norm=norm, epsilons=(eps,))
    found: dict[str, Search] = {
        "old": build_search(backend, old, eps),
        "new": build_search(backend, new, eps),
    }
    if variants:  # what the choice of the default was made from (benchmarks/README.md)
        found["pgd-kl K=40"] = build_search(backend, replace(old, steps=40), eps)
        for k, runs in ((20, 1), (40, 1), (19, 2), (8, 5)):
            found[f"apgd-kl {runs}x{k}"] = APGDDivergence(
                backend, norm=norm, eps=eps, steps=k, runs=runs
            )
    return found


def measure(
    backend: Counting, x: torch.Tensor, ref: torch.Tensor, searches: dict[str, Search]
) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    ref_mean = float(ref.mean())
    for name, search in searches.items():
        backend.gradient_rows = 0
        psi = search(x, torch.Generator().manual_seed(0)).psi
        rows[name] = {
            "psi": float(psi.mean()),
            "strength": float(psi.mean()) / ref_mean if ref_mean > 0 else 1.0,
            "worst_sample_ratio": float((psi / ref.clamp_min(1e-12)).min()),
            "gradients_per_sample": backend.gradient_rows / x.shape[0],
        }
    return rows


def timing(searches: list[Search], x: torch.Tensor, repeats: int) -> list[float]:
    """Median seconds of each search, run in turn with the order reversed every round."""
    times: list[list[float]] = [[] for _ in searches]
    order = list(range(len(searches)))
    for r in range(repeats):
        for i in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            searches[i](x, torch.Generator().manual_seed(r))
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/robaudit-bench-models"))
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = load_split()
    x_np = split.x_test[: args.samples]
    x = torch.from_numpy(x_np)
    results = []
    for name, onnx_bytes in models(split, args.cache).items():
        if args.models and name not in args.models:
            continue
        backend = Counting(load(onnx_bytes, x_np[:32], device=CPU).backend)
        for norm, eps in THREATS:
            cached = args.cache / f"ref-{name}-{norm.value}-{eps:g}-{args.samples}.pt"
            if not cached.exists():
                torch.save(reference(backend, x, norm, eps), cached)
            ref = torch.load(cached)
            searches = contenders(backend, norm, eps, args.variants)
            rows = measure(backend, x, ref, searches)
            old_s, new_s = timing(list(searches.values())[:2], x, args.repeats)
            row = {
                "model": name, "norm": norm.value, "eps": eps, "reference_psi": float(ref.mean()),
                "contenders": rows, "seconds_old": old_s, "seconds_new": new_s,
            }  # fmt: skip
            results.append(row)
            print(
                f"| {name} | {norm.value} {eps:g} | {float(ref.mean()):.4f} | "
                + " | ".join(f"{k}: {v['strength']:.3f}" for k, v in rows.items())
                + f" | {old_s:.3f}s → {new_s:.3f}s |",
                flush=True,
            )
    (ROOT / "search_results.json").write_text(json.dumps(results, indent=2))
    summary = {
        k: min(r["contenders"][k]["strength"] for r in results) for k in results[0]["contenders"]
    }
    print("minimum strength over the test set:", json.dumps(summary, indent=1))
    print("gradients per sample:", {k: v["gradients_per_sample"] for k, v in rows.items()})


if __name__ == "__main__":
    main()

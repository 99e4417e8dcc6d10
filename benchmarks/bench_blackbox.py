"""The black-box backend against autograd (issue 6, req. 5).

On digits models with ReLU and max-pool (whose kinks break naive differences) and a tanh MLP:

1. gradient agreement: the KL's input gradient at random points of the L∞ ball (ε = 0.1),
   finite differences vs autograd, as the median cosine and the fraction of equal signs (what
   an L∞ step uses), for central-difference steps h and for random directions (NES, q);
2. ψ reached by the engine's default search (apgd-kl/1) on the onnxruntime backend, as a ratio
   to the torch backend's ψ on the same samples and seed, with the queries it spent.

Run: `PYTHONPATH=$PWD python benchmarks/bench_blackbox.py [--samples 100]` (models trained
by bench_search.py are reused from its cache). Prints markdown rows for benchmarks/README.md
and writes benchmarks/blackbox_results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_search import models
from robaudit.digits import load_split
from robustness.attacks.divergence import normalized_log_probs
from robustness.backends.ort_backend import OrtBackend
from robustness.engine import run_audit
from robustness.loading import load
from robustness.spec import AuditSpec, BackendKind, Baseline, LogitNormalization, Norm

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent
EPS = 0.1


def kl_gradient(backend: Any, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    l2 = LogitNormalization.L2
    with torch.no_grad():
        p = normalized_log_probs(backend.scores(x), l2).exp()
    x_adv = x_adv.clone().requires_grad_(True)
    kl = -(p * normalized_log_probs(backend.scores(x_adv), l2)).sum()
    (grad,) = torch.autograd.grad(kl, x_adv)
    return grad.flatten(1)


def agreement(exact: torch.Tensor, estimate: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(exact, estimate, dim=1)
    return {
        "cosine_median": float(cos.median()),
        "cosine_min": float(cos.min()),
        "sign_agreement": float((exact.sign() == estimate.sign()).float().mean()),
    }


def gradient_rows(torch_backend: Any, ort: OrtBackend, x: torch.Tensor) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1)
    exact = kl_gradient(torch_backend, x, x_adv)
    rows: dict[str, Any] = {}
    limit = ort.coordinate_limit
    for h in (1e-4, 1e-3, 1e-2, 3e-2):
        ort.fd_step = h
        rows[f"central h={h:g}"] = agreement(exact, kl_gradient(ort, x, x_adv))
    ort.fd_step, ort.coordinate_limit = 1e-3, 0
    for q in (16, 64, 256):
        ort.directions = q
        rows[f"nes q={q}"] = agreement(exact, kl_gradient(ort, x, x_adv))
    ort.coordinate_limit, ort.directions = limit, 64
    return rows


def psi_ratio(
    onnx_bytes: bytes, x: Any, y: Any, norm: Norm, eps: float, directions: int | None
) -> dict[str, float]:
    """ψ of onnxruntime over ψ of torch; `directions` forces NES mode with that many."""
    spec = AuditSpec(norm=norm, epsilons=(eps,), baselines=(Baseline.CLEAN,), landscape_samples=0)
    torch_backend = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.TORCH).backend
    ort = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.ONNXRUNTIME).backend
    assert isinstance(ort, OrtBackend)
    if directions is not None:
        ort.coordinate_limit, ort.directions = 0, directions
    exact = run_audit(torch_backend, x, y, spec, device=CPU).per_epsilon[0].divergence.mean
    ort.queries = 0
    start = time.perf_counter()
    black = run_audit(ort, x, y, spec, device=CPU).per_epsilon[0].divergence.mean
    return {
        "psi_torch": exact,
        "psi_onnxruntime": black,
        "ratio": black / exact,
        "queries_per_sample": ort.queries / len(x),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/robaudit-bench-models"))
    parser.add_argument("--models", nargs="*", default=["mlp-natural", "cnn-natural", "cnn-pgd"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split()
    x, y = split.x_test[: args.samples], split.y_test[: args.samples]
    out = []
    for name, onnx_bytes in models(split, args.cache).items():
        if name not in args.models:
            continue
        tb = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.TORCH).backend
        ort = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.ONNXRUNTIME).backend
        assert isinstance(ort, OrtBackend)
        grads = gradient_rows(tb, ort, torch.from_numpy(x))
        for key, g in grads.items():
            cos, low, signs = g["cosine_median"], g["cosine_min"], g["sign_agreement"]
            print(f"| {name} | gradient {key} | cos {cos:.4f} (min {low:.3f}) | {signs:.3f} |")
        psis = {}
        for norm, eps in ((Norm.LINF, EPS), (Norm.L2, 1.0)):
            for directions in (None, 64, 256):
                key = f"{norm.value} {eps:g} " + (
                    "central (2d queries)" if directions is None else f"nes q={directions}"
                )
                psis[key] = r = psi_ratio(onnx_bytes, x, y, norm, eps, directions)
                print(f"| {name} | ψ {key} | {r['psi_onnxruntime']:.5f} / {r['psi_torch']:.5f}"
                      f" = **{r['ratio']:.3f}** | {r['queries_per_sample']:.0f} queries/sample |",
                      flush=True)  # fmt: skip
        out.append({"model": name, "gradients": grads, "psi": psis})
    (ROOT / "blackbox_results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

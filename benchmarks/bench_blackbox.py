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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.bench_search import models
from demo.digits import load_split, to_onnx
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


class Digits24(nn.Module):
    """A CNN on digits upsampled to 24×24 (576 features: random-direction mode by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def upsampled(x: np.ndarray) -> np.ndarray:
    t = F.interpolate(torch.from_numpy(x), size=24, mode="bilinear", align_corners=False)
    return t.clamp(0, 1).numpy()


def digits24_onnx(cache: Path) -> bytes:
    path = cache / "cnn24-natural.onnx"
    if not path.exists():
        split = load_split()
        torch.manual_seed(0)
        net = Digits24()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        x, y = torch.from_numpy(upsampled(split.x_train)), torch.from_numpy(split.y_train)
        for _ in range(10):
            order = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                opt.zero_grad()
                F.cross_entropy(net(x[order[i : i + 64]]), y[order[i : i + 64]]).backward()
                opt.step()
        path.write_bytes(to_onnx(net.eval(), sample_shape=(1, 24, 24)))
    return path.read_bytes()


def gradient_rows(
    torch_backend: Any, ort: OrtBackend, x: torch.Tensor, settings: list[dict[str, Any]]
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * EPS).clamp(0, 1)
    exact = kl_gradient(torch_backend, x, x_adv)
    rows: dict[str, Any] = {}
    for setting in settings:
        configure(ort, setting)
        rows[label(setting)] = agreement(exact, kl_gradient(ort, x, x_adv))
    return rows


def configure(ort: OrtBackend, setting: dict[str, Any]) -> None:
    ort.fd_step = setting.get("h", 1e-3)
    ort.directions = setting.get("q", 64)
    ort.orthogonal = setting.get("orthogonal", True)
    ort.coordinate_limit = 256 if "q" not in setting else 0


def label(setting: dict[str, Any]) -> str:
    if "q" not in setting:
        return f"central h={setting.get('h', 1e-3):g}"
    kind = "orthogonal" if setting.get("orthogonal", True) else "gaussian"
    return f"{kind} q={setting['q']}"


def psi_ratio(
    onnx_bytes: bytes, x: Any, y: Any, norm: Norm, eps: float, setting: dict[str, Any]
) -> dict[str, float]:
    """ψ of onnxruntime (configured by `setting`) over ψ of torch, same samples and seed."""
    spec = AuditSpec(norm=norm, epsilons=(eps,), baselines=(Baseline.CLEAN,), landscape_samples=0)
    torch_backend = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.TORCH).backend
    ort = load(onnx_bytes, x[:32], device=CPU, backend=BackendKind.ONNXRUNTIME).backend
    assert isinstance(ort, OrtBackend)
    configure(ort, setting)
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


SMALL_GRADIENTS = [{"h": h} for h in (1e-4, 1e-3, 1e-2, 3e-2)] + [
    {"q": 16, "orthogonal": False}, {"q": 16},
]  # fmt: skip
LARGE_GRADIENTS = [{"q": q, "orthogonal": o} for q in (64, 256) for o in (False, True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/robaudit-bench-models"))
    parser.add_argument("--models", nargs="*", default=["mlp-natural", "cnn-natural", "cnn-pgd"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_split()
    x, y = split.x_test[: args.samples], split.y_test[: args.samples]
    cases = [
        (name, onnx_bytes, x, SMALL_GRADIENTS, [((Norm.LINF, EPS), {}), ((Norm.L2, 1.0), {})])
        for name, onnx_bytes in models(split, args.cache).items()
        if name in args.models
    ]
    large = [{"q": 64, "orthogonal": False}, {"q": 64}, {"q": 256}]
    cases.append(
        ("cnn24-natural", digits24_onnx(args.cache), upsampled(x), LARGE_GRADIENTS,
         [(threat, s) for threat in ((Norm.LINF, EPS), (Norm.L2, 3.0)) for s in large])
    )  # fmt: skip
    out = []
    for name, onnx_bytes, xs, gradient_settings, psi_settings in cases:
        tb = load(onnx_bytes, xs[:32], device=CPU, backend=BackendKind.TORCH).backend
        ort = load(onnx_bytes, xs[:32], device=CPU, backend=BackendKind.ONNXRUNTIME).backend
        assert isinstance(ort, OrtBackend)
        grads = gradient_rows(tb, ort, torch.from_numpy(xs), gradient_settings)
        for key, g in grads.items():
            cos, low, signs = g["cosine_median"], g["cosine_min"], g["sign_agreement"]
            print(f"| {name} | gradient {key} | cos {cos:.4f} (min {low:.3f}) | {signs:.3f} |")
        psis = {}
        for (norm, eps), setting in psi_settings:
            key = f"{norm.value} {eps:g} {label(setting)}"
            psis[key] = r = psi_ratio(onnx_bytes, xs, y, norm, eps, setting)
            print(f"| {name} | ψ {key} | {r['psi_onnxruntime']:.5f} / {r['psi_torch']:.5f}"
                  f" = **{r['ratio']:.3f}** | {r['queries_per_sample']:.0f} queries/sample |",
                  flush=True)  # fmt: skip
        out.append({"model": name, "gradients": grads, "psi": psis})
    (ROOT / "blackbox_results.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

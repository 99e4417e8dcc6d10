"""GPU benchmarks: ResNet-50 metric throughput against a hand-written loop on the same GPU.

(g) the divergence search (pgd-kl, K = 20) vs the hand-written torch KL-PGD loop of
    bench_engine (a)/(f), on the same converted module, samples and device;
(h) the default search (apgd-kl/1, 40 gradients a sample) vs the same loop: the cost of
    the stronger search, per sample;
(i) IEEE float32 convolutions (what the torch backend sets on CUDA) vs cuDNN's TF32, the
    engine's pgd-kl search both times: what exactness costs;
(j) a whole shard's engine call (run_audit: clean pass, ψ, FGSM and PGD baselines, no
    landscapes) in samples per second.

Contenders alternate order every round (bench_engine.interleaved); each call ends with
torch.cuda.synchronize, so its wall time is the GPU's. Ratios are medians of per-round
ratios; throughput ratio = hand-written seconds / engine seconds (≥ 0.9 is the target).

Run: `python -m benchmarks.bench_gpu [--batches 64 256] [--repeats 7]`; on a machine
without CUDA, `--device cpu --model digits --batches 8 --repeats 1` checks the script.
Writes benchmarks/gpu_results.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from benchmarks.bench_engine import ALPHA, EPS, STEPS, hand_written_kl_pgd, interleaved
from robustness.attacks.divergence import DivergenceSearch
from robustness.attacks.search import build_search
from robustness.engine import run_audit
from robustness.loading import LoadedModel, load
from robustness.spec import AuditSpec, Norm

ROOT = Path(__file__).resolve().parent
RESNET50 = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """fn, then wait for the device: the wall time is the work's, not the launch's."""

    def call() -> object:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def load_model(name: str, device: torch.device) -> tuple[LoadedModel, tuple[int, ...], float]:
    """The model, its sample shape and the seconds load + convert + parity took."""
    if name == "resnet50":
        data, shape = RESNET50.read_bytes(), (3, 224, 224)
    else:
        from demo.digits import load_split, to_onnx, train_cnn

        data, shape = to_onnx(train_cnn(load_split(), epochs=2)), (1, 8, 8)
    probe = np.random.default_rng(0).uniform(0, 1, size=(2, *shape)).astype(np.float32)
    start = time.perf_counter()
    loaded = load(data, probe, device=device)
    return loaded, shape, time.perf_counter() - start


def _row(name: str, t: dict[str, Any], batch: int, detail: str) -> dict[str, Any]:
    seconds = t["median_seconds"]
    engine = next(iter(seconds.values()))
    return {
        "name": name,
        **t,
        "throughput_ratio": 1 / t["ratio"],
        "engine_samples_per_s": batch / engine,
        "detail": detail,
    }


def bench_search(loaded: LoadedModel, x: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    """(g) pgd-kl and (h) apgd-kl against the hand-written loop, one batch."""
    device, module = x.device, loaded.backend.module  # type: ignore[attr-defined]
    pgd = DivergenceSearch(loaded.backend, norm=Norm.LINF, eps=EPS, steps=STEPS, alpha=ALPHA)
    spec = AuditSpec(epsilons=(EPS,), steps=STEPS)
    apgd = build_search(loaded.backend, spec, EPS)

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(0)

    hand = synced(lambda: hand_written_kl_pgd(module, x), device)
    rows = []
    for label, search in (("(g) pgd-kl search", pgd), ("(h) apgd-kl/1 (default)", apgd)):
        engine = synced(lambda s=search: s(x, gen()), device)  # type: ignore[misc]
        t = interleaved({"engine": engine, "hand-written": hand}, repeats)
        detail = f"batch {len(x)}, K = {STEPS}, {device}"
        rows.append(_row(f"{label} vs hand-written loop", t, len(x), detail))
    return rows


def bench_tf32(loaded: LoadedModel, x: torch.Tensor, repeats: int) -> dict[str, Any] | None:
    """(i) the same search with IEEE vs TF32 convolutions (cuDNN's own flag, per call)."""
    if x.device.type != "cuda":
        return None
    pgd = DivergenceSearch(loaded.backend, norm=Norm.LINF, eps=EPS, steps=STEPS, alpha=ALPHA)

    def run(tf32: bool) -> Callable[[], object]:
        def call() -> object:
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                return pgd(x, torch.Generator(device=x.device).manual_seed(0))
            finally:
                torch.backends.cudnn.allow_tf32 = False

        return synced(call, x.device)

    t = interleaved({"ieee": run(False), "tf32": run(True)}, repeats)
    return _row("(i) IEEE fp32 vs TF32 convolutions, pgd-kl", t, len(x), f"batch {len(x)}")


def bench_audit(loaded: LoadedModel, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """(j) samples per second of run_audit on one batch (the engine call of one shard)."""
    spec = AuditSpec(epsilons=(EPS,), steps=STEPS, landscape_samples=0, batch_size=len(x))
    xs, ys = x.cpu().numpy(), np.zeros(len(x), dtype=np.int64)
    times = []
    result = None
    for _ in range(1 + max(1, repeats // 3)):
        start = time.perf_counter()
        result = run_audit(loaded.backend, xs, ys, spec, device=x.device)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times[1:]))
    assert result is not None
    return {
        "name": "(j) run_audit, apgd-kl + clean/FGSM/PGD baselines",
        "ratio": None,
        "engine_samples_per_s": len(x) / seconds,
        "median_seconds": {"run_audit": seconds},
        "stages": result.timing.stages if result.timing else None,
        "detail": f"batch {len(x)} (engine batch {result.batch_size}), K = {STEPS}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", choices=["resnet50", "digits"], default="resnet50")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_results.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    loaded, shape, load_s = load_model(args.model, device)
    print(f"{args.model}: backend {loaded.backend.kind.value}, load + convert {load_s:.1f} s")
    rows: list[dict[str, Any]] = []
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "backend": loaded.backend.kind.value,
        "load_seconds": load_s,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    for batch in args.batches:
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)
        found = [*bench_search(loaded, x, args.repeats), bench_tf32(loaded, x, args.repeats)]
        found.append(bench_audit(loaded, x, args.repeats))
        for row in (r for r in found if r is not None):
            rows.append({**row, "batch": batch})
            ratio = row["ratio"]
            shown = f"{ratio:.3f}× [{row['iqr'][0]:.2f}, {row['iqr'][1]:.2f}]" if ratio else "—"
            print(f"| {row['name']} | {shown} | {row['engine_samples_per_s']:.1f} samples/s "
                  f"| {row['detail']} |", flush=True)  # fmt: skip
            # after every row: a run stopped at its time limit keeps what it measured
            args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

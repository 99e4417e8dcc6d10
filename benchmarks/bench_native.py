"""The converted module's cost against the native timm module it was exported from.

For each model and exporter, the ONNX export goes through the product's own loading path
(`robustness.loading.load`, parity against onnxruntime included) twice: with the pattern
fusions of `robustness.onnx_fusion` ("after") and without them ("before"). The same PGD-20
loop (`robustness.attacks.pgd.PGD`, L∞) then runs on the native module and on both converted
modules, in turn, the order reversed every round; each round gives converted/native ratios,
and the table reports their median and interquartile range.

Native parameters are frozen like the converted ones (the backend sets requires_grad False),
so neither side computes weight gradients. Exported in eval mode, the converted ResNet has
its BatchNorm folded into the convolutions; the native one does not.

Run: `python -m benchmarks.bench_native [--rounds 7] [--batch 8] [--size 64]
[--models resnet18 convnext_atto vit_tiny_patch16_224] [--exporters opset14 opset17 dynamo]`.
Writes benchmarks/native_results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from robustness.attacks.pgd import PGD
from robustness.backends.base import to_scores
from robustness.config import BackendKind, Norm
from robustness.loading import load

CPU = torch.device("cpu")
EPS, STEPS = 8 / 255, 20
ROOT = Path(__file__).resolve().parent


class NativeBackend:
    """The timm module itself behind the backend protocol, so PGD runs the same code on it."""

    kind = BackendKind.TORCH
    device = CPU

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return to_scores(self.module(x), log_probabilities=False)

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)


def native_model(name: str, size: int) -> torch.nn.Module:
    import timm

    extra = {"img_size": size} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **extra).eval()
    model.requires_grad_(False)
    # Random init leaves LayerNorm weights at 1 and biases at 0, which constant folding
    # removes; trained weights are never that tidy, so perturb every parameter a little.
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def export(model: torch.nn.Module, exporter: str, size: int) -> bytes:
    """The model as ONNX bytes, batch dimension dynamic: legacy exporter at an opset, or dynamo."""
    x = torch.rand(2, 3, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},))
            assert program is not None
            program.save(buf)  # type: ignore[arg-type]
        else:
            opset = int(exporter.removeprefix("opset"))
            torch.onnx.export(
                model, (x,), buf, dynamo=False, opset_version=opset,
                input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}},
            )  # fmt: skip
    return buf.getvalue()


def rounds(fns: dict[str, Callable[[], object]], n: int) -> dict[str, list[float]]:
    """Seconds per call, contenders in turn, the order reversed every round, after a warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(n):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> dict[str, object]:
    r = np.asarray(times[num]) / np.asarray(times[den])
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {"median": round(float(med), 3), "iqr": [round(float(q1), 3), round(float(q3), 3)]}


def bench(name: str, exporter: str, args: argparse.Namespace) -> dict[str, object]:
    native = native_model(name, args.size)
    data = export(native, exporter, args.size)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    probe = x[:4].numpy()
    start = time.perf_counter()
    after = load(data, probe, device=CPU)
    load_s = time.perf_counter() - start
    before = load(data, probe, device=CPU, fuse=False)
    backends = {"native": NativeBackend(native), "before": before.backend, "after": after.backend}
    for key in ("before", "after"):
        if backends[key].kind is not BackendKind.TORCH:
            raise SystemExit(f"{name}/{exporter}: no torch backend ({key}): {after.notes}")

    def attack(backend: object) -> Callable[[], object]:
        pgd = PGD(backend, norm=Norm.LINF, eps=EPS, steps=STEPS, alpha=2.5 * EPS / STEPS)  # type: ignore[arg-type]
        return lambda: pgd(x, y, torch.Generator().manual_seed(1))

    times = rounds({k: attack(b) for k, b in backends.items()}, args.rounds)
    row = {
        "model": name,
        "exporter": exporter,
        "before": ratio(times, "before", "native"),
        "after": ratio(times, "after", "native"),
        "native_seconds": round(statistics.median(times["native"]), 3),
        "load_seconds_with_fusion": round(load_s, 2),
        "notes_after": list(after.notes[-2:]),
        "converter_before": before.notes[-1][:120],
        "seconds": times,
    }
    print(
        f"| {name} | {exporter} | {_cell(row['before'])} | {_cell(row['after'])} | "
        f"{row['native_seconds']} s | {after.notes[-1][:90]} |",
        flush=True,
    )
    return row


def _cell(r: object) -> str:
    assert isinstance(r, dict)
    return f"**{r['median']:.2f}×** [{r['iqr'][0]:.2f}, {r['iqr'][1]:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["resnet18", "convnext_atto", "vit_tiny_patch16_224"])  # fmt: skip
    parser.add_argument("--exporters", nargs="+", default=["opset14", "opset17", "dynamo"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "native_results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | exporter | before [IQR] | after [IQR] | native PGD-20 | fusion |")
    print("|---|---|---|---|---|---|")
    rows = [bench(m, e, args) for m in args.models for e in args.exporters]
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
        "rounds": args.rounds,
        "steps": STEPS,
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The engine in this process, no server: `check` (intake) and `run` (a whole audit)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from robaudit.cli.audit_options import (
    AUDIT_OPTIONS,
    add_preprocessing,
    input_range,
    preprocessing,
)
from robaudit.cli.common import Subparsers, emit, fail
from robaudit.cli.display import ProgressLine, epsilon_lines
from robustness.preprocessing import Preprocessing

RANGE_HELP = "input bounds (default: 0,1; with --scale: 0,scale)"


def register(sub: Subparsers) -> None:
    check = sub.add_parser("check", help="intake report of an ONNX model, offline")
    check.add_argument("model", type=Path, help="the ONNX file")
    check.add_argument(
        "--output", metavar="NAME", help="the output name to audit (default: the only one)"
    )
    check.add_argument("--input-range", metavar="LO,HI", help=RANGE_HELP)
    check.add_argument("--json", action="store_true", help="the whole report as JSON")
    add_preprocessing(check)
    check.set_defaults(handler=cmd_check)

    run = sub.add_parser("run", help="run the audit engine in-process, no server")
    run.add_argument("model", type=Path, help="the ONNX file")
    run.add_argument(
        "data",
        type=Path,
        help=".npz with arrays x (float, N×…) and y (int, N), or a zip of images (class-named "
        "folders, or a labels.csv), decoded to the model's input",
    )
    run.add_argument(
        "--crop-fraction",
        type=float,
        default=None,
        help="image zips: resize to cover H×W / this, then center-crop H×W (default 1)",
    )
    run.add_argument("--input-range", metavar="LO,HI", help=RANGE_HELP)
    run.add_argument(
        "--output", metavar="NAME", help="the output name to audit (default: the only one)"
    )
    run.add_argument(
        "--plots", type=Path, metavar="DIR", help="write landscape PNGs into this folder"
    )
    run.add_argument(
        "--json", action="store_true", help="the result object (with per-sample values) as JSON"
    )
    AUDIT_OPTIONS.add_to(run)
    add_preprocessing(run)
    run.set_defaults(handler=cmd_run)


def cmd_check(args: argparse.Namespace) -> int:
    """The same input/output/backends object as POST /v1/models, computed offline."""
    from robustness import loading
    from robustness.errors import AuditInputError
    from robustness.onnx_graph import inspect, load_model_bytes

    try:
        pre = preprocessing(args)
        value_range = input_range(args, pre)
        data = args.model.read_bytes()
        info = inspect(load_model_bytes(data), args.output)
        shape = [d if isinstance(d, int) else 1 for d in info.input_shape[1:]]
        probe = loading.uniform_probe(shape, value_range)
        loaded = loading.load(
            data, probe, output=args.output, device=loading.default_device(), preprocessing=pre
        )
    except (OSError, ValueError, AuditInputError) as exc:
        return fail(str(exc))
    body = info.to_dict()
    body["input_range"] = list(value_range)
    body["preprocessing"] = None if pre is None else pre.model_dump(mode="json")
    body["backends"] = loaded.statuses_dict()
    body["backend"] = loaded.backend.kind.value
    body["notes"] = [*info.notes, *loaded.notes]
    if args.json:
        emit(json.dumps(body, indent=2))
        return 0
    inp, out = body["input"], body["output"]
    emit(f"input   {inp['name']}  shape {inp['shape']}  {inp['dtype']}")  # type: ignore[index]
    emit(f"output  {out['name']}  {out['num_classes']} classes  {out['kind']}")  # type: ignore[index]
    emit(f"range   {list(value_range)}  " + (pre.describe() if pre else "no preprocessing"))
    for name, status in body["backends"].items():  # type: ignore[attr-defined]
        emit(f"backend {name:12s} ok={status['ok']}  parity={status['parity_max_abs_diff']}  "
             f"{status['reason'] or ''}")  # fmt: skip
    for note in body["notes"]:  # type: ignore[attr-defined]
        emit(f"note    {note}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The audit engine in-process: the `result` object of an audit plus timing."""
    from robustness.errors import AuditInputError

    start = time.perf_counter()
    progress = ProgressLine(sys.stderr)
    try:
        body = _audit(args, progress)
    except (OSError, ValueError, AuditInputError) as exc:
        return fail(str(exc))
    finally:
        progress.finish()
    seconds = time.perf_counter() - start
    body["timing"] = {
        "seconds": seconds,
        "samples_per_second": body["samples"] / seconds if seconds else None,
        "stages": body.pop("stage_seconds"),
    }
    if args.plots:
        from worker.render import landscape_png

        args.plots.mkdir(parents=True, exist_ok=True)
        for k, landscape in enumerate(body["landscapes"]):
            (args.plots / f"landscape-{k}.png").write_bytes(landscape_png(landscape))
    if args.json:
        emit(json.dumps(body, indent=2))
        return 0
    manifest = body["manifest"]
    emit(f"{body['samples']} samples, backend {manifest['backend']} on {manifest['device']}, "
         f"{seconds:.1f}s")  # fmt: skip
    for note in manifest["notes"]:
        emit(f"note: {note}")
    for line in epsilon_lines(body["per_epsilon"], manifest):
        emit(line)
    diagnostics = body.get("diagnostics") or {}
    if diagnostics.get("blackbox_note"):
        emit(f"note: {diagnostics['blackbox_note']}")
    if diagnostics.get("gradient_masking_suspected"):
        emit("warning: gradient masking suspected; see diagnostics in --json")
    return 0


def _audit(args: argparse.Namespace, progress: ProgressLine) -> dict[str, Any]:
    """Load the data and the model, run the engine; the result object, as the API has it."""
    from robustness import engine, loading
    from robustness.report import result_to_dict
    from robustness.spec import BackendKind, spec_from_config

    config = AUDIT_OPTIONS.build(args)
    pre = preprocessing(args)
    spec = spec_from_config(config, input_range(args, pre))
    progress.note("loading the data and the model")
    x, y = _local_samples(args, pre)
    x, y = x[: spec.max_samples].astype("float32"), y[: spec.max_samples].astype("int64")
    device = loading.default_device()
    loaded = loading.load(
        args.model.read_bytes(), x[:32], output=args.output, backend=BackendKind(config.backend),
        device=device, seed=spec.seed, fd_directions=spec.fd_directions, preprocessing=pre,
    )  # fmt: skip
    result = engine.run_audit(
        loaded.backend, x, y, spec, device=device,
        parity_max_abs_diff=loaded.parity_max_abs_diff, progress=progress.update,
    )  # fmt: skip
    body = result_to_dict(result, include_per_sample=args.json)
    body["manifest"] = {
        "device": str(device),
        "backend": result.backend.value,
        "notes": list(loaded.notes),  # rewrites, converter choice and fallbacks, as intake has
        "input_range": list(spec.input_range),
        "preprocessing": None if pre is None else pre.model_dump(mode="json"),
    }
    body["stage_seconds"] = result.stage_seconds
    return body


def _local_samples(args: argparse.Namespace, pre: Preprocessing | None) -> tuple[Any, Any]:
    """x and y from an .npz, or from an image zip decoded to the model's declared input."""
    from robustness.datasets import is_array_zip, load_npz
    from robustness.image_datasets import ImageLimits, decode_images, image_target
    from robustness.onnx_graph import inspect, load_model_bytes

    if is_array_zip(args.data):
        return load_npz(args.data, max_member_bytes=8 << 30)
    info = inspect(load_model_bytes(args.model.read_bytes()), args.output).to_dict()
    target = image_target(info["input"]["shape"], pre, args.crop_fraction)  # type: ignore[index]
    x, y, _names = decode_images(args.data, target, ImageLimits(max_total_bytes=8 << 30))
    return x, y

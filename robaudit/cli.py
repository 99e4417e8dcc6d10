"""The `robaudit` command: embedded service, production halves, admin, offline engine."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

EXIT_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_INPUT
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="robaudit", description=__doc__)
    sub = p.add_subparsers(metavar="COMMAND")

    up = sub.add_parser("up", help="API + one worker + SQLite + embedded broker, no services")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--data-dir", type=Path, default=Path(".robaudit"))
    up.set_defaults(handler=cmd_up)

    serve = sub.add_parser("serve", help="the API under gunicorn (production)")
    serve.add_argument("--bind", default="0.0.0.0:8000")
    serve.add_argument("--workers", type=int, default=2)
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser("worker", help="a Celery worker (production)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--pool", default="solo", help="solo (one GPU per worker) or prefork")
    worker.set_defaults(handler=cmd_worker)

    db = sub.add_parser("db", help="database administration").add_subparsers(metavar="ACTION")
    upgrade = db.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(metavar="ACTION")
    create = keys.add_parser("create", help="create an API key for a tenant")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label")
    create.set_defaults(handler=cmd_keys_create)

    check = sub.add_parser("check", help="intake report of an ONNX model, offline")
    check.add_argument("model", type=Path)
    check.add_argument("--output", help="the output name to audit")
    check.add_argument("--input-range", default="0,1")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_check)

    run = sub.add_parser("run", help="run the audit engine in-process, no server")
    run.add_argument("model", type=Path)
    run.add_argument("data", type=Path)
    run.add_argument("--eps", type=float, nargs="+", default=[0.03])
    run.add_argument("--norm", choices=["linf", "l2"], default="linf")
    run.add_argument("--steps", type=int, default=20)
    run.add_argument("--restarts", type=int, default=1)
    run.add_argument("--step-size", type=float)
    run.add_argument("--logit-normalization", choices=["l2", "none"], default="l2")
    run.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto")
    run.add_argument("--max-samples", type=int, default=1000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--input-range", default="0,1")
    run.add_argument("--output", help="the output name to audit")
    run.add_argument("--landscapes", type=int, default=4, help="samples to draw surfaces for")
    run.add_argument("--plots", type=Path, help="write landscape PNGs into this folder")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=cmd_run)
    return p


def _fail(message: str) -> int:
    print(f"robaudit: error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _range(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.persistence.migrate import upgrade

    settings = Settings.from_env()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    print("database at head")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    print(_create_key(args.tenant, args.label))
    return 0


def _create_key(tenant: str, label: str | None) -> str:
    from service.auth import create_key
    from service.config import Settings
    from service.persistence.session import make_engine, make_session_factory

    engine = make_engine(Settings.from_env().database_url)
    with make_session_factory(engine)() as session:
        key = create_key(session=session, tenant_name=tenant, label=label)
        session.commit()
    engine.dispose()
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "gunicorn", "-b", args.bind, "-w", str(args.workers)]
    os.execv(sys.executable, [*argv, "--threads", "4", "service.wsgi:app"])  # noqa: S606
    return 0  # pragma: no cover


def _worker_argv(pool: str, concurrency: int, queue: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", queue, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    from service.config import Settings

    argv = _worker_argv(args.pool, args.concurrency, Settings.from_env().queue)
    os.execv(sys.executable, argv)  # noqa: S606
    return 0  # pragma: no cover


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, make a dev key, start the API and one worker, stop both on Ctrl-C."""
    data_dir = args.data_dir.resolve()
    os.environ["ROBAUDIT_DATA_DIR"] = str(data_dir)
    from service.config import Settings
    from service.persistence.migrate import upgrade

    settings = Settings.from_env()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    key_file = data_dir / "dev-api-key"
    key = _create_key("dev", "robaudit up")
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    env = dict(os.environ)
    url = f"http://{args.host}:{args.port}"
    children = [
        subprocess.Popen(_worker_argv("solo", 1, settings.queue), env=env),
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"{args.host}:{args.port}", "-w", "1",
             "--threads", "8", "--timeout", "300", "service.wsgi:app"],
            env=env,
        ),
    ]  # fmt: skip
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        _wait_healthy(url, children)
        print(f"robaudit is up at {url}", flush=True)
        print(f"API key: {key} (also in {key_file})", flush=True)
        print(f"data: {data_dir}  database: {settings.database_url}", flush=True)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0 if stopping else 1


def _wait_healthy(url: str, children: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.poll() is not None for c in children):
            raise SystemExit("robaudit: a child process exited during start-up")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"robaudit: the API did not answer at {url} within {timeout:.0f}s")


def cmd_check(args: argparse.Namespace) -> int:
    """The same input/output/backends object as POST /v1/models, computed offline."""
    import numpy as np

    from robustness import loading
    from robustness.errors import AuditInputError

    try:
        data = args.model.read_bytes()
        lo, hi = _range(args.input_range)
        from robustness.onnx_graph import inspect, load_model_bytes

        info = inspect(load_model_bytes(data), args.output)
        shape = [d if isinstance(d, int) else 1 for d in info.input_shape[1:]]
        probe = np.random.default_rng(0).uniform(lo, hi, size=(4, *shape)).astype(np.float32)
        loaded = loading.load(data, probe, output=args.output, device=loading.default_device())
    except (OSError, ValueError, AuditInputError) as exc:
        return _fail(str(exc))
    body = info.to_dict()
    body["backends"] = {k.value: v.to_dict() for k, v in loaded.statuses.items()}
    body["backend"] = loaded.backend.kind.value
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        inp, out = body["input"], body["output"]
        print(f"input   {inp['name']}  shape {inp['shape']}  {inp['dtype']}")  # type: ignore[index]
        print(f"output  {out['name']}  {out['num_classes']} classes  {out['kind']}")  # type: ignore[index]
        for name, status in body["backends"].items():  # type: ignore[attr-defined]
            print(f"backend {name:12s} ok={status['ok']}  parity={status['parity_max_abs_diff']}  "
                  f"{status['reason'] or ''}")  # fmt: skip
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The audit engine in-process: the `result` object of an audit plus timing."""
    from robustness import engine, loading
    from robustness.datasets import load_npz
    from robustness.errors import AuditInputError
    from robustness.report import result_to_dict
    from robustness.spec import AuditSpec, BackendKind, LogitNormalization, Norm

    start = time.perf_counter()
    try:
        spec = AuditSpec(
            norm=Norm(args.norm),
            epsilons=tuple(args.eps),
            steps=args.steps,
            step_size=args.step_size,
            restarts=args.restarts,
            logit_normalization=LogitNormalization(args.logit_normalization),
            seed=args.seed,
            input_range=_range(args.input_range),
            max_samples=args.max_samples,
            landscape_samples=args.landscapes,
        )
        x, y = load_npz(args.data, max_member_bytes=8 << 30)
        x, y = x[: spec.max_samples].astype("float32"), y[: spec.max_samples].astype("int64")
        device = loading.default_device()
        loaded = loading.load(
            args.model.read_bytes(), x[:32], output=args.output,
            backend=BackendKind(args.backend), device=device, seed=spec.seed,
        )  # fmt: skip
        result = engine.run_audit(
            loaded.backend, x, y, spec, device=device,
            parity_max_abs_diff=loaded.parity_max_abs_diff,
        )  # fmt: skip
    except (OSError, ValueError, AuditInputError) as exc:
        return _fail(str(exc))
    seconds = time.perf_counter() - start
    body = result_to_dict(result, include_per_sample=args.json)
    body["manifest"] = {"device": str(device), "backend": result.backend.value}
    body["timing"] = {
        "seconds": seconds,
        "samples_per_second": result.samples / seconds if seconds else None,
        "stages": result.stage_seconds,
    }
    if args.plots:
        from worker.render import landscape_png

        args.plots.mkdir(parents=True, exist_ok=True)
        for k, landscape in enumerate(body["landscapes"]):
            (args.plots / f"landscape-{k}.png").write_bytes(landscape_png(landscape))
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"{result.samples} samples, backend {result.backend.value} on {device}, {seconds:.1f}s")
    for item in body["per_epsilon"]:
        d = item["divergence"]
        print(
            f"eps {item['epsilon']:<8g} divergence {d['mean']:.5f} "
            f"[{d['ci95'][0]:.5f}, {d['ci95'][1]:.5f}]  clean {_pct(item['clean_accuracy'])}  "
            f"fgsm {_pct(item['fgsm_accuracy'])}  pgd {_pct(item['pgd_accuracy'])}"
        )
    if result.diagnostics.gradient_masking_suspected:
        print("warning: gradient masking suspected; see diagnostics in --json")
    return 0


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())

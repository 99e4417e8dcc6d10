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
    worker.add_argument(
        "--queues",
        default="control,compute",
        help="control (planning, model inspection), compute (shards), or both (default)",
    )
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
    submit = sub.add_parser("submit", help="upload a model and data, start an audit (client)")
    submit.add_argument("model", type=Path)
    submit.add_argument("data", type=Path)
    submit.add_argument("--name")
    submit.add_argument("--version")
    submit.add_argument("--input-range")
    submit.add_argument("--eps", type=float, nargs="+")
    submit.add_argument("--norm", choices=["linf", "l2"])
    submit.add_argument("--steps", type=int)
    submit.add_argument("--max-samples", type=int)
    submit.add_argument(
        "--force", action="store_true", help="run even if an identical audit exists"
    )
    submit.add_argument("--wait", action="store_true", help="wait, with a progress bar")
    submit.set_defaults(handler=cmd_submit)

    status = sub.add_parser("status", help="an audit's status and result (client)")
    status.add_argument("audit_id")
    status.set_defaults(handler=cmd_status)

    report = sub.add_parser("report", help="download an audit's HTML report (client)")
    report.add_argument("audit_id")
    report.add_argument("--output", type=Path, help="default: report-<id>.html")
    report.add_argument("--open", action="store_true", help="open it in a browser")
    report.set_defaults(handler=cmd_report)

    gate = sub.add_parser("gate", help="exit 1 if an audit regresses against a baseline (client)")
    gate.add_argument("audit_id")
    gate.add_argument("--baseline", required=True)
    gate.add_argument("--max-increase", default="10%", help="relative divergence rise, e.g. 10%%")
    gate.add_argument("--junit", type=Path, help="also write a JUnit XML report here")
    gate.set_defaults(handler=cmd_gate)
    return p


def _fail(message: str) -> int:
    print(f"robaudit: error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _range(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from infra.config import Settings
    from infra.persistence.migrate import upgrade

    settings = Settings.from_env()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    print("database at head")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    print(_create_key(args.tenant, args.label))
    return 0


def _create_key(tenant: str, label: str | None) -> str:
    from infra.config import Settings
    from infra.persistence.session import make_engine, make_session_factory
    from service.auth import create_key

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


def _worker_argv(pool: str, concurrency: int, queues: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", ",".join(queues), "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def _worker_env(settings: Any) -> dict[str, str]:
    """OpenMP and MKL read their thread count once, at load: set it before the worker starts."""
    from worker.threads import torch_threads

    env = dict(os.environ)
    threads = str(torch_threads(settings))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def cmd_worker(args: argparse.Namespace) -> int:
    from infra.config import Settings
    from infra.queue import QUEUE_KINDS, queue_names

    settings = Settings.from_env()
    kinds = [k.strip() for k in args.queues.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(QUEUE_KINDS))
    if unknown or not kinds:
        return _fail(f"--queues takes {' and/or '.join(QUEUE_KINDS)}, not {args.queues!r}")
    names = queue_names(settings)
    argv = _worker_argv(args.pool, args.concurrency, [names[k] for k in kinds])
    os.execve(sys.executable, argv, _worker_env(settings))  # noqa: S606
    return 0  # pragma: no cover


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, make a dev key, start the API and one worker, stop both on Ctrl-C."""
    data_dir = args.data_dir.resolve()
    os.environ["ROBAUDIT_DATA_DIR"] = str(data_dir)
    from infra.config import Settings
    from infra.persistence.migrate import upgrade
    from infra.queue import queue_names

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
        subprocess.Popen(
            _worker_argv("solo", 1, list(queue_names(settings).values())),
            env=_worker_env(settings),
        ),
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
    from robustness import loading
    from robustness.errors import AuditInputError
    from robustness.onnx_graph import inspect, load_model_bytes

    try:
        data = args.model.read_bytes()
        info = inspect(load_model_bytes(data), args.output)
        shape = [d if isinstance(d, int) else 1 for d in info.input_shape[1:]]
        probe = loading.uniform_probe(shape, _range(args.input_range))
        loaded = loading.load(data, probe, output=args.output, device=loading.default_device())
    except (OSError, ValueError, AuditInputError) as exc:
        return _fail(str(exc))
    body = info.to_dict()
    body["backends"] = loaded.statuses_dict()
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
        c = item.get("convergence")
        if c is not None:
            verdict = (
                "converged" if c["converged"]
                else f"NOT converged: try --steps {c['suggested_steps']}"
            )  # fmt: skip
            print(
                f"  search: psi grew {100 * c['relative_gain']:+.1f}% over the last half; {verdict}"
            )
    if result.diagnostics.blackbox_note:
        print(f"note: {result.diagnostics.blackbox_note}")
    if result.diagnostics.gradient_masking_suspected:
        print("warning: gradient masking suspected; see diagnostics in --json")
    return 0


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())


def _client_call(fn: Any) -> int:
    from robaudit.client import ApiError

    try:
        code: int = fn()
    except ApiError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(str(exc))
    return code


def cmd_submit(args: argparse.Namespace) -> int:
    from robaudit.client import Client

    def run() -> int:
        client = Client.from_env()
        fields = {"name": args.name, "version": args.version, "input_range": args.input_range}
        model = client.upload("/v1/models", args.model.name, args.model.read_bytes(), fields)
        dataset = client.upload("/v1/datasets", args.data.name, args.data.read_bytes(), {})
        config = {
            k: v
            for k, v in {
                "epsilons": args.eps,
                "norm": args.norm,
                "steps": args.steps,
                "max_samples": args.max_samples,
            }.items()
            if v is not None
        }
        body = {"model_id": model["id"], "dataset_id": dataset["id"], "config": config}
        created = client.post_json("/v1/audits", {**body, "force": args.force})
        print(created["id"], flush=True)
        if not args.wait:
            return 0
        audit = client.wait(created["id"], _progress_bar)
        print(file=sys.stderr)
        print(json.dumps(audit, indent=2))
        return 0 if audit["status"] == "succeeded" else 1

    return _client_call(run)


def _progress_bar(audit: dict[str, Any]) -> None:
    done, total = audit["progress"]["done"], max(audit["progress"]["total"], 1)
    filled = int(30 * done / total)
    bar = "#" * filled + "-" * (30 - filled)
    stage = audit["progress"]["stage"] or audit["status"]
    print(f"\r[{bar}] {done}/{total} {stage:<20s}", end="", file=sys.stderr, flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    from robaudit.client import Client

    def run() -> int:
        print(json.dumps(Client.from_env().get(f"/v1/audits/{args.audit_id}"), indent=2))
        return 0

    return _client_call(run)


def cmd_report(args: argparse.Namespace) -> int:
    from robaudit.client import Client

    def run() -> int:
        page, _ = Client.from_env().request("GET", f"/v1/audits/{args.audit_id}/report")
        out = args.output or Path(f"report-{args.audit_id}.html")
        out.write_bytes(page)
        print(out)
        if args.open:
            import webbrowser

            webbrowser.open(out.resolve().as_uri())
        return 0

    return _client_call(run)


def cmd_gate(args: argparse.Namespace) -> int:
    """0: no regression; 1: regressed; 2: cannot judge (incomparable, not finished, bad input)."""
    from robaudit.client import Client
    from robustness.compare import parse_increase

    def run() -> int:
        limit = parse_increase(args.max_increase)
        query = f"/v1/compare?audits={args.baseline},{args.audit_id}&max_increase={limit}"
        verdict = Client.from_env().get(query)["verdicts"][0]
        print(json.dumps(verdict, indent=2))
        if args.junit:
            args.junit.write_text(_junit(verdict, args.baseline))
        if verdict["verdict"] == "incomparable":
            return _fail(f"cannot compare: {verdict['reason']}")
        return 1 if verdict["regressed"] else 0

    try:
        return _client_call(run)
    except ValueError as exc:
        return _fail(str(exc))


def _junit(verdict: dict[str, Any], baseline: str) -> str:
    from xml.sax.saxutils import escape, quoteattr

    cases = []
    for item in verdict["per_epsilon"]:
        name = quoteattr(f"divergence at eps={item['epsilon']:g} vs {baseline}")
        body = ""
        if item["verdict"] == "regressed":
            message = quoteattr(f"relative change {item['relative_change']:+.1%}")
            body = f"<failure message={message}>{escape(json.dumps(item))}</failure>"
        cases.append(f'  <testcase classname="robaudit.gate" name={name}>{body}</testcase>')
    failures = sum(item["verdict"] == "regressed" for item in verdict["per_epsilon"])
    errors = int(verdict["verdict"] == "incomparable")
    if errors:  # a pipeline must see why nothing was judged
        name = quoteattr(f"comparable with {baseline}")
        body = f"<error message={quoteattr(verdict['reason'])}></error>"
        cases.append(f'  <testcase classname="robaudit.gate" name={name}>{body}</testcase>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="robaudit-gate" tests="{len(cases)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )

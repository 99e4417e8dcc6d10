"""Processes: the embedded service (`up`), and the production halves (`serve`, `worker`)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from robaudit.cli.common import Subparsers, fail


def register(sub: Subparsers) -> None:
    up = sub.add_parser("up", help="API + one worker + SQLite + embedded broker, no services")
    up.add_argument("--port", type=int, default=8000, help="the API's TCP port (default: 8000)")
    up.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".robaudit"),
        help="database, broker folders, artifacts and the dev key (default: .robaudit)",
    )
    up.set_defaults(handler=cmd_up)

    serve = sub.add_parser("serve", help="the API under gunicorn (production)")
    serve.add_argument(
        "--bind", default="0.0.0.0:8000", help="HOST:PORT to listen on (default: 0.0.0.0:8000)"
    )
    serve.add_argument(
        "--workers", type=int, default=2, help="gunicorn worker processes (default: 2)"
    )
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser("worker", help="a Celery worker (production)")
    worker.add_argument("--concurrency", type=int, default=1, help="tasks run at once (default: 1)")
    worker.add_argument(
        "--pool", default="solo", help="solo (one GPU per worker, default) or prefork"
    )
    worker.add_argument(
        "--queues",
        default="control,compute",
        help="control (planning, model inspection), compute (shards), or both (default)",
    )
    worker.set_defaults(handler=cmd_worker)


def cmd_serve(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "gunicorn", "-b", args.bind, "-w", str(args.workers)]
    os.execv(sys.executable, [*argv, "--threads", "4", "service.wsgi:app"])  # noqa: S606
    return 0  # pragma: no cover


def worker_argv(pool: str, concurrency: int, queues: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-P", pool, "-c", str(concurrency), "-Q", ",".join(queues), "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def worker_env(settings: Any) -> dict[str, str]:
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
        return fail(f"--queues takes {' and/or '.join(QUEUE_KINDS)}, not {args.queues!r}")
    names = queue_names(settings)
    argv = worker_argv(args.pool, args.concurrency, [names[k] for k in kinds])
    os.execve(sys.executable, argv, worker_env(settings))  # noqa: S606
    return 0  # pragma: no cover


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, make a dev key, start the API and one worker, stop both on Ctrl-C."""
    from robaudit.cli.admin import create_key

    data_dir = args.data_dir.resolve()
    os.environ["ROBAUDIT_DATA_DIR"] = str(data_dir)
    from infra.config import Settings
    from infra.persistence.migrate import upgrade

    settings = Settings.from_env()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    key_file = data_dir / "dev-api-key"
    key = create_key("dev", "robaudit up")
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    url = f"http://{args.host}:{args.port}"
    children = _start_children(settings, args.host, args.port)
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
        _stop_children(children)
    return 0 if stopping else 1


def _start_children(settings: Any, host: str, port: int) -> list[subprocess.Popen[bytes]]:
    from infra.queue import queue_names

    queues = list(queue_names(settings).values())
    return [
        subprocess.Popen(worker_argv("solo", 1, queues), env=worker_env(settings)),
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"{host}:{port}", "-w", "1",
             "--threads", "8", "--timeout", "300", "service.wsgi:app"],
            env=dict(os.environ),
        ),
    ]  # fmt: skip


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()


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

"""Real processes: `robaudit up` (embedded), or gunicorn + a Celery worker on Redis/PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests import services

ROBAUDIT = [sys.executable, "-m", "robaudit"]


@dataclass
class Running:
    url: str
    key: str
    procs: list[subprocess.Popen[str]]
    logs: list[Path]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in self.logs if p.exists())


def wait_http(url: str, procs: list[subprocess.Popen[str]], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a service process exited during start-up")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        {"ROBAUDIT_DATA_DIR": str(data_dir), "ROBAUDIT_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    )
    return env


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Running]:
    from tests.services import free_port

    port = free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    proc = spawn(
        [*ROBAUDIT, "up", "--port", str(port), "--data-dir", str(data_dir)], base_env(data_dir), log
    )
    url = f"http://127.0.0.1:{port}"
    running = Running(url, "", [proc], [log])
    try:
        wait_http(url, [proc])
        key_file = data_dir / "dev-api-key"
        deadline = time.monotonic() + 30
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        running.key = key_file.read_text().strip()
        yield running
    except Exception:
        print(running.dump_logs())
        raise
    finally:
        stop([proc])


@contextmanager
def production_stack(tmp_path: Path, redis_url: str, **extra_env: str) -> Iterator[Running]:
    """A fresh PostgreSQL database with migrations, an API key, gunicorn and one worker."""
    db_url = services.create_pg_database()
    env = base_env(tmp_path / "data")
    env.update(
        DATABASE_URL=db_url, REDIS_URL=redis_url, ROBAUDIT_QUEUE=f"robaudit-{uuid.uuid4().hex[:8]}"
    )
    env.update(extra_env)
    procs: list[subprocess.Popen[str]] = []
    try:
        subprocess.run([*ROBAUDIT, "db", "upgrade"], env=env, check=True, capture_output=True)
        argv = [*ROBAUDIT, "keys", "create", "--tenant", "ci"]
        key = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
        port = services.free_port()
        logs = [tmp_path / "api.log", tmp_path / "worker.log"]
        serve = [*ROBAUDIT, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        procs.append(spawn(serve, env, logs[0]))
        procs.append(spawn([*ROBAUDIT, "worker"], env, logs[1]))
        running = Running(f"http://127.0.0.1:{port}", key.strip(), procs, logs)
        wait_http(running.url, procs)
        yield running
    finally:
        stop(procs)
        services.drop_pg_database(db_url)

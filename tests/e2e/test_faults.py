"""Fault tests (issue 10): every audit ends, exactly once, whatever is killed.

One stack for the module: a test-owned redis-server on a free port, a fresh PostgreSQL
database, gunicorn and two real worker processes, with short staleness and heartbeat
settings. Each test kills something for real (kill -9 of a worker or of its sandbox child,
Redis restarted empty, a cancel mid-batch) and asserts the end state in the database.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import Engine, create_engine, text

from tests import services
from tests.e2e.conftest import ROBAUDIT, base_env, spawn, stop, wait_http
from tests.e2e.test_broker_outage import OwnRedis
from tests.factories.models import digits_split, mlp_onnx
from worker.threads import process_table

pytestmark = pytest.mark.e2e
TERMINAL = ("succeeded", "failed", "cancelled")
FAST = {
    "ROBAUDIT_STALE_AFTER_S": "4",
    "ROBAUDIT_HEARTBEAT_S": "0.5",
    "ROBAUDIT_SWEEP_INTERVAL_S": "1",
    "ROBAUDIT_MAX_SHARD_ATTEMPTS": "2",
    "ROBAUDIT_SHARD_SIZE": "16",
    "ROBAUDIT_TORCH_THREADS": "1",
    # 50 audits are submitted at once on purpose; the tenant's queue cap is not under test here
    "ROBAUDIT_MAX_QUEUED_AUDITS": "100",
    # ...but the running cap is: workers defer the rest, and start them as slots free
    "ROBAUDIT_MAX_RUNNING_AUDITS": "1",
}
# ~2–4 s per 16-sample shard of the tiny MLP: long enough to be killed in the middle
SLOW = {
    "epsilons": [0.1],
    "steps": 1000,
    "restarts": 1,
    "baselines": ["clean"],
    "landscape": {"samples": 0},
}
QUICK = {"epsilons": [0.1], "steps": 3, "baselines": ["clean"], "landscape": {"samples": 0}}


@dataclass
class Stack:
    url: str
    key: str
    db: Engine
    redis: OwnRedis
    env: dict[str, str]
    logs: Path
    failpoints: Path
    queue: str
    model_id: str = ""
    dataset_id: str = ""
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    others: list[subprocess.Popen[str]] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start_worker(self) -> None:
        log = self.logs / f"worker-{len(self.workers)}.log"
        self.workers.append(spawn([*ROBAUDIT, "worker"], self.env, log))

    def dump_logs(self) -> str:
        return "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log"))
        )

    def submit(self, config: dict[str, Any], samples: int, seed: int = 0) -> str:
        body = {
            "model_id": self.model_id,
            "dataset_id": self.dataset_id,
            "config": {**config, "max_samples": samples, "seed": seed},
            "force": True,
        }
        resp = requests.post(f"{self.url}/v1/audits", json=body, headers=self.headers(), timeout=60)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def audit(self, audit_id: str) -> dict[str, Any]:
        url = f"{self.url}/v1/audits/{audit_id}"
        return dict(requests.get(url, headers=self.headers(), timeout=30).json())

    def wait(self, audit_id: str, timeout: float, statuses: tuple[str, ...] = TERMINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audit = self.audit(audit_id)
            if audit["status"] in statuses:
                return audit
            time.sleep(0.3)
        raise AssertionError(f"{audit_id} still {audit['status']}\n{self.dump_logs()}")

    def shards(self, audit_id: str) -> list[Any]:
        with self.db.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT * FROM audit_shards WHERE audit_id = :a ORDER BY position"),
                    {"a": audit_id},
                )
            )

    def until(self, probe: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"condition not reached in {timeout}s\n{self.dump_logs()}")

    def running_shard(self, audit_id: str) -> Any:
        return self.until(
            lambda: next(
                (s for s in self.shards(audit_id) if s.status == "running" and s.done), None
            )
        )

    def replace_dead_workers(self) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        dead = len(self.workers) - len(alive)
        self.others += [w for w in self.workers if w.poll() is not None]
        self.workers = alive
        for _ in range(dead):
            self.start_worker()


def sandbox_children(parents: set[int]) -> list[int]:
    """Sandbox child processes of these workers."""
    return [
        pid
        for pid, ppid, cmdline in process_table()
        if ppid in parents and b"infra.sandbox_child" in cmdline
    ]


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def per_sample(audit: dict[str, Any]) -> list[list[float]]:
    return [e["per_sample"] for e in audit["result"]["per_epsilon"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server binary not installed")
    tmp = tmp_path_factory.mktemp("faults")
    broker = OwnRedis(tmp)
    broker.start()
    db_url = services.create_pg_database()
    env = base_env(tmp / "data")
    queue = f"robaudit-{uuid.uuid4().hex[:8]}"
    failpoints = tmp / "failpoints"
    failpoints.mkdir()
    env.update(FAST, DATABASE_URL=db_url, REDIS_URL=broker.url, ROBAUDIT_QUEUE=queue)
    env["ROBAUDIT_FAILPOINT_DIR"] = str(failpoints)
    engine = create_engine(db_url)
    running: Stack | None = None
    try:
        subprocess.run([*ROBAUDIT, "db", "upgrade"], env=env, check=True, capture_output=True)
        argv = [*ROBAUDIT, "keys", "create", "--tenant", "faults"]
        key = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
        port = services.free_port()
        running = Stack(
            f"http://127.0.0.1:{port}", key.strip(), engine, broker, env, tmp, failpoints, queue
        )
        serve = [*ROBAUDIT, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        running.others.append(spawn(serve, env, tmp / "api.log"))
        running.start_worker()
        running.start_worker()
        wait_http(running.url, running.others + running.workers)
        split = digits_split()
        npz = io.BytesIO()
        np.savez_compressed(npz, x=split.x_test[:64], y=split.y_test[:64])
        h = running.headers()
        model = requests.post(
            f"{running.url}/v1/models",
            files={"file": ("m.onnx", mlp_onnx())},
            headers=h,
            timeout=60,
        )
        data = requests.post(
            f"{running.url}/v1/datasets",
            files={"file": ("d.npz", npz.getvalue())},
            headers=h,
            timeout=60,
        )
        running.model_id, running.dataset_id = model.json()["id"], data.json()["id"]
        yield running
    finally:
        if running is not None:
            stop(running.workers + running.others)
        broker.kill()
        engine.dispose()
        services.drop_pg_database(db_url)


def test_worker_killed_mid_shard_is_taken_over_and_the_result_is_unchanged(stack: Stack) -> None:
    audit_id = stack.submit(SLOW, samples=32, seed=7)
    shard = stack.running_shard(audit_id)
    kill(int(shard.worker.rsplit(":", 1)[1]))  # kill -9 the worker in the middle of a shard
    killed = time.monotonic()
    audit = stack.wait(audit_id, timeout=120)  # taken over within 2 minutes of the kill
    print(f"worker killed mid-shard: {audit['status']} {time.monotonic() - killed:.1f} s later")
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["progress"]["done"] == audit["progress"]["total"]
    retried = next(s for s in stack.shards(audit_id) if s.position == shard.position)
    assert retried.attempts == 2
    assert "stopped heartbeating" in retried.last_error
    stack.replace_dead_workers()

    undisturbed = stack.wait(stack.submit(SLOW, samples=32, seed=7), timeout=120)
    assert undisturbed["status"] == "succeeded"
    assert per_sample(audit) == per_sample(undisturbed)
    assert audit["result"]["per_epsilon"] == undisturbed["result"]["per_epsilon"]


def test_worker_killed_between_the_last_commit_and_finalising(stack: Stack) -> None:
    audit_id = stack.submit(QUICK, samples=16, seed=1)  # one shard: it is the last one
    marker = stack.failpoints / f"before-finalise-{audit_id}"
    marker.touch()
    audit = stack.wait(audit_id, timeout=120)
    assert not marker.exists()  # the worker reached the point and killed itself there
    assert [w.returncode for w in stack.workers if w.poll() is not None] == [-signal.SIGKILL]
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["result"]["samples"] == 16
    stack.replace_dead_workers()


def test_a_shard_whose_child_always_dies_fails_the_audit_and_the_worker_goes_on(
    stack: Stack,
) -> None:
    audit_id = stack.submit(SLOW, samples=16, seed=2)
    kills = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if stack.audit(audit_id)["status"] in TERMINAL:
            break
        if any(s.status == "running" for s in stack.shards(audit_id)):
            for pid in sandbox_children({w.pid for w in stack.workers}):
                kill(pid)  # the model "kills its sandbox" every time it runs
                kills += 1
        time.sleep(0.1)
    audit = stack.audit(audit_id)
    assert audit["status"] == "failed", audit
    assert kills >= 2
    assert "shard 0 (samples 0–15) was tried 2 times" in audit["error"]
    assert "SIGKILL" in audit["error"]
    [shard] = stack.shards(audit_id)
    assert shard.attempts == 3  # two runs, then the third start read the count and stopped
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    stack.until(lambda: client.llen(stack.queue) == client.llen(f"{stack.queue}-compute") == 0)
    assert all(w.poll() is None for w in stack.workers)  # the workers survived
    after = stack.wait(stack.submit(QUICK, samples=16, seed=3), timeout=60)
    assert after["status"] == "succeeded", after["error"]


def test_redis_killed_and_restarted_empty_mid_audit(stack: Stack) -> None:
    audit_id = stack.submit(SLOW, samples=32, seed=4)
    stack.running_shard(audit_id)
    stack.redis.kill()
    time.sleep(1)
    stack.redis.start()  # empty: every queued shard message is gone
    restarted = time.monotonic()
    audit = stack.wait(audit_id, timeout=120)
    print(f"redis restarted empty: {audit['status']} {time.monotonic() - restarted:.1f} s later")
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["result"]["samples"] == 32


def test_fifty_audits_at_once_on_two_workers_each_run_once(stack: Stack) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(lambda seed: stack.submit(QUICK, samples=8, seed=100 + seed), range(50))
        )
    assert len(set(ids)) == 50
    for audit_id in ids:
        audit = stack.wait(audit_id, timeout=240)
        assert audit["status"] == "succeeded", audit["error"]
    print(f"50 audits on 2 workers: all terminal {time.monotonic() - started:.1f} s after submit")
    with stack.db.connect() as conn:
        rows = conn.execute(
            text("SELECT attempts, status FROM audit_shards WHERE audit_id = ANY(:ids)"),
            {"ids": ids},
        ).all()
    assert len(rows) == 50
    assert {(r.attempts, r.status) for r in rows} == {(1, "done")}  # none ran twice
    with stack.db.connect() as conn:
        spans = conn.execute(
            text("SELECT started_at, finished_at FROM audits WHERE id = ANY(:ids)"), {"ids": ids}
        ).all()
    # never more than ROBAUDIT_MAX_RUNNING_AUDITS started and unfinished at once
    assert max(sum(s <= t < f for s, f in spans) for t, _ in spans) == 1


def test_cancel_in_the_middle_of_a_long_batch(stack: Stack) -> None:
    long_batch = {**SLOW, "restarts": 20}  # one batch of 16 samples takes half a minute or more
    audit_id = stack.submit(long_batch, samples=16, seed=5)
    stack.running_shard(audit_id)  # the clean pass is done; the attack batch is under way
    time.sleep(1)
    url = f"{stack.url}/v1/audits/{audit_id}/cancel"
    asked = time.monotonic()
    assert requests.post(url, headers=stack.headers(), timeout=30).json()["status"] in (
        "cancelling",
        "cancelled",
    )
    audit = stack.wait(audit_id, timeout=10)  # within 10 s of the request
    print(f"cancel mid-batch: {audit['status']} {time.monotonic() - asked:.1f} s after the request")
    assert audit["status"] == "cancelled"
    assert audit["result"] is None
    time.sleep(2)  # several heartbeats later: no shard runs or stores anything
    [shard] = stack.shards(audit_id)
    assert (shard.status, shard.result, shard.finished_at) == ("pending", None, None)
    assert stack.audit(audit_id)["status"] == "cancelled"

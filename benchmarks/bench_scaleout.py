"""Scale-out: one sharded audit on 1 vs 2 real worker processes, in production mode.

A PostgreSQL database created for the run, a real Redis with its own queue and key prefix,
`robaudit serve` and `robaudit worker` processes with one torch/OpenMP thread each. Every
round runs the same audit (force: true) on 1 and on 2 workers, the order reversed each
round; the speed-up is the median of the per-round ratios. Also measured, for the capacity
notes in benchmarks/README.md:
- database writes per shard: pg_stat_database deltas (xact_commit, tup_inserted, tup_updated)
  over one whole audit, divided by its shards;
- Redis memory per queued task: INFO used_memory before and after queuing N shard messages
  on a queue no worker consumes;
- time to plan an audit: write its shard rows, queue one message per shard;
- where each worker's time went, from its "shard timing" log lines (worker/execution.py):
  lease (database), child setup and load, engine, store, and the idle rest (waiting for
  messages, finalising), per worker and round.

Workers are long-lived in production, so each round waits until every worker's spare
sandbox child has done its imports ("sandbox spare ready", worker/runner.py) before it
submits the audit: the imports are paid while the worker is idle, not by the audit.

Run: `python benchmarks/bench_scaleout.py [--samples 1797] [--shards 8] [--rounds 3]`.
Writes benchmarks/scaleout.json (raw seconds included) and prints the README rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests
import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.digits import DigitsCNN, load_split, to_onnx  # noqa: E402
from tests import services  # noqa: E402
from tests.e2e.conftest import ROBAUDIT, base_env, spawn, stop, wait_http  # noqa: E402

OUT = Path(__file__).resolve().parent / "scaleout.json"
CONFIG = {"epsilons": [0.1], "steps": 20, "landscape": {"samples": 2, "resolution": 11}}
STATS = ("xact_commit", "tup_inserted", "tup_updated")
PHASES = ("lease_s", "load_s", "engine_s", "call_other_s", "store_s", "total_s")
TIMING = re.compile(r"shard timing audit=(\S+) position=(\d+) " + " ".join(
    rf"{p}=([0-9.]+)" for p in PHASES))  # fmt: skip


def own_session(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """A worker in its own session. Linux's autogroup scheduler (on here) shares the CPU
    between sessions, not processes: two workers in one session get one session's share,
    so a second worker would add no CPU while other sessions are busy. Separate hosts or
    containers are separate groups too."""
    with log.open("w") as handle:
        return subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip


class Stack:
    """The API on a fresh database; workers come and go per round."""

    def __init__(self, work: Path, env: dict[str, str], url: str, key: str) -> None:
        self.work, self.env, self.url, self.key = work, env, url, key
        self.headers = {"Authorization": f"Bearer {key}"}
        self.samples = 1000
        self.logs: list[Path] = []

    @contextmanager
    def workers(self, count: int) -> Iterator[None]:
        env = {**self.env, "OMP_NUM_THREADS": "1", "ROBAUDIT_TORCH_THREADS": "1"}
        logs = [self.work / f"worker-{uuid.uuid4().hex[:6]}.log" for _ in range(count)]
        self.logs = logs
        procs = [own_session([*ROBAUDIT, "worker"], env, log) for log in logs]
        try:
            deadline = time.monotonic() + 120
            while not all("sandbox spare ready" in log.read_text() for log in logs):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("\n".join(log.read_text()[-2000:] for log in logs))
                time.sleep(0.2)
            yield
        finally:
            stop(procs)

    def post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = requests.post(self.url + path, headers=self.headers, timeout=60, **kwargs)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def run_audit(
        self, ids: tuple[str, str], seed: int
    ) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """Submit, wait until it ends; (seconds from submit to succeeded, audit, estimate)."""
        config = {**CONFIG, "seed": seed, "max_samples": self.samples}
        body = {"model_id": ids[0], "dataset_id": ids[1], "config": config}
        start = time.perf_counter()
        created = self.post("/v1/audits", json={**body, "force": True})
        audit_id = created["id"]
        while True:
            resp = requests.get(
                f"{self.url}/v1/audits/{audit_id}", headers=self.headers, timeout=30
            )
            audit: dict[str, Any] = resp.json()
            if audit["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        seconds = time.perf_counter() - start
        if audit["status"] != "succeeded":
            raise RuntimeError(f"audit {audit_id} ended {audit['status']}: {audit['error']}")
        return seconds, audit, created["estimate"]


@contextmanager
def production(work: Path, redis_url: str, prefix: str, shard_size: int) -> Iterator[Stack]:
    db_url = services.create_pg_database()
    env = base_env(work / "data")
    env.update(
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        ROBAUDIT_REDIS_PREFIX=prefix,
        ROBAUDIT_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
        ROBAUDIT_SHARD_SIZE=str(shard_size),
        ROBAUDIT_SWEEP_INTERVAL_S="3600",  # keep the sweeper's reads out of the counts
    )
    api = None
    try:
        subprocess.run([*ROBAUDIT, "db", "upgrade"], env=env, check=True, capture_output=True)
        argv = [*ROBAUDIT, "keys", "create", "--tenant", "bench"]
        key = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
        port = services.free_port()
        serve = [*ROBAUDIT, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        api = spawn(serve, env, work / "api.log")
        url = f"http://127.0.0.1:{port}"
        wait_http(url, [api])
        yield Stack(work, env, url, key.strip())
    finally:
        if api is not None:
            stop([api])
        services.drop_pg_database(db_url)
        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)


def pg_stats(db_url: str) -> dict[str, int]:
    """This database's counters, read from the admin database (so the read is not counted)."""
    name = make_url(db_url).database
    engine = create_engine(services.PG_ADMIN_URL)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
                "WHERE datname = :n"
            ),
            {"n": name},
        ).one()
    engine.dispose()
    return dict(zip(STATS, (int(v) for v in row), strict=True))


def upload(stack: Stack, samples: int) -> tuple[str, str]:
    torch.manual_seed(0)
    model = stack.post("/v1/models", files={"file": ("cnn.onnx", to_onnx(DigitsCNN()))})
    split = load_split()
    x = np.concatenate([split.x_test, split.x_train])[:samples]
    y = np.concatenate([split.y_test, split.y_train])[:samples]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    dataset = stack.post("/v1/datasets", files={"file": ("digits.npz", buf.getvalue())})
    return model["id"], dataset["id"]


def wait_inspected(stack: Stack, model_id: str) -> None:
    """Let the upload's inspection task finish first, so that no round pays for it."""
    with stack.workers(1):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            model = requests.get(
                f"{stack.url}/v1/models/{model_id}", headers=stack.headers, timeout=30
            )
            if model.json()["backends"]["torch"]["ok"] is not None:
                return
            time.sleep(0.5)
    raise RuntimeError("the model's inspection did not finish in 300 s")


def phases(logs: list[Path], audit_id: str) -> list[dict[str, float]]:
    """Per worker that ran shards of the audit: its shards and seconds by phase, summed."""
    out = []
    for log in logs:
        rows = [m for m in TIMING.finditer(log.read_text()) if m.group(1) == audit_id]
        if rows:
            sums = {p: round(sum(float(m.group(3 + i)) for m in rows), 3)
                    for i, p in enumerate(PHASES)}  # fmt: skip
            out.append({"shards": len(rows), **sums})
    return out


def per_sample(audit: dict[str, Any]) -> list[list[float]]:
    return [p["per_sample"] for p in audit["result"]["per_epsilon"]]


def scaleout(stack: Stack, ids: tuple[str, str], rounds: int) -> dict[str, Any]:
    times: dict[int, list[float]] = {1: [], 2: []}
    loads: list[float] = []
    engine: dict[int, list[float]] = {1: [], 2: []}
    writes: list[dict[str, float]] = []
    reference: list[list[float]] | None = None
    identical = True
    shards = 0
    throughput: list[float] = []
    breakdown: list[dict[str, Any]] = []
    for r in range(rounds):
        for count in (1, 2) if r % 2 == 0 else (2, 1):
            with stack.workers(count):
                before = pg_stats(stack.env["DATABASE_URL"])
                seconds, audit, est = stack.run_audit(ids, seed=0)
                time.sleep(1.5)  # PostgreSQL flushes its statistics up to a second late
                after = pg_stats(stack.env["DATABASE_URL"])
            per_worker = phases(stack.logs, audit["id"])
            breakdown.append({"round": r, "workers": count, "wall_s": round(seconds, 3),
                              "per_worker": per_worker})  # fmt: skip
            shards = audit["result"]["manifest"]["shards"]
            writes.append({k: (after[k] - before[k]) / shards for k in STATS})
            engine_s = sum(audit["result"]["timing"]["stages"].values())
            engine[count].append(engine_s)
            throughput.append((est["forward_passes"] + est["backward_passes"]) / engine_s)
            values = per_sample(audit)
            reference = reference or values
            identical = identical and values == reference
            times[count].append(seconds)
            loads.append(os.getloadavg()[0])
            print(f"round {r}: {count} worker(s) {seconds:.1f} s, {shards} shards", flush=True)
            for w, row in enumerate(per_worker):
                cells = ", ".join(f"{p[:-2]} {row[p]:.2f}" for p in PHASES)
                print(f"  worker {w}: {row['shards']} shards; seconds: {cells}", flush=True)
    ratios = [one / two for one, two in zip(times[1], times[2], strict=True)]
    return {
        "seconds": times,
        "ratios": ratios,
        "speedup_median": statistics.median(ratios),
        "shards": shards,
        "load_1min_after_each_run": loads,
        # engine seconds summed over the shards: equal for 1 and 2 workers without contention
        "engine_seconds": engine,
        "identical_per_sample": identical,
        "writes_per_shard": {k: statistics.median(w[k] for w in writes) for k in STATS},
        # the estimate's passes over the engine seconds the audit reports (all shards)
        "passes_per_second_engine": statistics.median(throughput),
        # per round and worker: seconds by phase summed over its shards (worker log lines);
        # wall_s minus a worker's total_s is its time outside shards (idle, finalising)
        "phases": breakdown,
    }


def plan_and_queue(stack: Stack, ids: tuple[str, str], shard_sizes: list[int]) -> dict[str, Any]:
    """No worker running: lease, plan and queue audits in-process on an idle queue."""
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith(("ROBAUDIT", "DATA"))})
    os.environ["REDIS_URL"] = stack.env["REDIS_URL"]
    from infra.config import Settings
    from infra.persistence.models import Audit
    from infra.persistence.session import make_engine, make_session_factory
    from infra.queue import RUN_SHARD, make_celery
    from service.audits import create_audit
    from service.schemas import AuditConfig
    from worker.execution import plan_shards

    settings = Settings.from_env().with_overrides(
        queue=f"bench-idle-{uuid.uuid4().hex[:8]}", max_queued_audits=10_000
    )
    celery = make_celery(settings)
    r = redis.Redis.from_url(stack.env["REDIS_URL"])
    engine = make_engine(settings.database_url)
    session = make_session_factory(engine)()
    tenant = session.scalar(text("SELECT tenant_id FROM models LIMIT 1"))
    out: dict[str, Any] = {"plan": {}, "redis": {}}
    seed = 1000
    for size in shard_sizes:
        runs = []
        for _ in range(5):
            seed += 1
            audit, _ = create_audit(
                session=session, settings=settings, tenant_id=tenant, model_id=ids[0],
                dataset_id=ids[1], config=AuditConfig(**{**CONFIG, "seed": seed,
                "max_samples": stack.samples}), force=True,
                idempotency_key=None,
            )  # fmt: skip
            session.commit()
            audit_id = audit.id
            start = time.perf_counter()
            session.query(Audit).filter(Audit.id == audit_id).update({"status": "running"})
            positions = plan_shards(session, audit_id, size)
            planned = time.perf_counter()
            for position in positions:
                celery.send_task(RUN_SHARD, args=[audit_id, position])
            runs.append((planned - start, time.perf_counter() - planned, len(positions)))
            session.query(Audit).filter(Audit.id == audit_id).update({"status": "cancelled"})
            session.commit()
        out["plan"][str(runs[0][2])] = {
            "shard_rows_s": statistics.median(r_[0] for r_ in runs),
            "queue_s": statistics.median(r_[1] for r_ in runs),
        }
    queue_key = f"{settings.redis_prefix}{settings.queue}"
    r.delete(queue_key)
    for n in (2000, 2000, 2000):
        before = int(r.info("memory")["used_memory"])
        for i in range(n):
            celery.send_task(RUN_SHARD, args=[str(uuid.uuid4()), i])
        after = int(r.info("memory")["used_memory"])
        out["redis"].setdefault("bytes_per_task", []).append((after - before) / n)
        out["redis"]["queue_length"] = r.llen(queue_key)
        r.delete(queue_key)
    out["redis"]["bytes_per_task_median"] = statistics.median(out["redis"]["bytes_per_task"])
    session.close()
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1797)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    CONFIG["steps"] = args.steps
    redis_url = os.environ.get("ROBAUDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"robaudit-bench-{uuid.uuid4().hex[:8]}:"
    shard_size = -(-args.samples // args.shards)
    work = Path(f"/tmp/robaudit-bench-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    load = os.getloadavg()
    with production(work, redis_url, prefix, shard_size) as stack:
        stack.samples = args.samples
        ids = upload(stack, args.samples)
        wait_inspected(stack, ids[0])
        results = scaleout(stack, ids, args.rounds)
        results.update(plan_and_queue(stack, ids, [shard_size, max(1, args.samples // 100)]))
    results.update(
        samples=args.samples,
        config=CONFIG,
        workers_in_own_sessions=True,
        cpus=os.cpu_count(),
        load_before=load,
        load_after=os.getloadavg(),
        python=platform.python_version(),
        torch=torch.__version__,
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Open-loop load on the read API: gunicorn on PostgreSQL with 10,000 audits in the history.

`python -m benchmarks.bench_api_load [--rate 200] [--seconds 30] [--audits 10000]
[--workers 2] [--no-summaries] [--unfrozen]`

Audits are inserted through the persistence layer with a realistic stored result (~26 KB:
3 ε with 256 per-sample values each, 2 landscapes of 21×21), its summary beside it unless
`--no-summaries` (what rows written before summaries look like). A load generator in its own
process (one asyncio loop, a connection per request) sends requests at a fixed arrival rate whatever
the answers' pace (open loop): half
`GET /v1/audits/{id}` (a random audit), half `GET /v1/audits?limit=50`. Latency is measured
from each request's scheduled send time, so a server that falls behind shows it.
Prints and writes benchmarks/api_load.json: p50/p90/p99 per route, errors, achieved rate,
list page size, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from infra.persistence.migrate import upgrade
from infra.persistence.models import Audit, Dataset, Model
from robustness.results import AuditResult
from service.auth import create_key

ADMIN = os.environ.get("ROBAUDIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
OUT = Path(__file__).with_name("api_load.json")


def realistic_result(rng: random.Random) -> dict[str, Any]:
    """A stored result of the size real ones have (per-sample values, landscape grids)."""

    def grid() -> list[list[float]]:
        return [[round(rng.random(), 6) for _ in range(21)] for _ in range(21)]

    per_eps = []
    for eps in (0.01, 0.03, 0.1):
        psi = [round(rng.random() * eps, 7) for _ in range(256)]
        mean = sum(psi) / len(psi)
        per_eps.append(
            {
                "epsilon": eps,
                "divergence": {
                    "mean": mean,
                    "median": mean,
                    "p90": max(psi),
                    "max": max(psi),
                    "ci95": [mean * 0.9, mean * 1.1],
                },
                "clean_accuracy": 0.97,
                "fgsm_accuracy": 0.6,
                "pgd_accuracy": 0.5,
                "per_sample": psi,
                "convergence": {
                    "psi_mean_half": mean * 0.95,
                    "psi_mean": mean,
                    "relative_gain": 0.05,
                    "converged": True,
                    "suggested_steps": None,
                },
            }
        )
    coords = [round(-1 + i / 10, 2) for i in range(21)]
    landscapes = [
        {"sample_index": k, "label": k, "epsilon": 0.03, "norm": "linf", "coords": coords,
         "loss": grid(), "margin": grid(), "misclassified_fraction_inside_eps": 0.1,
         "crosses_boundary_within_eps": True, "decision_boundary": [[[0.1, 0.2], [0.3, 0.4]]]}
        for k in range(2)
    ]  # fmt: skip
    return {
        "per_epsilon": per_eps,
        "samples": 256,
        "backend": "torch",
        "batch_size": 256,
        "diagnostics": {"gradient_masking_suspected": False, "zero_gradient_fraction": 0.0,
                        "nonfinite_gradient_fraction": 0.0, "random_search_wins": 0,
                        "parity_max_abs_diff": 1e-6, "evidence": []},
        "landscapes": landscapes,
        "search": {"algorithm": "apgd-kl/1", "steps": 20, "restarts": 1, "runs": 1,
                   "steps_per_run": 20, "gradient_evaluations_per_sample": 20},
        "manifest": {"model_sha256": "0" * 64, "dataset_sha256": "1" * 64,
                     "config_hash": "2" * 64, "versions": {"robaudit": "1", "torch": "2.14"}},
        "timing": {"stages": {"clean": 0.1, "search": 3.2}},
    }  # fmt: skip


def seed_database(url: str, n: int, summaries: bool) -> tuple[str, list[str], int]:
    """(API key, audit ids, bytes of one stored result)."""
    upgrade(url)
    engine = create_engine(url)
    rng = random.Random(0)
    result = realistic_result(rng)
    summary = AuditResult.model_validate(result).summary().model_dump(mode="json")
    with Session(engine) as session:
        key = create_key(session=session, tenant_name="bench")
        tenant = session.execute(text("SELECT id FROM tenants")).scalar_one()
        model = Model(tenant_id=tenant, name="digits", version="1", sha256="0" * 64,
                      variant="v", size_bytes=1, opset=17, input_range=[0.0, 1.0],
                      intake={}, backends={})  # fmt: skip
        dataset = Dataset(tenant_id=tenant, name="digits", sha256="1" * 64, size_bytes=1, n=256,
                          shape=[1, 8, 8], dtype="float32", num_classes=10,
                          value_range=[0.0, 1.0])  # fmt: skip
        session.add_all([model, dataset])
        session.flush()
        start = datetime.now(UTC) - timedelta(days=30)
        template = Audit(tenant_id=tenant, model_id=model.id, dataset_id=dataset.id,
                         config={"seed": 0}, config_hash="0" * 64, status="succeeded",
                         progress_done=1024, progress_total=1024, backend="torch",
                         result=result, summary=summary if summaries else None,
                         created_at=start, started_at=start,
                         finished_at=start + timedelta(seconds=60))  # fmt: skip
        session.add(template)
        session.commit()
        # The other audits copy the template's row (its real result) inside PostgreSQL, one
        # every 250 s of history: seconds instead of minutes of client-side JSON.
        session.execute(
            text(
                "INSERT INTO audits (id, tenant_id, model_id, dataset_id, config, config_hash, "
                "status, progress_done, progress_total, stage, cancel_requested, attempts, "
                "shards_total, shards_done, backend, result, summary, created_at, started_at, "
                "finished_at) SELECT gen_random_uuid()::text, tenant_id, model_id, dataset_id, "
                "json_build_object('seed', g), lpad(g::text, 64, '0'), status, progress_done, "
                "progress_total, stage, cancel_requested, attempts, shards_total, shards_done, "
                "backend, result, summary, created_at + g * interval '250 seconds', "
                "started_at + g * interval '250 seconds', finished_at + g * interval '250 seconds' "
                "FROM audits, generate_series(1, :n) AS g WHERE audits.id = :id"
            ),
            {"n": n - 1, "id": template.id},
        )
        session.commit()
        ids = list(session.scalars(text("SELECT id FROM audits")))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()
    return key, ids, len(json.dumps(result))


def _load(base: str, key: str, ids: list[str], rate: float, seconds: float) -> dict:
    """Send request k at start + k/rate, whatever the answers' pace (open loop); latency counts
    from that scheduled time. A request not answered within 5 s, or not sent by the end + 10 s,
    is an error: the run stays bounded.

    One asyncio loop sends them all, each on its own connection (gunicorn's sync workers close
    every connection after one answer). A pool of threads did this before; under the GIL its
    own wake-ups added milliseconds to the latencies it measured.
    """
    import asyncio
    from urllib.parse import urlsplit

    host = urlsplit(base)
    rng = random.Random(1)
    paths = [(f"/v1/audits/{rng.choice(ids)}", "get") if k % 2 == 0
             else ("/v1/audits?limit=50", "list") for k in range(int(rate * seconds))]  # fmt: skip
    samples: dict[str, list[float]] = {"get": [], "list": []}
    errors: dict[str, int] = {}

    async def fetch(path: str) -> int:
        reader, writer = await asyncio.open_connection(host.hostname, host.port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host.netloc}\r\nAuthorization: Bearer {key}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = await reader.read()  # to the end: the server closes after one answer
        finally:
            writer.close()
        return int(answer.split(b" ", 2)[1])

    async def one(k: int, start: float, deadline: float) -> None:
        scheduled = start + k / rate
        path, route = paths[k]
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        if time.perf_counter() > deadline:
            outcome = "not sent in time"
        else:
            try:
                status = await asyncio.wait_for(fetch(path), timeout=5)
                outcome = "" if status == 200 else str(status)
            except Exception as exc:
                outcome = type(exc).__name__
        if outcome:
            errors[outcome] = errors.get(outcome, 0) + 1
        else:
            samples[route].append((time.perf_counter() - scheduled) * 1000)

    async def run() -> float:
        for k in range(16):  # warm every worker (schemas, connections); not measured
            with contextlib.suppress(Exception):
                await fetch(paths[k % len(paths)][0])
        start = time.perf_counter() + 0.5
        await asyncio.gather(*(one(k, start, start + seconds + 10) for k in range(len(paths))))
        return time.perf_counter() - start

    elapsed = asyncio.run(run())
    return {"samples": samples, "errors": errors, "sent": len(paths), "elapsed_s": elapsed}


def _generator(base: str, key: str, ids: list[str], rate: float, seconds: float, q: Any) -> None:
    q.put(_load(base, key, ids, rate, seconds))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--audits", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-summaries", action="store_true")
    parser.add_argument(
        "--unfrozen", action="store_true", help="baseline: the app without gc.freeze()"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up (finally) when killed

    name = f"robaudit_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    server = None
    stack = contextlib.ExitStack()
    try:
        t0 = time.perf_counter()
        key, ids, result_bytes = seed_database(url, args.audits, not args.no_summaries)
        print(f"seeded {args.audits} audits in {time.perf_counter() - t0:.0f} s", flush=True)
        port = 18000 + random.randrange(1000)
        data_dir = tempfile.mkdtemp(prefix="robaudit-bench-")
        env = {**os.environ, "DATABASE_URL": url, "ROBAUDIT_DATA_DIR": data_dir,
               "ROBAUDIT_RATE_LIMIT": "1000000 per minute",
               # the rate limiter on Redis, as deployed (its memory storage starts a thread
               # per request); keys under this run's own prefix
               "REDIS_URL": os.environ.get("ROBAUDIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
               "ROBAUDIT_REDIS_PREFIX": f"{name}:"}  # fmt: skip
        entry = "benchmarks.wsgi_unfrozen:app" if args.unfrozen else "service.wsgi:app"
        # The server's log (a JSON line per request, as deployed) goes to a file: a pipe nobody
        # reads fills after ~270 requests and then blocks every worker mid-request.
        log = stack.enter_context(open(Path(data_dir) / "gunicorn.log", "wb"))  # noqa: SIM115
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-b",
             f"127.0.0.1:{port}", "--log-level", "warning", entry],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        import httpx

        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        page = httpx.get(f"{base}/v1/audits?limit=50", headers=headers, timeout=30)
        one = httpx.get(f"{base}/v1/audits/{ids[0]}", headers=headers, timeout=30)
        load_before = os.getloadavg()
        q: Any = multiprocessing.get_context("spawn").Queue()
        gen = multiprocessing.get_context("spawn").Process(
            target=_generator, args=(base, key, ids, args.rate, args.seconds, q)
        )
        gen.start()
        out = q.get(timeout=args.seconds + 120)
        gen.join()
        load_after = os.getloadavg()
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "rate_target": args.rate,
            "seconds": args.seconds,
            "audits": args.audits,
            "gunicorn_workers": args.workers,
            "summaries_stored": not args.no_summaries,
            "entry": entry,
            "stored_result_bytes": result_bytes,
            "list_page_bytes": len(page.content),
            "get_bytes": len(one.content),
            "sent": out["sent"],
            "offered_rate": round(out["sent"] / args.seconds, 1),
            "answered_per_s": round(
                sum(len(v) for v in out["samples"].values()) / out["elapsed_s"], 1
            ),
            "errors": out["errors"],
            "load_avg_before": [round(v, 2) for v in load_before],
            "load_avg_after": [round(v, 2) for v in load_after],
            "cpus": os.cpu_count(),
        }
        for route, values in out["samples"].items():
            report[route] = {"n": len(values), "p50_ms": pct(values, 50),
                             "p90_ms": pct(values, 90), "p99_ms": pct(values, 99)}  # fmt: skip
        print(json.dumps(report, indent=2))
        runs = json.loads(OUT.read_text()) if OUT.exists() else []
        OUT.write_text(json.dumps([*runs, report], indent=2) + "\n")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:  # still draining a backlog: stop it
                server.kill()
                server.wait()
        stack.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

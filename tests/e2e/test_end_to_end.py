"""Upload, audit and read the result through real API and worker processes."""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from robaudit.client import verify_signature
from tests import services
from tests.e2e.conftest import Running, production_stack, stop
from tests.factories.models import cnn_onnx, digits_split, natural_cnn
from tests.factories.receiver import receiver

CONFIG = {"epsilons": [0.1], "steps": 5, "max_samples": 48}


def audit_over_http(running: Running, timeout: float = 240) -> dict:
    split = digits_split()
    npz = io.BytesIO()
    np.savez_compressed(npz, x=split.x_test[:48], y=split.y_test[:48])
    h = running.headers()
    model = requests.post(
        f"{running.url}/v1/models",
        files={"file": ("digits.onnx", cnn_onnx(natural_cnn()))},
        data={"name": "digits-cnn"},
        headers=h,
        timeout=60,
    )
    assert model.status_code == 201, model.text
    dataset = requests.post(
        f"{running.url}/v1/datasets",
        files={"file": ("test.npz", npz.getvalue())},
        headers=h,
        timeout=60,
    )
    assert dataset.status_code == 201, dataset.text
    body = {"model_id": model.json()["id"], "dataset_id": dataset.json()["id"], "config": CONFIG}
    created = requests.post(f"{running.url}/v1/audits", json=body, headers=h, timeout=30)
    assert created.status_code == 202, created.text
    self_url = running.url + created.json()["links"]["self"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        audit = requests.get(self_url, headers=h, timeout=10).json()
        if audit["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"audit still {audit['status']} after {timeout}s\n{running.dump_logs()}")
    assert audit["status"] == "succeeded", (audit["error"], running.dump_logs())
    checked = requests.get(
        f"{running.url}/v1/models/{model.json()['id']}", headers=h, timeout=10
    ).json()
    return {"audit": audit, "model": checked}


def _settled_deliveries(running: Running, webhook_id: str, timeout: float = 60) -> list[dict]:
    url = f"{running.url}/v1/webhooks/{webhook_id}/deliveries"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = requests.get(url, headers=running.headers(), timeout=10).json()["items"]
        if items and all(d["status"] != "pending" for d in items):
            return list(items)
        time.sleep(0.3)
    pytest.fail(f"webhook deliveries still pending after {timeout}s\n{running.dump_logs()}")


def assert_result(audit: dict) -> None:
    result = audit["result"]
    eps = result["per_epsilon"][0]
    assert eps["epsilon"] == 0.1
    assert eps["divergence"]["mean"] > 0
    assert eps["clean_accuracy"] > 0.8
    assert eps["pgd_accuracy"] < eps["clean_accuracy"]
    assert result["samples"] == 48
    assert audit["backend"] == "torch"
    assert audit["progress"]["done"] == audit["progress"]["total"]


def test_embedded_mode_end_to_end_then_stops_its_children(embedded: Running) -> None:
    """One `robaudit up` for both: starting a second stack only to stop it cost ~10 s."""
    [proc] = embedded.procs
    out = audit_over_http(embedded)
    assert_result(out["audit"])
    history = requests.get(
        f"{embedded.url}/v1/audits", headers=embedded.headers(), timeout=10
    ).json()
    assert [a["id"] for a in history["items"]] == [out["audit"]["id"]]
    ready = requests.get(f"{embedded.url}/readyz", timeout=10).json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}
    assert embedded.key.startswith("ra_")  # read from the data dir's dev-api-key

    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) == 2  # the API and the worker
    stop([proc])
    assert proc.returncode == 0, embedded.dump_logs()
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Running]:
    """gunicorn + a Celery worker, on a fresh PostgreSQL database and Redis with a key prefix."""
    import redis

    redis_url = services.require_redis()
    prefix = f"robaudit-test-{uuid.uuid4().hex[:8]}:"
    try:
        # 48 samples in shards of 16: three shard tasks, the last one aggregates
        with production_stack(
            tmp_path,
            redis_url,
            ROBAUDIT_REDIS_PREFIX=prefix,
            ROBAUDIT_SHARD_SIZE="16",
            # the test's webhook receiver listens on loopback; retries come quickly
            ROBAUDIT_WEBHOOK_BLOCK_PRIVATE="false",
            ROBAUDIT_WEBHOOK_BACKOFF_S="0.5",
        ) as running:
            yield running
    finally:
        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter(match=f"{prefix}*"):
            client.delete(k)


def test_redis_postgres_mode_end_to_end(production: Running) -> None:
    """One stack: the audit through three shard tasks, the logs, and its webhook."""
    with receiver([(500, {}, b"down"), (502, {}, b"")]) as hook:
        endpoint = requests.post(
            f"{production.url}/v1/webhooks",
            json={"url": hook.url},
            headers=production.headers(),
            timeout=10,
        ).json()
        out = audit_over_http(production)
        deliveries = _settled_deliveries(production, endpoint["id"])
    # The worker's task tried three times with backoff; each attempt was signed.
    assert len(hook.requests) == 3, production.dump_logs()
    for got in hook.requests:
        assert verify_signature(endpoint["secret"], got.body, got.headers["Robaudit-Signature"])
        assert json.loads(got.body)["audit"]["id"] == out["audit"]["id"]
    [delivery] = deliveries
    assert (delivery["event"], delivery["status"]) == ("audit.succeeded", "delivered")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 200]
    assert_result(out["audit"])
    assert out["audit"]["result"]["manifest"]["shards"] == 3
    assert len(out["audit"]["result"]["per_epsilon"][0]["per_sample"]) == 48
    assert out["model"]["backends"]["torch"]["ok"] is True  # the inspect task ran too
    ready = requests.get(f"{production.url}/readyz", timeout=10).json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}
    # Log lines are JSON (Celery's banner and gunicorn's own lines are not log records), and
    # each shard task's lines, Celery's included, name the audit and the shard.
    audit_id = out["audit"]["id"]
    worker = [json.loads(x) for x in production.logs[1].read_text().splitlines() if x[:1] == "{"]
    of_shards = [x for x in worker if x.get("audit_id") == audit_id and "shard" in x]
    assert {x["shard"] for x in of_shards} == {0, 1, 2}
    assert {"worker.tasks", "celery.app.trace"} <= {x["logger"] for x in of_shards}
    api = [json.loads(x) for x in production.logs[0].read_text().splitlines() if x[:1] == "{"]
    served = [x for x in api if x["event"] == "request"]
    assert served
    assert all(x["request_id"] for x in served)

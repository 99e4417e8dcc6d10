"""Nothing is lost when the broker dies: the audit is kept, the API stays up, and it runs later.

Starts its own redis-server on a free port (never touches the shared one), kills it, submits
an audit, brings Redis back empty, and waits for a worker's sweeper to re-send the task.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import services
from tests.e2e.conftest import Running, production_stack
from tests.factories.models import cnn_onnx, digits_split, natural_cnn


class OwnRedis:
    def __init__(self, workdir: Path) -> None:
        self.port = services.free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("own redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def outage_setup(tmp_path: Path) -> Iterator[tuple[Running, OwnRedis]]:
    if shutil.which("redis-server") is None:
        services.unavailable("redis-server binary not installed")
    broker = OwnRedis(tmp_path)
    broker.start()
    try:
        with production_stack(tmp_path, broker.url, ROBAUDIT_SWEEP_INTERVAL_S="1") as running:
            yield running, broker
    finally:
        broker.kill()


def test_audit_submitted_while_the_broker_is_down_runs_when_it_returns(
    outage_setup: tuple[Running, OwnRedis],
) -> None:
    import io

    import numpy as np

    running, broker = outage_setup
    h = running.headers()
    split = digits_split()
    npz = io.BytesIO()
    np.savez_compressed(npz, x=split.x_test[:24], y=split.y_test[:24])
    model = requests.post(
        f"{running.url}/v1/models",
        files={"file": ("m.onnx", cnn_onnx(natural_cnn()))},
        headers=h,
        timeout=60,
    ).json()
    dataset = requests.post(
        f"{running.url}/v1/datasets",
        files={"file": ("d.npz", npz.getvalue())},
        headers=h,
        timeout=60,
    ).json()

    broker.kill()
    assert requests.get(f"{running.url}/readyz", timeout=30).status_code == 503
    body = {
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "config": {"steps": 3, "epsilons": [0.1]},
    }
    created = requests.post(f"{running.url}/v1/audits", json=body, headers=h, timeout=120)
    assert created.status_code == 202, created.text
    assert created.json()["dispatched"] is False
    audit_url = f"{running.url}/v1/audits/{created.json()['id']}"
    assert requests.get(audit_url, headers=h, timeout=10).json()["status"] == "queued"
    assert requests.get(f"{running.url}/healthz", timeout=10).status_code == 200  # still up

    broker.start()  # back, and empty: the message was never there
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        audit = requests.get(audit_url, headers=h, timeout=10).json()
        if audit["status"] in ("succeeded", "failed"):
            break
        time.sleep(1)
    assert audit["status"] == "succeeded", (audit, running.dump_logs())
    assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 200

"""`robaudit up` stopped in the middle of an audit and started again: the audit finishes."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests import services
from tests.e2e.conftest import ROBAUDIT, base_env, spawn, stop, wait_http
from tests.e2e.test_faults import FAST, SLOW
from tests.factories.models import digits_split, mlp_onnx

pytestmark = pytest.mark.e2e


def start_up(data_dir: Path, port: int, log: Path) -> tuple[object, str]:
    env = base_env(data_dir)
    env.update(FAST)
    proc = spawn([*ROBAUDIT, "up", "--port", str(port), "--data-dir", str(data_dir)], env, log)
    wait_http(f"http://127.0.0.1:{port}", [proc])
    key_file = data_dir / "dev-api-key"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not key_file.exists():
        time.sleep(0.1)
    return proc, key_file.read_text().strip()


def shard_states(data_dir: Path, audit_id: str) -> list[tuple[str, int]]:
    with sqlite3.connect(data_dir / "robaudit.db") as conn:
        return conn.execute(
            "SELECT status, done FROM audit_shards WHERE audit_id = ? ORDER BY position",
            (audit_id,),
        ).fetchall()


def test_embedded_stack_restarted_mid_audit_finishes_it(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", services.free_port()
    url = f"http://127.0.0.1:{port}"
    proc, key = start_up(data_dir, port, tmp_path / "up-1.log")
    try:
        h = {"Authorization": f"Bearer {key}"}
        split = digits_split()
        npz = io.BytesIO()
        np.savez_compressed(npz, x=split.x_test[:32], y=split.y_test[:32])
        model = requests.post(
            f"{url}/v1/models", files={"file": ("m.onnx", mlp_onnx())}, headers=h, timeout=60
        )
        data = requests.post(
            f"{url}/v1/datasets", files={"file": ("d.npz", npz.getvalue())}, headers=h, timeout=60
        )
        body = {
            "model_id": model.json()["id"],
            "dataset_id": data.json()["id"],
            "config": {**SLOW, "max_samples": 32},
        }
        audit_id = requests.post(f"{url}/v1/audits", json=body, headers=h, timeout=60).json()["id"]
        deadline = time.monotonic() + 90
        while not any(s == "running" and d for s, d in shard_states(data_dir, audit_id)):
            assert time.monotonic() < deadline, (tmp_path / "up-1.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        stop([proc])  # Ctrl-C in the middle of a shard
    states = shard_states(data_dir, audit_id)
    assert any(s != "done" for s, _ in states), states  # it really stopped mid-audit
    assert "running" not in {s for s, _ in states}  # the stopped shard was handed back

    proc, key = start_up(data_dir, port, tmp_path / "up-2.log")
    try:
        h = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            audit = requests.get(f"{url}/v1/audits/{audit_id}", headers=h, timeout=30).json()
            if audit["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert audit["status"] == "succeeded", (audit, (tmp_path / "up-2.log").read_text()[-3000:])
        assert audit["result"]["samples"] == 32
    finally:
        stop([proc])

"""A tenant's audit history for the web UI's tests: three versions of a digits MLP, each
audited by the real engine in-process (no sandbox, seconds), stored through the worker's own
lease, completion and finalisation path with its landscape pictures; and one audit left
running, whose progress the test then moves as a worker would."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session
from torch import nn

from demo.digits import to_onnx
from infra.config import Settings
from infra.persistence.models import Audit, Model, utcnow
from infra.storage import ArtifactStore
from robustness.config import AuditConfig
from robustness.engine import run_audit
from robustness.loading import load
from robustness.spec import spec_from_config
from tests.factories import hostile
from tests.factories.api import upload_dataset, upload_model
from tests.factories.models import digits_split
from worker import execution, leases, render

CPU = torch.device("cpu")
WORKER = "ui-test-worker"
SAMPLES = 16
CONFIG: dict[str, Any] = {
    "epsilons": [0.02, 0.05, 0.1],
    "steps": 6,
    "max_samples": SAMPLES,
    "landscape": {"samples": 1, "resolution": 9},
}
# (hidden units, training steps, version, days ago): each version wider and trained longer
VERSIONS = ((8, 20, "1.0", 12), (16, 40, "1.1", 6), (32, 60, "2.0", 1))


@dataclass
class History:
    model_ids: list[str]
    audit_ids: list[str]  # succeeded, oldest version first
    running_id: str
    running_shard: str


def populate(
    client: FlaskClient, auth: dict[str, str], session: Session, settings: Settings
) -> History:
    split = digits_split()
    x, y = split.x_test[:SAMPLES], split.y_test[:SAMPLES]
    dataset = upload_dataset(client, auth, hostile.npz_bytes(x=x, y=y), name="digits-test")
    dataset_id = dataset.get_json()["id"]
    store = ArtifactStore(settings.artifact_dir)
    model_ids, audit_ids = [], []
    for seed, (hidden, steps, version, days) in enumerate(VERSIONS):
        onnx_bytes = mlp(hidden, steps, seed)
        resp = upload_model(client, auth, onnx_bytes, name="digits-mlp", version=version)
        assert resp.status_code == 201, resp.get_json()
        model_ids.append(resp.get_json()["id"])
        audit_id = queue(client, auth, model_ids[-1], dataset_id, CONFIG)
        claim = claim_shard(session, audit_id)
        body = engine_result(onnx_bytes, x, y, settings)
        for landscape in body["landscapes"]:
            png = render.landscape_png(landscape)
            landscape["png_sha256"] = store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256
        assert leases.complete_shard(session, audit_id, claim.shard_id, WORKER, body)
        execution.finalise(session, audit_id)
        when = utcnow() - timedelta(days=days)
        session.execute(
            update(Audit)
            .where(Audit.id == audit_id)
            .values(created_at=when, started_at=when, finished_at=when + timedelta(minutes=3))
        )
        session.execute(update(Model).where(Model.id == model_ids[-1]).values(created_at=when))
        session.commit()
        audit_ids.append(audit_id)
    running = queue(client, auth, model_ids[-1], dataset_id, {**CONFIG, "seed": 7})
    claim = claim_shard(session, running)
    leases.heartbeat(session, running, claim.shard_id, WORKER, done=SAMPLES, stage="ε 0.02")
    return History(model_ids, audit_ids, running, claim.shard_id)


def mlp(hidden: int, steps: int, seed: int) -> bytes:
    """A small MLP on flattened digits, trained briefly on a slice (CPU seconds matter here)."""
    torch.manual_seed(seed)
    split = digits_split()
    x, y = torch.from_numpy(split.x_train[:600]), torch.from_numpy(split.y_train[:600])
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return to_onnx(net.eval())


def queue(
    client: FlaskClient, auth: dict[str, str], model_id: str, dataset_id: str, config: dict
) -> str:
    body = {"model_id": model_id, "dataset_id": dataset_id, "config": config}
    resp = client.post("/v1/audits", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def claim_shard(session: Session, audit_id: str) -> leases.Claim:
    """What a worker does first: plan the shards and lease the only one."""
    assert execution.plan_shards(session, audit_id, shard_size=512) == [0]
    claim = leases.claim_shard(session, audit_id, 0, WORKER, stale_after_s=3600)
    assert isinstance(claim, leases.Claim)
    return claim


def engine_result(
    onnx_bytes: bytes, x: np.ndarray, y: np.ndarray, settings: Settings
) -> dict[str, Any]:
    loaded = load(onnx_bytes, x, device=CPU)
    spec = spec_from_config(AuditConfig.model_validate(CONFIG), (0.0, 1.0))
    result = run_audit(loaded.backend, x, y, spec, device=CPU)
    return result.model_dump(mode="json")

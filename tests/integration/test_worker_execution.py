"""The worker's path from rows to the engine and back, with the real core and database."""

from __future__ import annotations

import pytest
import torch
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from robaudit.digits import to_onnx
from service.config import Settings
from service.persistence.models import Audit, AuditStatus, Model
from service.storage import ArtifactStore
from tests.factories import hostile
from tests.factories.api import upload_dataset, upload_model
from tests.factories.models import cnn_onnx, digits_split, natural_cnn
from worker import execution
from worker.leases import finish, take_lease


class NaNScores(torch.nn.Module):
    """Valid graph, useless scores: every output is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * float("nan")


SMALL = {"epsilons": [0.1, 0.2], "steps": 5, "max_samples": 40}


def queue_audit(client: FlaskClient, auth: dict[str, str], model: bytes, config: dict) -> str:
    split = digits_split()
    npz = hostile.npz_bytes(x=split.x_test[:40], y=split.y_test[:40])
    model_id = upload_model(client, auth, model).get_json()["id"]
    dataset_id = upload_dataset(client, auth, npz).get_json()["id"]
    resp = client.post(
        "/v1/audits",
        json={"model_id": model_id, "dataset_id": dataset_id, "config": config},
        headers=auth,
    )
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def run(db_session: Session, settings: Settings, audit_id: str, shard_size: int = 512) -> Audit:
    """What the run_audit and run_shard tasks do, in-process and in order."""
    assert take_lease(db_session, audit_id, "test-worker")
    assert not take_lease(db_session, audit_id, "second-worker")  # the lease is exclusive
    store = ArtifactStore(settings.artifact_dir)
    for position in execution.plan_shards(db_session, audit_id, shard_size):
        outcome = execution.execute_shard(
            session=db_session, store=store, settings=settings, audit_id=audit_id, position=position
        )
        if outcome.kind in ("failed", "cancelled"):
            finish(db_session, audit_id, AuditStatus(outcome.kind), error=outcome.error)
        elif outcome.result is not None and execution.complete_shard(
            db_session, audit_id, position, outcome.result
        ):
            result = execution.aggregate(db_session, audit_id)
            finish(
                db_session,
                audit_id,
                AuditStatus.SUCCEEDED,
                result=result,
                backend=result["backend"],
            )
    audit = db_session.get(Audit, audit_id)
    assert audit is not None
    db_session.refresh(audit)
    return audit


def test_audit_runs_and_stores_the_contract_result(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    audit = run(db_session, settings, audit_id)
    assert audit.status == "succeeded", audit.error
    assert audit.backend == "torch"
    assert audit.started_at is not None
    assert audit.finished_at is not None
    assert audit.progress_done == audit.progress_total > 0
    result = audit.result
    assert result is not None
    assert [e["epsilon"] for e in result["per_epsilon"]] == [0.1, 0.2]
    for eps in result["per_epsilon"]:
        d = eps["divergence"]
        assert 0 <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= d["max"]
        assert eps["pgd_accuracy"] <= eps["clean_accuracy"]
    assert result["samples"] == 40
    assert result["diagnostics"]["parity_max_abs_diff"] < 1e-4
    manifest = result["manifest"]
    assert manifest["model_sha256"] == audit.model.sha256
    assert manifest["config_hash"] == audit.config_hash
    assert manifest["versions"]["torch"] != "absent"
    assert manifest["device"] == "cpu"
    # the API serves what the worker stored
    served = client.get(f"/v1/audits/{audit_id}", headers=auth).get_json()
    assert served["status"] == "succeeded"
    assert (
        served["result"]["per_epsilon"][0]["divergence"] == result["per_epsilon"][0]["divergence"]
    )
    assert len(result["landscapes"]) == 4
    grid = client.get(f"/v1/audits/{audit_id}/landscape/0", headers=auth).get_json()
    assert len(grid["loss"]) == len(grid["margin"]) == len(grid["coords"]) == 21
    assert grid["coords"][0] == pytest.approx(-0.2)
    assert grid["coords"][-1] == pytest.approx(0.2)
    png = client.get(f"/v1/audits/{audit_id}/landscape/0.png", headers=auth)
    assert png.status_code == 200
    assert png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG")
    png.close()  # send_file's open file; a WSGI server closes it, the test client does not
    assert client.get(f"/v1/audits/{audit_id}/landscape/4", headers=auth).status_code == 404
    report = client.get(f"/v1/audits/{audit_id}/report", headers=auth).get_data(as_text=True)
    assert report.count("data:image/png;base64,") == 4


def test_onnxruntime_backend_on_request(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    config = {
        **SMALL,
        "epsilons": [0.1],
        "backend": "onnxruntime",
        "max_samples": 8,
        "baselines": ["clean"],
    }
    audit = run(db_session, settings, queue_audit(client, auth, cnn_onnx(natural_cnn()), config))
    assert audit.status == "succeeded", audit.error
    assert audit.backend == "onnxruntime"


def test_model_that_emits_nan_fails_with_a_clear_error(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    audit = run(db_session, settings, queue_audit(client, auth, to_onnx(NaNScores()), SMALL))
    assert audit.status == "failed"
    assert audit.error is not None
    assert "NaN or inf" in audit.error


def test_cancel_requested_while_running_stops_at_a_batch_boundary(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    assert take_lease(db_session, audit_id, "test-worker")
    [position] = execution.plan_shards(db_session, audit_id, 512)
    db_session.execute(update(Audit).where(Audit.id == audit_id).values(cancel_requested=True))
    db_session.commit()
    outcome = execution.execute_shard(
        session=db_session,
        store=ArtifactStore(settings.artifact_dir),
        settings=settings,
        audit_id=audit_id,
        position=position,
    )
    assert outcome.kind == "cancelled"


def test_inspect_model_fills_backend_status(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    model_id = upload_model(client, auth, cnn_onnx(natural_cnn())).get_json()["id"]
    execution.inspect_model(
        session=db_session, store=ArtifactStore(settings.artifact_dir), model_id=model_id
    )
    model = db_session.get(Model, model_id)
    assert model is not None
    assert model.backends["torch"]["ok"] is True
    assert model.backends["torch"]["parity_max_abs_diff"] < 1e-4
    assert model.backends["onnxruntime"]["ok"] is True


def test_sharded_audit_aggregates_once(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    from worker.model_cache import MODELS

    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    misses = MODELS.misses
    audit = run(db_session, settings, audit_id, shard_size=16)
    assert audit.status == "succeeded", audit.error
    assert (audit.shards_total, audit.shards_done) == (3, 3)
    assert MODELS.misses - misses <= 1  # one conversion (none if cached), shared by the shards
    assert audit.progress_done == audit.progress_total == 40 * 2
    result = audit.result
    assert result is not None
    assert result["samples"] == 40
    assert result["manifest"]["shards"] == 3
    assert len(result["per_epsilon"][0]["per_sample"]) == 40
    assert len(result["landscapes"]) == 4  # drawn by the first shard only
    # a redelivered shard is neither run nor counted again
    store = ArtifactStore(settings.artifact_dir)
    again = execution.execute_shard(
        session=db_session, store=store, settings=settings, audit_id=audit_id, position=1
    )
    assert again.kind == "skipped"
    assert not execution.complete_shard(db_session, audit_id, 1, {"samples": 0})


def test_a_failed_audit_stops_its_other_shards(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    audit_id = queue_audit(client, auth, to_onnx(NaNScores()), SMALL)
    audit = run(db_session, settings, audit_id, shard_size=16)
    assert audit.status == "failed"
    assert audit.error is not None
    assert "NaN or inf" in audit.error
    assert audit.shards_done == 0  # shards 1 and 2 saw a failed audit and skipped

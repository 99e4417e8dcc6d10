"""ROBAUDIT_MAX_RUNNING_AUDITS where work starts, and a status that is `running` only while a
shard is leased: the worker's path (worker/execution.py) with the real core and database."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.dispatch import WAITING_STAGE, deferred_shards
from infra.persistence.models import AuditShard
from infra.storage import ArtifactStore
from tests.factories.models import cnn_onnx, natural_cnn
from tests.integration.test_worker_execution import LIGHT, queue_audit, reload
from worker import execution, leases


def shard(
    db_session: Session, settings: Settings, audit_id: str, position: int
) -> execution.Outcome:
    return execution.execute_shard(
        session=db_session,
        store=ArtifactStore(settings.artifact_dir),
        settings=settings,
        audit_id=audit_id,
        position=position,
        worker="test-worker",
    )


def shown(client: FlaskClient, auth: dict[str, str], audit_id: str) -> tuple[str, str]:
    body = client.get(f"/v1/audits/{audit_id}", headers=auth).get_json()
    return body["status"], body["progress"]["stage"]


def metric(client: FlaskClient, auth: dict[str, str], status: str) -> int:
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith(f'robaudit_audits{{status="{status}"'))
    return int(float(line.rsplit(" ", 1)[1]))  # prometheus_client writes gauges as 2.0


def test_a_second_audit_waits_for_the_tenants_slot_and_status_says_what_happens(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    capped = settings.with_overrides(max_running_audits=1)
    model = cnn_onnx(natural_cnn())
    first = queue_audit(client, auth, model, LIGHT)
    second = queue_audit(client, auth, model, {**LIGHT, "seed": 1})
    tenant = reload(db_session, first).tenant_id
    assert execution.plan_shards(db_session, first, 20) == [0, 1]
    assert execution.plan_shards(db_session, second, 20) == [0, 1]

    assert shard(db_session, capped, first, 0) == "done"
    # the first audit holds the tenant's one slot: the second's shards are deferred, unsent
    assert shard(db_session, capped, second, 0) == "deferred"
    assert shard(db_session, capped, second, 1) == "deferred"
    assert reload(db_session, second).status == "queued"
    unsent = select(AuditShard.sent_at, AuditShard.attempts).where(AuditShard.audit_id == second)
    assert db_session.execute(unsent).all() == [(None, 0), (None, 0)]
    assert deferred_shards(db_session, capped, tenant) == []  # no slot free: nothing to send

    # between its shards, none leased: the first audit waits, and says so
    assert reload(db_session, first).status == "running"  # it keeps its slot
    assert shown(client, auth, first) == ("queued", WAITING_STAGE)
    assert metric(client, auth, "queued") == 2
    assert metric(client, auth, "running") == 0
    listed = client.get("/v1/audits?status=running", headers=auth).get_json()["items"]
    assert listed == []
    # while a worker holds one of its shards, it is running
    claim = leases.claim_shard(db_session, first, 1, "test-worker", capped.stale_after_s, 1)
    assert isinstance(claim, leases.Claim)
    assert shown(client, auth, first) == ("running", "loading")
    assert metric(client, auth, "running") == 1
    leases.release_shard(db_session, claim.shard_id, "test-worker", None, counted=False)

    assert shard(db_session, capped, first, 1) == "done"
    assert reload(db_session, first).status == "succeeded"
    # the slot is free: the second audit's deferred shards are due, oldest audit first
    assert deferred_shards(db_session, capped, tenant) == [(second, 0), (second, 1)]
    assert shard(db_session, capped, second, 0) == "done"
    assert shard(db_session, capped, second, 1) == "done"
    done = reload(db_session, second)
    assert done.status == "succeeded", done.error
    assert done.progress_done == done.progress_total
    assert metric(client, auth, "succeeded") == 2

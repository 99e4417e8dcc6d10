"""Idempotency-Key edge cases: a key binds the request it first came with to the audit that
answered it (created or reused), whatever happens to that audit later and however two requests
with it race. The same key with another body (`force` included) is a 422, never a new audit."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from infra.config import Settings
from infra.persistence.models import Audit, Tenant
from infra.persistence.session import make_engine
from robustness.config import AuditConfig
from service import audits
from service.app import create_app
from service.idempotency import IdempotencyKey
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.integration.test_api import assert_problem, cnn_bytes, digits_npz


@pytest.fixture
def ids(client: FlaskClient, auth: dict[str, str]) -> tuple[str, str]:
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    return model, dataset


def post(
    client: FlaskClient, auth: dict[str, str], body: dict[str, Any], key: str | None
) -> TestResponse:
    headers = {**auth, "Idempotency-Key": key} if key else auth
    return client.post("/v1/audits", json=body, headers=headers)


def succeed(db: Session, audit_id: str) -> None:
    db.execute(update(Audit).where(Audit.id == audit_id).values(status="succeeded"))
    db.commit()


def test_a_key_answered_by_a_reused_audit_is_bound_to_it(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], db_session: Session
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"epsilons": [0.1]}}
    other = {**body, "config": {"epsilons": [0.2]}}
    # the reused audit already answers another key: one row cannot carry both
    first = post(client, auth, body, "first").get_json()["id"]
    succeed(db_session, first)
    reused = post(client, auth, body, "second")
    assert (reused.status_code, reused.get_json()["id"]) == (200, first)
    assert_problem(post(client, auth, other, "second"), 422, "Idempotency-Key")
    for key in ("first", "second"):
        again = post(client, auth, body, key)
        assert (again.status_code, again.get_json()["id"]) == (200, first)
    # a key first answered by reuse binds the same way when the audit had no key at all
    unkeyed = post(client, auth, other, None).get_json()["id"]
    succeed(db_session, unkeyed)
    assert post(client, auth, other, "third").get_json()["id"] == unkeyed
    assert_problem(post(client, auth, body, "third"), 422, "Idempotency-Key")


def test_the_same_key_with_another_force_is_422(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1]}
    assert post(client, auth, body, "plain").status_code == 202
    assert_problem(post(client, auth, {**body, "force": True}, "plain"), 422, "force")
    forced = post(client, auth, {**body, "force": True}, "forced")
    assert forced.status_code == 202
    assert_problem(post(client, auth, body, "forced"), 422, "force")
    again = post(client, auth, {**body, "force": True}, "forced")
    assert (again.status_code, again.get_json()["id"]) == (200, forced.get_json()["id"])


def test_the_key_of_a_deleted_audit_is_409_and_a_new_key_runs_it_again(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], db_session: Session
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1]}
    audit_id = post(client, auth, body, "nightly").get_json()["id"]
    succeed(db_session, audit_id)
    assert client.delete(f"/v1/audits/{audit_id}", headers=auth).status_code == 204
    assert_problem(post(client, auth, body, "nightly"), 409, "deleted", audit_id, "new key")
    # another body with the key is still the key's misuse, whatever became of its audit
    other = {**body, "config": {"epsilons": [0.2]}}
    assert_problem(post(client, auth, other, "nightly"), 422, "Idempotency-Key")
    fresh = post(client, auth, body, "nightly-2")
    assert fresh.status_code == 202
    assert fresh.get_json()["id"] != audit_id


def test_a_key_from_before_force_was_recorded_replays_with_either_force(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], db_session: Session
) -> None:
    """Migration 0010 copied the keys audits held, without the `force` nobody recorded."""
    body = {"model_id": ids[0], "dataset_id": ids[1]}
    audit_id = post(client, auth, body, None).get_json()["id"]
    tenant_id = db_session.get_one(Audit, audit_id).tenant_id
    db_session.add(IdempotencyKey(tenant_id=tenant_id, key="legacy", audit_id=audit_id, force=None))
    db_session.commit()
    for force in (False, True):
        again = post(client, auth, {**body, "force": force}, "legacy")
        assert (again.status_code, again.get_json()["id"]) == (200, audit_id)


@dataclass
class Committed:
    """A tenant, model and dataset committed for real: a second connection sees them."""

    client: FlaskClient
    auth: dict[str, str]
    tenant_id: str
    ids: tuple[str, str]


@pytest.fixture
def committed(settings: Settings, database_url: str) -> Iterator[Committed]:
    app = create_app({"ROBAUDIT_SETTINGS": settings, "TESTING": True})
    engine = make_engine(database_url)
    name = f"race-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session:
        auth = tenant_headers(session, name)
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == name)).one()
    client = app.test_client()
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    try:
        yield Committed(client, auth, tenant_id, (model, dataset))
    finally:
        with Session(engine) as session:  # everything of the tenant goes with it (cascades)
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))
            session.commit()
        app.extensions["robaudit.db"].engine.dispose()
        engine.dispose()


def _wait_for_a_lock_wait(session: Session) -> None:
    """Until a backend of this database waits on a lock: the racing request's insert."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 5
    while not session.scalar(query):
        assert time.monotonic() < deadline, "the racing request never waited on the key"
        time.sleep(0.02)


# A racing insert waits on the other's row lock on PostgreSQL (SQLite locks the whole file).
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("epsilons", [[0.03], [0.2]], ids=["same-body", "another-body"])
def test_a_racing_request_gets_the_winners_audit_or_422(
    committed: Committed, settings: Settings, epsilons: list[float]
) -> None:
    """The first request has bound the key but not committed when the second looks it up:
    the second's insert waits, then fails; it must still compare the bodies."""
    model_id, dataset_id = committed.ids
    engine = make_engine(settings.database_url)
    winner = Session(engine)
    try:
        first, created = audits.create_audit(
            session=winner, settings=settings, tenant_id=committed.tenant_id,
            model_id=model_id, dataset_id=dataset_id, config=AuditConfig(), force=False,
            idempotency_key="race",
        )  # fmt: skip
        assert created
        body = {"model_id": model_id, "dataset_id": dataset_id, "config": {"epsilons": epsilons}}
        answers: list[TestResponse] = []
        racer = threading.Thread(
            target=lambda: answers.append(post(committed.client, committed.auth, body, "race"))
        )
        racer.start()
        with Session(engine) as observer:
            _wait_for_a_lock_wait(observer)
        winner.commit()
        racer.join(timeout=10)
        assert answers, "the racing request did not finish"
        if epsilons == AuditConfig().epsilons:
            assert (answers[0].status_code, answers[0].get_json()["id"]) == (200, first.id)
        else:
            assert_problem(answers[0], 422, "Idempotency-Key")
    finally:
        winner.close()
        engine.dispose()

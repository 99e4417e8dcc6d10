"""Webhook endpoints through the API, and deliveries against a real receiver on loopback:
signed, retried with backoff, logged, and refused where the URL is hostile.

The whole path through real worker processes and Redis is in tests/e2e/test_end_to_end.py.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra import webhooks
from infra.config import Settings
from infra.persistence.models import Audit, WebhookDelivery, utcnow
from infra.webhook_http import MAX_ANSWER_BYTES
from robaudit.client import verify_signature
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.factories.receiver import receiver
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_budgets import override
from tests.integration.test_history import fake_result, finished_audit

# Nothing here depends on the database's dialect: PostgreSQL, where workers run in production.
pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _ended_audit(client: FlaskClient, auth: dict[str, str], db: Session) -> str:
    model = upload_model(client, auth, cnn_bytes(), name="digits").get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    audit_id = finished_audit(client, auth, db, (model, dataset), 0, fake_result(0.01, 0.001))
    db.execute(update(Audit).where(Audit.id == audit_id).values(finished_at=utcnow()))
    db.commit()
    return audit_id


def _deliver_until_settled(db: Session, settings: Settings, delivery_id: str) -> None:
    """What the task and its countdown messages do, in-process."""
    for _ in range(20):
        outcome = webhooks.deliver(db, delivery_id, settings)
        if outcome.state in ("delivered", "failed"):
            return
        time.sleep(outcome.retry_in_s or 0.05)
    pytest.fail("the delivery never settled")


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ftp://example.com/x", "scheme must be http or https"),
        ("https://user:pw@example.com/x", "may not carry credentials"),
        ("http:///nohost", "has no host"),
        ("https://example.com/" + "a" * 2000, "at most 2000"),
        ("http://example.com:99999/", "does not parse"),
        # non-public literals, refused without DNS (names are checked at each send)
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is not a public address"),
        ("http://[::ffff:10.0.0.7]/", "::ffff:10.0.0.7 is not a public address"),
        ("http://169.254.169.254/latest/", "is not a public address"),
        ("http://api.localhost./x", "api.localhost is this machine"),
    ],
)
def test_hostile_urls_are_refused_with_what_to_fix(
    client: FlaskClient, auth: dict[str, str], url: str, detail: str
) -> None:
    resp = client.post("/v1/webhooks", json={"url": url}, headers=auth)
    assert resp.status_code == 422
    assert detail in resp.get_json()["detail"]


def test_where_private_addresses_are_allowed_a_loopback_endpoint_is_kept(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    override(client, settings, webhook_block_private=False)
    resp = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:8080/"}, headers=auth)
    assert resp.status_code == 201


def test_endpoints_are_per_tenant_and_the_secret_is_shown_once(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    created = client.post("/v1/webhooks", json={"url": "https://ci.example/hook"}, headers=auth)
    assert created.status_code == 201
    body = created.get_json()
    assert body["secret"].startswith("whsec_")
    assert body["events"] == ["audit.succeeded", "audit.failed", "audit.cancelled"]
    listed = client.get("/v1/webhooks", headers=auth).get_json()["items"]
    assert [w["id"] for w in listed] == [body["id"]]
    assert "secret" not in listed[0]
    other = tenant_headers(db_session, "other")
    assert client.get("/v1/webhooks", headers=other).get_json()["items"] == []
    path = f"/v1/webhooks/{body['id']}"
    assert client.delete(path, headers=other).status_code == 404
    assert client.get(f"{path}/deliveries", headers=other).status_code == 404
    assert client.delete(path, headers=auth).status_code == 204
    assert client.get("/v1/webhooks", headers=auth).get_json()["items"] == []
    assert client.get(f"{path}/deliveries", headers=auth).status_code == 404


def test_a_receiver_failing_twice_gets_three_signed_attempts_all_logged(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    settings = settings.with_overrides(webhook_block_private=False, webhook_backoff_s=0.05)
    override(client, settings)  # the API, too, keeps a loopback endpoint
    with receiver([(500, {}, b"down"), (503, {}, b"")]) as hook:
        created = client.post("/v1/webhooks", json={"url": hook.url}, headers=auth).get_json()
        audit_id = _ended_audit(client, auth, db_session)
        [delivery_id] = webhooks.enqueue(db_session, audit_id)
        assert webhooks.enqueue(db_session, audit_id) == []  # once per endpoint and audit
        assert webhooks.catch_up(db_session) == []
        _deliver_until_settled(db_session, settings, delivery_id)
    assert len(hook.requests) == 3
    for got in hook.requests:
        assert got.headers["Robaudit-Delivery"] == delivery_id
        assert got.headers["Robaudit-Event"] == "audit.succeeded"
        assert verify_signature(created["secret"], got.body, got.headers["Robaudit-Signature"])
        assert not verify_signature("whsec_wrong", got.body, got.headers["Robaudit-Signature"])
        assert not verify_signature(
            created["secret"], got.body + b" ", got.headers["Robaudit-Signature"]
        )
    event = json.loads(hook.requests[0].body)
    assert event["audit"]["id"] == audit_id
    assert event["audit"]["verdict"] == fake_result(0.01, 0.001).get("verdict")
    log = client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=auth).get_json()
    [delivery] = log["items"]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert delivery["attempts"][0]["error"] == "HTTP 500: down"
    assert delivery["attempts"][2]["error"] is None
    assert (delivery["audit_id"], delivery["event"]) == (audit_id, "audit.succeeded")

    # A queued audit cancelled through the API: its delivery is written by the API at once.
    audit = db_session.get(Audit, audit_id)
    assert audit is not None
    body = {"model_id": audit.model_id, "dataset_id": audit.dataset_id, "force": True}
    queued = client.post("/v1/audits", json=body, headers=auth).get_json()["id"]
    assert client.post(f"/v1/audits/{queued}/cancel", headers=auth).status_code == 200
    log = client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=auth).get_json()
    newest = log["items"][0]
    assert (newest["audit_id"], newest["event"]) == (queued, "audit.cancelled")
    assert (newest["status"], newest["attempts"]) == ("pending", [])


def test_redirects_big_answers_and_loopback_are_not_followed(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    open_settings = settings.with_overrides(
        webhook_block_private=False, webhook_backoff_s=0.05, webhook_max_attempts=2
    )
    huge = b"x" * (4 * MAX_ANSWER_BYTES)
    answers = [(302, {"Location": "http://169.254.169.254/"}, b""), (500, {}, huge)]
    override(client, open_settings)  # the API, too, keeps a loopback endpoint
    with receiver(answers) as hook:
        assert client.post("/v1/webhooks", json={"url": hook.url}, headers=auth).status_code == 201
        _ended_audit(client, auth, db_session)
        # Ended where no worker enqueued it (e.g. cancelled through the API): the sweeper's
        # catch-up writes the delivery, and it is due for sending.
        [delivery_id] = webhooks.catch_up(db_session)
        assert webhooks.due(db_session, settings, lateness=timedelta(0)) == [delivery_id]
        _deliver_until_settled(db_session, open_settings, delivery_id)
        row = db_session.get(WebhookDelivery, delivery_id)
        assert row is not None
        db_session.refresh(row)
        assert row.status == "failed"  # two attempts, the most allowed
        first, second = row.attempts_log
        assert "redirect to 'http://169.254.169.254/' not followed" in first["error"]
        assert len(second["error"]) < 300  # a snippet of the answer, not all of it
        assert len(hook.requests) == 2  # the redirect's target was never asked

        # The default: a URL that resolves to loopback is refused before any connection.
        row.status, row.attempts_log, row.attempts = "pending", [], 0
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
        db_session.commit()
        assert webhooks.deliver(db_session, delivery_id, settings).state == "pending"
        db_session.refresh(row)
        assert webhooks.due(db_session, settings, lateness=timedelta(0)) == []  # backing off
        refusal = row.attempts_log[0]["error"]
        assert "not a public address (ROBAUDIT_WEBHOOK_BLOCK_PRIVATE)" in refusal
        assert len(hook.requests) == 2


def test_an_overdue_delivery_is_re_sent_once_per_grace_period_not_every_sweep(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    assert client.post("/v1/webhooks", json={"url": "https://ci.example/h"}, headers=auth)
    [delivery_id] = webhooks.enqueue(db_session, _ended_audit(client, auth, db_session))
    grace = timedelta(minutes=1)
    db_session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - 2 * grace))
    db_session.commit()
    assert webhooks.take_overdue(db_session, settings, lateness=grace) == [delivery_id]
    # its message now waits in the queue: the next sweeps leave it alone
    assert webhooks.take_overdue(db_session, settings, lateness=grace) == []
    assert webhooks.due(db_session, settings, lateness=timedelta(0)) == [delivery_id]  # sendable
    db_session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow() - 2 * grace))
    db_session.commit()
    assert webhooks.take_overdue(db_session, settings, lateness=grace) == [delivery_id]  # lost

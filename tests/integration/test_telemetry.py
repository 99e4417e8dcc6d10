"""/metrics from prometheus_client (read at scrape time, one registry per app) and JSON logs
that carry the request id, the audit id and the shard."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta

import pytest
import structlog
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditShard, WebhookDelivery, utcnow
from tests import services
from tests.factories.api import upload_dataset, upload_model
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_budgets import app_client, override


def scrape(client: FlaskClient, auth: dict[str, str]) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, by name and sorted labels, as Prometheus would parse it."""
    resp = client.get("/metrics", headers=auth)
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.get_data(as_text=True))
        for s in family.samples
    }


def json_lines(err: str) -> list[dict]:
    """stderr as the log shipper reads it: every line must be a JSON object."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def latency_count(samples: dict, endpoint: str, status: str = "200") -> float:
    labels = (("endpoint", endpoint), ("method", "GET"), ("status", status))
    return samples.get(("robaudit_request_duration_seconds_count", labels), 0)


def test_metrics_read_the_database_and_the_broker_at_scrape_time(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    body = {"model_id": model, "dataset_id": dataset, "config": {"max_samples": 4}}
    audit_id = client.post("/v1/audits", json=body, headers=auth).get_json()["id"]
    db_session.execute(update(Audit).where(Audit.id == audit_id).values(status="running"))
    now = utcnow()
    db_session.add_all(
        [
            AuditShard(audit_id=audit_id, position=0, start=0, stop=40, status="done",
                       finished_at=now - timedelta(seconds=30)),
            AuditShard(audit_id=audit_id, position=1, start=40, stop=60, status="done",
                       finished_at=now),
            # finished before the window: not part of the current rate
            AuditShard(audit_id=audit_id, position=2, start=60, stop=90, status="done",
                       finished_at=now - timedelta(minutes=10)),
            AuditShard(audit_id=audit_id, position=3, start=90, stop=95),  # waits: compute
            # leased by a live worker: the audit shows `running` only while one shard is
            AuditShard(audit_id=audit_id, position=4, start=95, stop=99, status="running",
                       worker="w1", heartbeat_at=now),
        ]
    )  # fmt: skip
    db_session.commit()
    assert client.get("/v1/models/nope", headers=auth).status_code == 404

    samples = scrape(client, auth)
    assert samples[("robaudit_audits", (("status", "running"),))] == 1
    assert samples[("robaudit_models", ())] == 1
    assert samples[("robaudit_worker_throughput_samples_per_second", ())] == 60 / 300
    # the filesystem broker answers: the upload's inspection and the audit wait in control
    control = ("robaudit_queue_depth", (("queue", "control"), ("source", "broker")))
    assert samples[control] == 2
    assert latency_count(samples, "/v1/models/<model_id>", "404") == 1
    assert latency_count(samples, "/v1/audits", "202") == 0  # a POST: method is part of it
    assert samples[("robaudit_request_duration_seconds_count", (
        ("endpoint", "/v1/audits"), ("method", "POST"), ("status", "202")))] == 1  # fmt: skip

    # Redis down (nothing listens on the port): the database stands in for the broker
    override(client, settings, redis_url=f"redis://127.0.0.1:{services.free_port()}/0")
    samples = scrape(client, auth)
    assert samples[("robaudit_queue_depth", (("queue", "compute"), ("source", "database")))] == 1
    assert samples[("robaudit_queue_depth", (("queue", "control"), ("source", "database")))] == 0
    assert latency_count(samples, "/metrics") == 1  # the first scrape, timed


def test_a_deleted_audit_leaves_the_counts_and_an_audit_of_a_deleted_model_stays(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    ids = [
        client.post(
            "/v1/audits",
            json={"model_id": model, "dataset_id": dataset, "config": {"max_samples": n}},
            headers=auth,
        ).get_json()["id"]
        for n in (4, 5)
    ]
    db_session.execute(update(Audit).where(Audit.id.in_(ids)).values(status="succeeded"))
    db_session.commit()
    succeeded = ("robaudit_audits", (("status", "succeeded"),))
    assert scrape(client, auth)[succeeded] == 2

    assert client.delete(f"/v1/audits/{ids[0]}", headers=auth).status_code == 204
    assert client.delete(f"/v1/models/{model}", headers=auth).status_code == 204
    samples = scrape(client, auth)
    assert samples[succeeded] == 1  # the one GET /v1/audits still lists
    assert samples[("robaudit_models", ())] == 0


def test_each_app_has_its_own_registry(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    with app_client(settings, db_session) as other:
        assert other.get("/v1/models", headers=auth).status_code == 200
        assert other.get("/v1/models", headers=auth).status_code == 200
        assert latency_count(scrape(other, auth), "/v1/models") == 2
    assert latency_count(scrape(client, auth), "/v1/models") == 0


def test_broker_queue_depth_on_redis(settings: Settings, db_session: Session) -> None:
    from tests.factories.api import tenant_headers

    prefix = f"robaudit-t-{uuid.uuid4().hex[:8]}:"
    on_redis = settings.with_overrides(redis_url=services.require_redis(), redis_prefix=prefix)
    with app_client(on_redis, db_session) as client:
        auth = tenant_headers(db_session, "acme")
        client.application.extensions["robaudit.celery"].send_task("robaudit.run_shard", args=[])
        samples = scrape(client, auth)
        import redis

        r = redis.Redis.from_url(on_redis.redis_url or "")
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)
    assert samples[("robaudit_queue_depth", (("queue", "compute"), ("source", "broker")))] == 1
    assert samples[("robaudit_queue_depth", (("queue", "control"), ("source", "broker")))] == 0


def test_web_log_lines_are_json_with_the_request_id(
    client: FlaskClient, auth: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    resp = client.get("/v1/models", headers={**auth, "X-Request-ID": "trace-42"})
    assert resp.headers["X-Request-ID"] == "trace-42"
    logging.getLogger("sqlalchemy.demo").warning("a library's own line, %s", "formatted")
    forged = client.get("/healthz", headers={"X-Request-ID": 'x", "admin": true'})
    lines = json_lines(capsys.readouterr().err)
    request = next(x for x in lines if x["event"] == "request" and x["path"] == "/v1/models")
    assert request["request_id"] == "trace-42"
    assert request["status"] == 200
    library = next(x for x in lines if x["logger"] == "sqlalchemy.demo")
    assert library["event"] == "a library's own line, formatted"
    assert library["request_id"] == "trace-42"  # bound for the rest of that request's work
    fresh = forged.headers["X-Request-ID"]
    assert len(fresh) == 32
    probe = next(x for x in lines if x["event"] == "request" and x["path"] == "/healthz")
    assert probe["request_id"] == fresh  # the forged id reached neither the log nor the reply
    assert not any("admin" in x for x in lines)


def test_worker_log_lines_are_json_with_the_audit_and_shard(
    settings: Settings, database_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A real task through Celery's tracer: the worker's start-up signal sets up the logs,
    and the task's arguments name the audit and the shard on every line, Celery's own too."""
    from celery.signals import setup_logging

    from infra.persistence.session import make_engine, make_session_factory
    from worker.tasks import run_shard

    engine = make_engine(database_url)
    monkeypatch.setattr(run_shard, "settings", settings, raising=False)
    monkeypatch.setattr(run_shard, "_session_factory", make_session_factory(engine), raising=False)
    setup_logging.send(sender=None, loglevel=logging.INFO, logfile=None, format="", colorize=False)
    capsys.readouterr()
    audit_id = str(uuid.uuid4())
    try:
        assert run_shard.apply(args=[audit_id, 3]).get() == "skipped"  # no such audit
    finally:
        engine.dispose()
        structlog.contextvars.clear_contextvars()
    lines = json_lines(capsys.readouterr().err)
    assert {x["logger"] for x in lines} >= {"worker.tasks", "celery.app.trace"}
    for line in lines:
        assert (line["audit_id"], line["shard"]) == (audit_id, 3)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # no SQL of its own
def test_a_webhook_deliverys_log_lines_name_it_and_its_audit(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The delivery task through Celery's tracer: its lines carry the delivery's id and the
    audit it reports on, so one grep for an audit finds its webhooks too."""
    from celery.signals import setup_logging

    from infra import webhooks
    from tests.integration.test_webhooks import _ended_audit
    from worker import tasks  # noqa: F401  (its task_prerun signal binds the task's ids)
    from worker.webhooks import deliver_webhook

    client.post("/v1/webhooks", json={"url": "https://hooks.example/x"}, headers=auth)
    audit_id = _ended_audit(client, auth, db_session)
    [delivery_id] = webhooks.enqueue(db_session, audit_id)
    # not due yet (as a second attempt's message can be): the task reads the row, skips it
    db_session.execute(
        update(WebhookDelivery).values(next_attempt_at=utcnow() + timedelta(hours=1))
    )
    db_session.commit()
    monkeypatch.setattr(deliver_webhook, "settings", settings, raising=False)
    # the test's session: its rows live in a transaction other connections do not see
    monkeypatch.setattr(deliver_webhook, "_session_factory", lambda: db_session, raising=False)
    setup_logging.send(sender=None, loglevel=logging.INFO, logfile=None, format="", colorize=False)
    capsys.readouterr()
    try:
        assert deliver_webhook.apply(args=[delivery_id]).get() == "skipped"
    finally:
        structlog.contextvars.clear_contextvars()
    lines = json_lines(capsys.readouterr().err)
    assert all(line.get("delivery_id") == delivery_id for line in lines), lines
    # "task started" comes before the row is read; every line after it names the audit
    assert [x.get("audit_id") for x in lines][1:] == [audit_id] * (len(lines) - 1), lines
    assert any(x["logger"] == "worker.webhooks" for x in lines)

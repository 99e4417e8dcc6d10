"""Operator budgets (issue 10): estimate seconds, per-audit caps, tenant quotas, ε against the
input range, rate limits in memory and on a real Redis, and truthful /metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditShard
from service.app import create_app
from tests import services
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.integration.test_api import assert_problem, cnn_bytes, digits_npz

SMALL = {"max_samples": 4, "landscape": {"samples": 0}, "steps": 2}


@contextmanager
def app_client(settings: Settings, db_session: Session) -> Iterator[FlaskClient]:
    """A separate app, for settings read when the app is built (the rate limiter)."""
    app = create_app({"ROBAUDIT_SETTINGS": settings, "TESTING": True})
    state = app.extensions["robaudit.db"]
    state.session_factory = lambda: db_session
    try:
        yield app.test_client()
    finally:
        state.engine.dispose()


def override(client: FlaskClient, settings: Settings, **values: object) -> None:
    client.application.config["ROBAUDIT_SETTINGS"] = settings.with_overrides(**values)


@pytest.fixture
def ids(client: FlaskClient, auth: dict[str, str]) -> tuple[str, str]:
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    return model, dataset


def submit(client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], **config: object):  # type: ignore[no-untyped-def]
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": config, "force": True}
    return client.post("/v1/audits", json=body, headers=auth)


# --- the estimate's seconds ---------------------------------------------------


def test_estimate_seconds_default_then_measured(
    client: FlaskClient,
    auth: dict[str, str],
    ids: tuple[str, str],
    settings: Settings,
    db_session: Session,
) -> None:
    first = submit(client, auth, ids, **SMALL).get_json()
    est = first["estimate"]
    passes = est["forward_passes"] + est["backward_passes"]
    assert est["basis"] == "default"
    assert est["passes_per_second"] == settings.default_passes_per_s
    assert est["expected_seconds"] == pytest.approx(
        passes / settings.default_passes_per_s, abs=1e-3
    )
    # the model's succeeded audit spent 0.5 s of engine time: its throughput is measured
    timing = {"timing": {"stages": {"divergence": 0.3, "pgd": 0.2}}}
    db_session.execute(
        update(Audit).where(Audit.id == first["id"]).values(status="succeeded", result=timing)
    )
    db_session.commit()
    second = submit(client, auth, ids, **{**SMALL, "steps": 4}).get_json()["estimate"]
    assert second["basis"] == "measured"
    assert second["passes_per_second"] == pytest.approx(passes / 0.5, rel=1e-3)
    passes2 = second["forward_passes"] + second["backward_passes"]
    assert second["expected_seconds"] == pytest.approx(0.5 * passes2 / passes, abs=1e-3)


# --- per-audit caps -----------------------------------------------------------


@pytest.mark.parametrize("eps", [1e300, 3.1e307, 1.5])
def test_epsilon_beyond_the_input_range_is_422(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], eps: float
) -> None:
    resp = submit(client, auth, ids, epsilons=[0.1, eps])
    assert_problem(resp, 422, "epsilon", "input range [0, 1]", "epsilons ≤ 1")
    assert resp.get_json()["limit"] == {"name": "epsilon", "max": 1.0}


def test_l2_epsilon_is_bounded_by_the_box_diameter(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    # 64 input values in [0, 1]: the L2 diameter is √64 = 8
    assert submit(client, auth, ids, norm="l2", epsilons=[7.9], **SMALL).status_code == 202
    assert_problem(submit(client, auth, ids, norm="l2", epsilons=[8.5]), 422, "√d", "≤ 8")
    assert_problem(submit(client, auth, ids, step_size=1e300), 422, "step_size", "≤ 1")


def test_audit_over_the_pass_cap_is_422_naming_the_limit(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], settings: Settings
) -> None:
    override(client, settings, max_audit_passes=10_000)
    resp = submit(client, auth, ids, steps=796, restarts=16)
    assert_problem(resp, 422, "too large", "10,000 per audit", "steps", "restarts", "epsilons")
    body = resp.get_json()
    assert body["limit"] == {"name": "max_audit_passes", "max": 10_000}
    assert body["estimate"]["passes"] > 10_000
    assert submit(client, auth, ids, **SMALL).status_code == 202


def test_audit_over_the_seconds_cap_is_422(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], settings: Settings
) -> None:
    override(client, settings, max_audit_seconds=60, default_passes_per_s=10.0)
    resp = submit(client, auth, ids)
    assert_problem(resp, 422, "too long", "default throughput", "60 s per audit", "max_samples")
    assert resp.get_json()["estimate"]["expected_seconds"] > 60


# --- per-tenant quotas ---------------------------------------------------------


def test_queued_and_running_caps_are_429_with_retry_after(
    client: FlaskClient,
    auth: dict[str, str],
    ids: tuple[str, str],
    settings: Settings,
    db_session: Session,
) -> None:
    override(client, settings, max_queued_audits=2, max_running_audits=1)
    made = [submit(client, auth, ids, seed=s, **SMALL).get_json()["id"] for s in range(2)]
    full = submit(client, auth, ids, seed=9, **SMALL)
    assert_problem(full, 429, "0 running (limit 1)", "2 queued (limit 2)", "cancel")
    assert 5 <= int(full.headers["Retry-After"]) <= 3600
    assert full.get_json()["limit"] == {"name": "max_queued_audits", "max": 2}
    # one starts: a queue slot frees; the running one bounds how long to wait
    db_session.execute(update(Audit).where(Audit.id == made[0]).values(status="running"))
    db_session.commit()
    assert submit(client, auth, ids, seed=9, **SMALL).status_code == 202
    again = submit(client, auth, ids, seed=10, **SMALL)
    assert_problem(again, 429, "1 running (limit 1)", "2 queued")
    assert int(again.headers["Retry-After"]) >= 5
    # another tenant has its own quota
    other = tenant_headers(db_session, "globex")
    model = upload_model(client, other, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, other, digits_npz()).get_json()["id"]
    assert submit(client, other, (model, dataset), **SMALL).status_code == 202
    # a cancelled audit frees its slot
    client.post(f"/v1/audits/{made[1]}/cancel", headers=auth)
    assert submit(client, auth, ids, seed=10, **SMALL).status_code == 202


def test_stored_bytes_quota_is_413(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    model = upload_model(client, auth, cnn_bytes())
    used = model.get_json()["size_bytes"]
    override(client, settings, max_tenant_stored_bytes=used + 1000)
    resp = upload_dataset(client, auth, digits_npz(n=64))
    assert_problem(resp, 413, "storage quota", f"{used + 1000:,}", "delete")
    assert resp.get_json()["limit"]["used"] == used
    # the same bytes again are the existing model, whatever the quota
    override(client, settings, max_tenant_stored_bytes=used)
    assert upload_model(client, auth, cnn_bytes()).status_code == 200
    override(client, settings, max_tenant_stored_bytes=used + 1000)
    # deleting the model frees its share
    assert client.delete(f"/v1/models/{model.get_json()['id']}", headers=auth).status_code == 204
    assert upload_dataset(client, auth, digits_npz(n=64)).status_code == 201


# --- rate limits ----------------------------------------------------------------


def test_rate_limit_per_key_and_bad_keys_per_address(
    settings: Settings, db_session: Session
) -> None:
    limited = settings.with_overrides(rate_limit="5 per minute", bad_key_rate_limit="3 per minute")
    with app_client(limited, db_session) as client:
        auth = tenant_headers(db_session, "acme")
        codes = [client.get("/v1/models", headers=auth).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        over = client.get("/v1/models", headers=auth)
        assert_problem(over, 429, "rate limit exceeded", "5 per 1 minute")
        assert 1 <= int(over.headers["Retry-After"]) <= 61
        assert over.get_json()["limit"]["name"] == "rate_limit"
        # another key has its own bucket; health probes are not limited
        other = tenant_headers(db_session, "globex")
        assert client.get("/v1/models", headers=other).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(8))
        # each guess is a new key, yet the address is counted
        guesses = [
            client.get("/v1/models", headers={"Authorization": f"Bearer ra_{i}"}).status_code
            for i in range(4)
        ]
        assert guesses == [401, 401, 401, 429]
        bad = client.get("/v1/models", headers={"Authorization": "Bearer ra_next"})
        assert_problem(bad, 429, "unknown or revoked API keys")
        assert int(bad.headers["Retry-After"]) >= 1
        assert client.get("/v1/models", headers=other).status_code == 200


def test_rate_limit_on_redis_stores_only_hashes_under_the_prefix(
    settings: Settings, db_session: Session
) -> None:
    url = services.require_redis()
    prefix = f"robaudit-t-{uuid.uuid4().hex[:8]}:"
    limited = settings.with_overrides(redis_url=url, redis_prefix=prefix, rate_limit="3 per minute")
    r = redis.Redis.from_url(url)
    try:
        with app_client(limited, db_session) as client:
            auth = tenant_headers(db_session, "acme")
            codes = [client.get("/v1/models", headers=auth).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            keys = [k.decode() for k in r.scan_iter(f"{prefix}*")]
            assert keys, "the limiter wrote nothing under the prefix"
            secret = auth["Authorization"].split()[1]
            assert not any(secret in k for k in keys)
        # a second app (another API process) shares the count
        with app_client(limited, db_session) as client:
            assert_problem(client.get("/v1/models", headers=auth), 429, "rate limit")
    finally:
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)


# --- /metrics ------------------------------------------------------------------


def test_metrics_count_queued_and_running_and_skip_deleted(
    client: FlaskClient,
    auth: dict[str, str],
    ids: tuple[str, str],
    db_session: Session,
) -> None:
    made = [submit(client, auth, ids, seed=s, **SMALL).get_json()["id"] for s in range(3)]
    # two started audits: one whose shard is leased, one none of whose shards is (waiting)
    db_session.execute(update(Audit).where(Audit.id.in_(made[:2])).values(status="running"))
    for audit_id, status in ((made[0], "running"), (made[1], "pending")):
        shard = AuditShard(audit_id=audit_id, position=0, start=0, stop=4, status=status, done=2)
        db_session.add(shard)
    db_session.commit()
    extra = upload_model(client, auth, cnn_bytes(seed=1)).get_json()["id"]
    assert client.delete(f"/v1/models/{extra}", headers=auth).status_code == 204
    text = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'robaudit_audits{status="queued"} 2' in text
    assert 'robaudit_audits{status="running"} 1' in text
    assert "robaudit_models 1.0\n" in text
    assert "robaudit_datasets 1.0\n" in text
    other = client.get("/metrics", headers=tenant_headers(db_session, "globex"))
    assert 'robaudit_audits{status="queued"} 0' in other.get_data(as_text=True)

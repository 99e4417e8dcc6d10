"""Reviewers' and pipelines' endpoints: delete without losing history, compare, report, metrics."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from infra.persistence.models import Audit
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.integration.test_api import assert_problem, cnn_bytes, digits_npz


def fake_result(mean: float, half_width: float) -> dict:
    eps = {
        "epsilon": 0.03,
        "divergence": {
            "mean": mean,
            "median": mean,
            "p90": mean,
            "max": mean,
            "ci95": [mean - half_width, mean + half_width],
        },
        "clean_accuracy": 0.9,
        "fgsm_accuracy": 0.5,
        "pgd_accuracy": 0.4,
    }
    # What every stored result has held since the first release; later keys are optional.
    diagnostics = {
        "gradient_masking_suspected": False,
        "zero_gradient_fraction": 0.0,
        "nonfinite_gradient_fraction": 0.0,
        "random_search_wins": 0,
        "parity_max_abs_diff": None,
    }
    return {
        "per_epsilon": [eps],
        "samples": 16,
        "backend": "torch",
        "diagnostics": diagnostics,
        "landscapes": [],
        "manifest": {},
    }


@pytest.fixture
def ids(client: FlaskClient, auth: dict[str, str]) -> tuple[str, str]:
    model = upload_model(client, auth, cnn_bytes(), name="digits").get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    return model, dataset


def finished_audit(
    client: FlaskClient,
    auth: dict[str, str],
    db: Session,
    ids: tuple[str, str],
    seed: int,
    result: dict,
) -> str:
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": seed}}
    audit_id = client.post("/v1/audits", json=body, headers=auth).get_json()["id"]
    db.execute(update(Audit).where(Audit.id == audit_id).values(status="succeeded", result=result))
    db.commit()
    return str(audit_id)


def test_delete_hides_but_keeps_history(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    audit_id = finished_audit(client, auth, db_session, ids, 0, fake_result(0.01, 0.001))
    assert client.delete(f"/v1/models/{ids[0]}", headers=auth).status_code == 204
    assert_problem(client.get(f"/v1/models/{ids[0]}", headers=auth), 404)
    assert client.get("/v1/models", headers=auth).get_json()["items"] == []
    body = {"model_id": ids[0], "dataset_id": ids[1]}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 404, "no model")
    report = client.get(f"/v1/audits/{audit_id}/report.json", headers=auth).get_json()
    assert report["model"]["id"] == ids[0]  # the audit still knows what it audited
    again = upload_model(client, auth, cnn_bytes(), name="digits")  # the same bytes and metadata
    assert again.status_code == 201
    assert again.get_json()["id"] == ids[0]
    assert client.delete(f"/v1/datasets/{ids[1]}", headers=auth).status_code == 204
    assert_problem(client.delete(f"/v1/datasets/{ids[1]}", headers=auth), 404)


def test_compare_gives_a_verdict_against_the_first(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    worse = finished_audit(client, auth, db_session, ids, 1, fake_result(0.015, 0.0005))
    noisy = finished_audit(client, auth, db_session, ids, 2, fake_result(0.015, 0.01))
    out = client.get(f"/v1/compare?audits={base},{worse},{noisy}", headers=auth).get_json()
    assert out["baseline"] == base
    assert [i["id"] for i in out["items"]] == [base, worse, noisy]
    assert [v["verdict"] for v in out["verdicts"]] == ["regressed", "same"]
    assert out["verdicts"][0]["per_epsilon"][0]["relative_change"] == pytest.approx(0.5)
    lenient = client.get(
        f"/v1/compare?audits={base},{worse}&max_increase=0.6", headers=auth
    ).get_json()
    assert lenient["verdicts"][0]["verdict"] == "worse"


def test_compare_refuses_what_it_cannot_judge(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.01, 0.001))
    queued = client.post(
        "/v1/audits",
        json={"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": 9}},
        headers=auth,
    ).get_json()["id"]
    assert_problem(client.get(f"/v1/compare?audits={base},{queued}", headers=auth), 409, "queued")
    assert_problem(client.get(f"/v1/compare?audits={base}", headers=auth), 400, "2 to 20")
    other = tenant_headers(db_session, "globex")
    assert_problem(client.get(f"/v1/compare?audits={base},{base}", headers=other), 404)


def test_report_html_and_metrics(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    audit_id = finished_audit(client, auth, db_session, ids, 0, fake_result(0.0123, 0.001))
    page = client.get(f"/v1/audits/{audit_id}/report", headers=auth)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "Robustness audit of digits" in text
    assert "0.01230" in text
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'robaudit_audits{status="succeeded"} 1' in metrics
    assert "robaudit_models 1" in metrics
    assert client.get("/metrics").status_code == 401


def test_losing_an_upload_race_answers_the_winner(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    """Two uploads of the same bytes at once: the unique constraint picks one, no 500."""
    from infra.persistence.models import Dataset
    from service.catalog import _insert_or_existing

    winner = db_session.get(Dataset, ids[1])
    assert winner is not None
    loser = Dataset(
        tenant_id=winner.tenant_id,
        name="same bytes",
        sha256=winner.sha256,
        size_bytes=winner.size_bytes,
        n=winner.n,
        shape=winner.shape,
        dtype=winner.dtype,
        num_classes=winner.num_classes,
        value_range=winner.value_range,
    )
    row, created = _insert_or_existing(db_session, loser)
    assert (row.id, created) == (winner.id, False)
    db_session.commit()  # the session is still usable: the failed insert was a savepoint


def test_sweeper_recovers_abandoned_shards_and_unsent_work(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str], settings
) -> None:
    """A worker died mid-shard (no heartbeat for an hour), a cancelled audit's only worker
    died too, another audit's send was lost, and a model's inspection was never sent."""
    from datetime import timedelta

    from infra.dispatch import sweep
    from infra.persistence.models import AuditShard, Model, utcnow
    from infra.queue import make_celery
    from worker.execution import plan_shards
    from worker.leases import claim_shard

    def audit(seed: int) -> str:
        body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": seed}}
        return str(client.post("/v1/audits", json=body, headers=auth).get_json()["id"])

    hour_ago = utcnow() - timedelta(hours=1)
    abandoned, abandoned_cancel, unsent, fresh = audit(0), audit(1), audit(2), audit(3)
    for leased in (abandoned, abandoned_cancel):
        [position] = plan_shards(db_session, leased, 512)
        assert claim_shard(db_session, leased, position, "a-worker-that-dies", 60) is not None
    db_session.execute(
        update(AuditShard)
        .where(AuditShard.audit_id.in_([abandoned, abandoned_cancel]))
        .values(heartbeat_at=hour_ago)
    )
    db_session.execute(
        update(Audit)
        .where(Audit.id == abandoned_cancel)
        .values(cancel_requested=True, status="cancelling")
    )
    db_session.execute(
        update(Audit).where(Audit.id == unsent).values(dispatched_at=None, created_at=hour_ago)
    )
    db_session.execute(update(Model).where(Model.id == ids[0]).values(created_at=hour_ago))
    db_session.commit()
    celery = make_celery(settings)
    report = sweep(celery, db_session, settings)
    assert report["taken_over"] == ["2"]
    assert set(report["audits"]) == {unsent}  # `fresh` was sent moments ago: left alone
    assert report["shards"] == [f"{abandoned}/0"]  # taken over and sent again
    assert report["inspections"] == [ids[0]]
    states = {a: db_session.get(Audit, a) for a in (abandoned, abandoned_cancel, unsent, fresh)}
    for row in states.values():
        db_session.refresh(row)
    assert states[abandoned].status == "running"
    assert states[abandoned_cancel].status == "cancelled"
    shard = db_session.scalars(select(AuditShard).where(AuditShard.audit_id == abandoned)).one()
    assert (shard.status, shard.attempts) == ("pending", 1)
    assert shard.last_error is not None
    assert "stopped heartbeating" in shard.last_error
    again = sweep(celery, db_session, settings)  # claimed: nothing is sent twice
    assert again == {"taken_over": [], "audits": [], "shards": [], "inspections": []}

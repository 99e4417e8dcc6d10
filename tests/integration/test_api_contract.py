"""Issue 9's API contract: summaries in lists, audit delete, lenient parsing where users
expect it, model versions that share bytes, Idempotency-Key reuse, 405 with Allow."""

from __future__ import annotations

import json

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.factories.api import upload_model
from tests.integration.test_api import assert_problem, cnn_bytes
from tests.integration.test_history import fake_result, finished_audit, ids  # noqa: F401


def full_result(mean: float) -> dict:
    """A stored result with what lists must leave out: per-sample values and a landscape."""
    result = fake_result(mean, mean / 10)
    result["per_epsilon"][0]["per_sample"] = [mean] * 16
    grid = [[0.5] * 5 for _ in range(5)]
    result["landscapes"] = [
        {
            "sample_index": 0,
            "label": 3,
            "epsilon": 0.03,
            "norm": "linf",
            "coords": [-1.0, -0.5, 0.0, 0.5, 1.0],
            "loss": grid,
            "margin": grid,
            "misclassified_fraction_inside_eps": 0.0,
            "crosses_boundary_within_eps": False,
            "decision_boundary": [],
        }
    ]
    return result


def test_lists_summarise_and_delete_hides_an_audit(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    ids: tuple[str, str],  # noqa: F811
) -> None:
    old = finished_audit(client, auth, db_session, ids, 1, full_result(0.010))
    new = finished_audit(client, auth, db_session, ids, 2, full_result(0.011))

    page = client.get("/v1/audits?limit=50", headers=auth)
    items = {i["id"]: i for i in page.get_json()["items"]}
    summary = items[new]["result"]
    assert summary["per_epsilon"][0]["divergence"]["mean"] == 0.011
    assert summary["landscapes"] == 1
    assert summary["verdict"] == "measured"
    assert "per_sample" not in page.get_data(as_text=True)
    assert "margin" not in page.get_data(as_text=True)
    whole = client.get(f"/v1/audits/{new}", headers=auth).get_json()["result"]
    assert whole["per_epsilon"][0]["per_sample"] == [0.011] * 16
    assert whole["landscapes"][0]["margin"][0] == [0.5] * 5

    # the gate's 10% and the API's 0.1 are one threshold
    pct = client.get(f"/v1/compare?audits={old},{new}&max_increase=10%25", headers=auth)
    frac = client.get(f"/v1/compare?audits={old},{new}&max_increase=0.1", headers=auth)
    assert pct.status_code == 200, pct.get_data(as_text=True)
    assert pct.get_json() == frac.get_json()
    assert pct.get_json()["max_increase"] == 0.1

    # a time without a zone is UTC: the same page as with Z
    naive = client.get("/v1/audits?created_after=2000-01-01T00:00:00", headers=auth)
    assert naive.status_code == 200
    assert len(naive.get_json()["items"]) == 2
    later = client.get("/v1/audits?created_after=2999-01-01T00:00:00", headers=auth)
    assert later.get_json()["items"] == []
    # a number is no date-time, though pydantic would read it as Unix seconds
    number = client.get("/v1/audits?created_after=1700000000", headers=auth)
    assert_problem(number, 422, "ISO 8601")

    queued = client.post("/v1/audits", json={"model_id": ids[0], "dataset_id": ids[1]},
                         headers=auth).get_json()["id"]  # fmt: skip
    assert_problem(client.delete(f"/v1/audits/{queued}", headers=auth), 409, "cancel it first")
    assert client.delete(f"/v1/audits/{old}", headers=auth).status_code == 204
    assert_problem(client.get(f"/v1/audits/{old}", headers=auth), 404)
    assert_problem(client.get(f"/v1/audits/{old}/report.json", headers=auth), 404)
    assert_problem(client.delete(f"/v1/audits/{old}", headers=auth), 404)
    listed = [i["id"] for i in client.get("/v1/audits", headers=auth).get_json()["items"]]
    assert old not in listed
    assert new in listed
    assert_problem(client.get(f"/v1/compare?audits={old},{new}", headers=auth), 404)
    # a deleted audit is never the identical succeeded one a new request reuses
    again = {"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": 1}}
    assert client.post("/v1/audits", json=again, headers=auth).status_code == 202

    # the worker writes the summary with the result; the list reads that column
    from infra.persistence.models import Audit, AuditStatus
    from worker.leases import finish

    done = client.post("/v1/audits", json={**again, "config": {"seed": 3}}, headers=auth)
    done_id = done.get_json()["id"]
    assert finish(db_session, done_id, AuditStatus.SUCCEEDED, result=full_result(0.02),
                  backend="torch")  # fmt: skip
    row = db_session.get(Audit, done_id)
    assert row is not None
    assert row.summary is not None
    assert row.summary["per_epsilon"][0]["divergence"]["mean"] == 0.02
    listed_items = client.get("/v1/audits", headers=auth).get_json()["items"]
    assert next(i for i in listed_items if i["id"] == done_id)["result"] == row.summary

    # an Idempotency-Key reused with another body says so
    keyed = {**auth, "Idempotency-Key": "release-7"}
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": 5}}
    assert client.post("/v1/audits", json=body, headers=keyed).status_code == 202
    assert client.post("/v1/audits", json=body, headers=keyed).status_code == 200
    other = {**body, "config": {"seed": 6}}
    assert_problem(client.post("/v1/audits", json=other, headers=keyed), 422, "Idempotency-Key")

    assert_problem(client.get(f"/v1/compare?audits={old},{new}&max_increase=-5%25",
                              headers=auth), 422, "percentage")  # fmt: skip


def test_same_bytes_with_new_metadata_are_a_new_version(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    first = upload_model(client, auth, cnn_bytes(), name="digits", version="1")
    assert first.status_code == 201
    same = upload_model(client, auth, cnn_bytes(), name="digits", version="1")
    assert (same.status_code, same.get_json()["id"]) == (200, first.get_json()["id"])
    seen = {first.get_json()["id"]}
    for fields in (
        {"name": "digits", "version": "2"},
        {"name": "digits", "version": "1", "input_range": "0,255"},
        {"name": "digits", "version": "1", "class_names": json.dumps(list("abcdefghij"))},
    ):
        resp = upload_model(client, auth, cnn_bytes(), **fields)
        assert resp.status_code == 201, (fields, resp.get_json())
        assert resp.get_json()["sha256"] == first.get_json()["sha256"]
        seen.add(resp.get_json()["id"])
    assert len(seen) == 4
    versions = client.get("/v1/models?name=digits", headers=auth).get_json()["items"]
    assert {m["id"] for m in versions} == seen

    for bad in ("0,Infinity", "0,1e400", "[0, 1e999]", "nan,1"):
        resp = upload_model(client, auth, cnn_bytes(), input_range=bad)
        assert_problem(resp, 422)
        assert "finite" in resp.get_data(as_text=True), (bad, resp.get_data(as_text=True))

    # a method a route does not have: 405 with the methods it does have
    resp = client.put("/v1/models", headers=auth)
    assert_problem(resp, 405)
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}

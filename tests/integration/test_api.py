"""The HTTP contract of api-v1.md over the Flask test client, on SQLite and PostgreSQL."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit
from tests.factories import hostile
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.factories.models import DigitsCNN, to_onnx

PROBLEM = "application/problem+json"


@cache
def cnn_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return to_onnx(DigitsCNN())


@cache
def digits_npz(n: int = 16, scale: float = 1.0) -> bytes:
    rng = np.random.default_rng(0)
    x = (rng.random((n, 1, 8, 8)) * scale).astype(np.float32)
    return hostile.npz_bytes(x=x, y=np.arange(n) % 10)


def assert_problem(resp, status: int, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == PROBLEM
    body = resp.get_json(force=True)
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]


# --- operations ---------------------------------------------------------------


def test_health_and_readiness_need_no_key(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_documents_the_contract(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    for path in ("/v1/models", "/v1/datasets", "/v1/audits", "/v1/audits/{audit_id}"):
        assert path in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create = spec["paths"]["/v1/audits"]["post"]
    assert "202" in create["responses"]
    assert client.get("/docs/").status_code == 200
    # Written for users, not the factory's docstring.
    assert "ε" in spec["info"]["description"]
    assert "factory" not in spec["info"]["description"]
    # Every route declares what it answers on success: a schema for JSON, else a media type.
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ok = [c for c in op["responses"] if c in ("200", "201", "202", "204")]
            assert ok, f"{method} {path} declares no success response"
            assert op["summary"], f"{method} {path} has no summary"
            for code in ok:
                if code != "204":
                    assert op["responses"][code].get("content"), f"{method} {path} {code}"
    # The config's schema is the core's, with fd_directions (documented, and now accepted).
    config = spec["components"]["schemas"]["AuditConfig"]["properties"]
    assert config["fd_directions"]["default"] == 64
    assert all(field.get("description") for field in config.values())


def test_a_response_that_drifts_from_its_schema_fails(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Response validation is on: a field the schema does not declare is an error, not news."""
    from flask import Response, jsonify
    from pydantic import BaseModel

    from service.api import ops

    def drifted(body: BaseModel, status: int = 200) -> Response:
        response = jsonify({**body.model_dump(mode="json"), "notes": []})
        response.status_code = status
        return response

    assert client.get("/healthz").status_code == 200
    monkeypatch.setattr(ops, "json_response", drifted)
    assert client.get("/healthz").status_code == 500
    assert "notes" in caplog.text
    assert "Extra inputs are not permitted" in caplog.text


def test_fd_directions_is_accepted_and_stored(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    """README documents fd_directions; the API refused it before the config was defined once."""
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"fd_directions": 16}}
    created = client.post("/v1/audits", json=body, headers=auth)
    assert created.status_code == 202, created.get_json()
    audit = client.get(created.get_json()["links"]["self"], headers=auth).get_json()
    assert audit["config"]["fd_directions"] == 16
    assert audit["config"]["landscape"] == {"samples": 4, "resolution": 21, "span": 2.0}


# --- auth and tenancy ---------------------------------------------------------


def test_missing_and_unknown_keys_get_401(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/models"), 401, "Authorization: Bearer")
    wrong = {"Authorization": "Bearer ra_not-a-real-key"}
    assert_problem(client.get("/v1/models", headers=wrong), 401, "unknown or revoked")


def test_another_tenants_objects_are_404(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    model = upload_model(client, auth, cnn_bytes()).get_json()
    other = tenant_headers(db_session, "globex")
    assert_problem(client.get(f"/v1/models/{model['id']}", headers=other), 404)
    assert client.get("/v1/models", headers=other).get_json()["items"] == []
    # the same bytes under another tenant are a separate model
    assert upload_model(client, other, cnn_bytes()).status_code == 201


# --- models -------------------------------------------------------------------


def test_upload_model_reports_the_intake(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = upload_model(client, auth, cnn_bytes(), name="digits", version="1", input_range="0,1")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["name"] == "digits"
    assert body["version"] == "1"
    assert len(body["sha256"]) == 64
    assert body["input"] == {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32"}
    assert body["output"] == {"name": "scores", "num_classes": 10, "kind": "logits"}
    assert body["opset"] == 17
    assert body["backends"]["torch"]["ok"] is None  # a worker fills it in
    again = upload_model(client, auth, cnn_bytes(), name="digits", version="1", input_range="0,1")
    assert again.status_code == 200
    assert again.get_json()["id"] == body["id"]
    fetched = client.get(f"/v1/models/{body['id']}", headers=auth).get_json()
    assert fetched["sha256"] == body["sha256"]


def test_model_list_is_newest_first_and_paginates(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    ids = [
        upload_model(client, auth, cnn_bytes(seed), name=f"m{seed}").get_json()["id"]
        for seed in range(3)
    ]
    first = client.get("/v1/models?limit=2", headers=auth).get_json()
    assert [m["id"] for m in first["items"]] == ids[::-1][:2]
    second = client.get(
        f"/v1/models?limit=2&cursor={first['next_cursor']}", headers=auth
    ).get_json()
    assert [m["id"] for m in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None
    named = client.get("/v1/models?name=m1", headers=auth).get_json()["items"]
    assert [m["id"] for m in named] == [ids[1]]
    assert_problem(client.get("/v1/models?limit=501", headers=auth), 422, "limit")
    assert_problem(client.get("/v1/models?cursor=garbage", headers=auth), 400, "cursor")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not onnx at all", "not a valid ONNX file"),
        (hostile.external_data_model(), "external data"),
        (hostile.foreign_domain_model(), "com.evil"),
        (hostile.not_a_classifier_model(), "[batch, classes]"),
        (hostile.huge_constant_model(), "limit is"),
    ],
    ids=["garbage", "external-data", "foreign-domain", "not-classifier", "huge-constant"],
)
def test_bad_models_get_422(
    client: FlaskClient, auth: dict[str, str], data: bytes, fragment: str
) -> None:
    assert_problem(upload_model(client, auth, data), 422, fragment)


def test_model_form_errors(client: FlaskClient, auth: dict[str, str]) -> None:
    no_file = client.post(
        "/v1/models", data={"name": "x"}, headers=auth, content_type="multipart/form-data"
    )
    assert_problem(no_file, 422, "file")
    assert_problem(upload_model(client, auth, cnn_bytes(), input_range="1,0"), 422, "lo < hi")
    assert_problem(upload_model(client, auth, cnn_bytes(), class_names="a,b"), 422, "10 classes")
    assert_problem(upload_model(client, auth, cnn_bytes(), nme="typo"), 422, "nme")


def test_too_large_upload_is_413(
    client: FlaskClient, auth: dict[str, str], settings: Settings
) -> None:
    client.application.config["ROBAUDIT_SETTINGS"] = settings.with_overrides(max_model_bytes=1000)
    assert_problem(upload_model(client, auth, cnn_bytes()), 413, "1000 bytes")


# --- datasets -----------------------------------------------------------------


def test_upload_dataset(client: FlaskClient, auth: dict[str, str]) -> None:
    resp = upload_dataset(client, auth, digits_npz(), name="digits-test")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert (body["n"], body["shape"], body["dtype"], body["num_classes"]) == (
        16,
        [1, 8, 8],
        "float32",
        10,
    )
    assert upload_dataset(client, auth, digits_npz()).get_json()["id"] == body["id"]
    listed = client.get("/v1/datasets", headers=auth).get_json()
    assert [d["id"] for d in listed["items"]] == [body["id"]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (hostile.pickled_npz(), "without unpickling"),
        (
            hostile.npz_bytes(x=np.zeros((3, 4), np.float32), y=np.zeros(2, np.int64)),
            "3 samples but y has 2",
        ),
        (hostile.npz_bytes(x=np.full((2, 4), np.nan, np.float32), y=np.zeros(2, np.int64)), "NaN"),
        (hostile.zip_bomb_npz(), "inflates to"),
        (b"just text", "not an .npz"),
    ],
    ids=["pickle", "length-mismatch", "nan", "zip-bomb", "not-npz"],
)
def test_bad_datasets_get_422(
    client: FlaskClient, auth: dict[str, str], data: bytes, fragment: str
) -> None:
    assert_problem(upload_dataset(client, auth, data), 422, fragment)


# --- audits -------------------------------------------------------------------


@pytest.fixture
def ids(client: FlaskClient, auth: dict[str, str]) -> tuple[str, str]:
    model = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    return model, dataset


def test_create_and_read_an_audit(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    model, dataset = ids
    resp = client.post("/v1/audits", json={"model_id": model, "dataset_id": dataset}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    created = resp.get_json()
    assert created["status"] == "queued"
    assert created["dispatched"] is True
    assert created["links"]["self"] == f"/v1/audits/{created['id']}"
    # 1 ε: clean 1 + metric (apgd-kl/1 at K=20: 40 gradients at evaluated points + 3 run
    # ends + 1 reference + 8 probes and their reference = 53) + FGSM 2 + PGD 21 = 77 forwards
    assert created["estimate"]["forward_passes_per_sample"] == 77
    assert created["estimate"]["backward_passes_per_sample"] == 40 + 1 + 20
    assert created["estimate"]["samples"] == 16
    audit = client.get(created["links"]["self"], headers=auth).get_json()
    assert audit["config"]["epsilons"] == [0.03]
    assert audit["config"]["norm"] == "linf"
    assert audit["config"]["steps"] == 20
    assert audit["config"]["search"] == "apgd-kl"
    # one unit per sample for the clean pass and one per sample and ε
    assert audit["progress"] == {"done": 0, "total": 32, "stage": None, "eta_seconds": None}
    assert audit["result"] is None


def test_the_old_search_can_be_asked_for_and_its_estimate_is_lower(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    def submit(search: str) -> dict:
        config = {"search": search, "baselines": ["clean"]}
        body = {"model_id": ids[0], "dataset_id": ids[1], "config": config}
        resp = client.post("/v1/audits", json=body, headers=auth)
        assert resp.status_code == 202, resp.get_json()
        return resp.get_json()

    old, new = submit("pgd-kl"), submit("apgd-kl")
    assert client.get(old["links"]["self"], headers=auth).get_json()["config"]["search"] == "pgd-kl"
    # pgd-kl: one run of K=20 gradients; apgd-kl/1: 40, the 2x ceiling of issue 6
    assert old["estimate"]["backward_passes_per_sample"] == 20
    assert new["estimate"]["backward_passes_per_sample"] == 40


def test_idempotency_key_replays_the_same_audit(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1]}
    headers = {**auth, "Idempotency-Key": "release-42"}
    first = client.post("/v1/audits", json=body, headers=headers)
    second = client.post("/v1/audits", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.get_json()["id"] == second.get_json()["id"]


def test_identical_succeeded_audit_is_reused_unless_forced(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], db_session: Session
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": {"epsilons": [0.1]}}
    first = client.post("/v1/audits", json=body, headers=auth).get_json()
    db_session.execute(update(Audit).where(Audit.id == first["id"]).values(status="succeeded"))
    db_session.commit()
    again = client.post("/v1/audits", json=body, headers=auth)
    assert again.status_code == 200
    assert again.get_json()["id"] == first["id"]
    forced = client.post("/v1/audits", json={**body, "force": True}, headers=auth)
    assert forced.status_code == 202
    assert forced.get_json()["id"] != first["id"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"norm": "l3"}, "norm"),
        ({"epsilons": [-0.1]}, "epsilons"),
        ({"epsilons": []}, "epsilons"),
        ({"steps": 0}, "steps"),
        ({"backend": "tensorflow"}, "backend"),
        ({"epsilon": 0.1}, "epsilon"),
        ({"search": "fgsm"}, "search"),
    ],
    ids=["norm", "negative-eps", "no-eps", "zero-steps", "backend", "unknown-field", "search"],
)
def test_invalid_config_is_422_naming_the_field(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str], config: dict, fragment: str
) -> None:
    body = {"model_id": ids[0], "dataset_id": ids[1], "config": config}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 422, fragment)


def test_audit_of_missing_objects_is_404(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    body = {"model_id": "no-such-model", "dataset_id": ids[1]}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 404, "no model")
    body = {"model_id": ids[0], "dataset_id": "no-such-dataset"}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 404, "no dataset")
    assert_problem(client.get("/v1/audits/nope", headers=auth), 404, "no audit")


def test_dataset_that_does_not_fit_the_model_is_422(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    wrong_shape = hostile.npz_bytes(x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, np.int64))
    dataset = upload_dataset(client, auth, wrong_shape).get_json()["id"]
    body = {"model_id": ids[0], "dataset_id": dataset}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 422, "shape")
    out_of_range = upload_dataset(client, auth, digits_npz(scale=255.0)).get_json()["id"]
    body = {"model_id": ids[0], "dataset_id": out_of_range}
    assert_problem(client.post("/v1/audits", json=body, headers=auth), 422, "input range")


def test_history_filters_and_cancel(
    client: FlaskClient, auth: dict[str, str], ids: tuple[str, str]
) -> None:
    made = [
        client.post(
            "/v1/audits",
            json={"model_id": ids[0], "dataset_id": ids[1], "config": {"seed": seed}},
            headers=auth,
        ).get_json()["id"]
        for seed in range(3)
    ]
    history = client.get("/v1/audits", headers=auth).get_json()
    assert [a["id"] for a in history["items"]] == made[::-1]
    cancelled = client.post(f"/v1/audits/{made[1]}/cancel", headers=auth)
    assert cancelled.get_json()["status"] == "cancelled"
    assert_problem(client.post(f"/v1/audits/{made[1]}/cancel", headers=auth), 409, "cancelled")
    queued = client.get("/v1/audits?status=queued", headers=auth).get_json()["items"]
    assert {a["id"] for a in queued} == {made[0], made[2]}
    by_model = client.get(f"/v1/audits?model_id={ids[0]}&limit=1", headers=auth).get_json()
    assert len(by_model["items"]) == 1
    assert by_model["next_cursor"]
    assert client.get("/v1/audits?model_name=nope", headers=auth).get_json()["items"] == []

"""The web UI's guards, over the Flask client: sign-in, CSRF, tenants, escaping, headers,
bad input. The browser tests (tests/e2e/test_web_ui.py) cover rendering and clicking."""

from __future__ import annotations

import re
import stat

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import ApiKey, utcnow
from service.app import create_app
from tests.factories.api import tenant_headers, upload_dataset, upload_model
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_history import fake_result, finished_audit

# Sign-in and rendering do not depend on the database backend: one is enough here.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def csrf(client: FlaskClient, path: str = "/ui/signin") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match[1]


def sign_in(client: FlaskClient, key: str) -> None:
    resp = client.post("/ui/signin", data={"api_key": key, "csrf": csrf(client)})
    assert resp.status_code == 302, resp.get_data(as_text=True)


def bearer_key(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


def test_pages_need_a_session_and_sign_in_checks_the_key(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    assert client.get("/").headers["Location"].endswith("/ui/audits")
    resp = client.get("/ui/audits?status=running")
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/ui/signin?next=/ui/audits")
    assert client.get("/ui/audits/x/progress").status_code == 401  # the script's endpoint
    token = csrf(client)
    refused = client.post("/ui/signin", data={"api_key": "ra_guess", "csrf": token})
    assert refused.status_code == 401
    assert "unknown or revoked" in refused.get_data(as_text=True)
    assert client.post("/ui/signin", data={"api_key": bearer_key(auth)}).status_code == 400
    ok = client.post(
        "/ui/signin", data={"api_key": bearer_key(auth), "csrf": token, "next": "//evil.example/"}
    )
    assert ok.headers["Location"] == "/ui/audits"  # never another host
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # the default, so that the demo's plain-HTTP UI signs in
    assert bearer_key(auth) not in cookie
    assert client.get("/ui/audits").status_code == 200
    assert client.post("/ui/signout").status_code == 400  # no CSRF token: refused
    db_session.execute(update(ApiKey).values(revoked_at=utcnow()))
    db_session.commit()
    assert client.get("/ui/audits").status_code == 302  # a revoked key signs the session out


def test_behind_tls_the_session_cookie_is_secure(settings: Settings, db_session: Session) -> None:
    from tests.integration.test_budgets import app_client

    auth = tenant_headers(db_session, "acme")
    with app_client(settings.with_overrides(session_cookie_secure=True), db_session) as client:
        data = {"api_key": bearer_key(auth), "csrf": csrf(client)}
        cookie = client.post("/ui/signin", data=data).headers["Set-Cookie"]
    assert "; Secure" in cookie


def test_hostile_names_are_shown_as_text_and_headers_are_strict(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    model = upload_model(client, auth, cnn_bytes(), name=HOSTILE, version=HOSTILE)
    model_id = model.get_json()["id"]
    dataset_id = upload_dataset(client, auth, digits_npz(), name=HOSTILE).get_json()["id"]
    ids = (model_id, dataset_id)
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    worse = finished_audit(client, auth, db_session, ids, 1, fake_result(0.015, 0.0005))
    sign_in(client, bearer_key(auth))
    pages = [
        "/ui/audits",
        f"/ui/audits/{worse}",
        f"/ui/models/{model_id}",
        f"/ui/compare?audits={base},{worse}",
    ]
    for path in pages:
        resp = client.get(path)
        assert resp.status_code == 200, (path, resp.get_data(as_text=True))
        text = resp.get_data(as_text=True)
        assert "<script>alert" not in text, path
        assert "<img src=x" not in text, path
        assert "&lt;script&gt;" in text, path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
    compare = client.get(f"/ui/compare?audits={base},{worse}").get_data(as_text=True)
    assert 'data-verdict="regressed"' in compare
    assert "<svg" in client.get(f"/ui/audits/{worse}").get_data(as_text=True)
    report = client.get(f"/ui/audits/{worse}/report")
    assert report.status_code == 200
    assert "script-src" not in report.headers["Content-Security-Policy"]  # none runs at all


def test_another_tenants_audit_and_bad_input_answer_clear_pages(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    model_id = upload_model(client, auth, cnn_bytes()).get_json()["id"]
    dataset_id = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    audit = finished_audit(
        client, auth, db_session, (model_id, dataset_id), 0, fake_result(0.01, 0.001)
    )
    other = tenant_headers(db_session, "globex")
    sign_in(client, bearer_key(other))
    for path in (f"/ui/audits/{audit}", f"/ui/models/{model_id}", f"/ui/audits/{audit}/report"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.mimetype == "text/html"
        assert "no " in resp.get_data(as_text=True)
    assert client.get("/ui/audits").get_data(as_text=True).count("data-audit-id") == 0
    cases = {
        "/ui/audits?status=exploded": "status must be one of",
        "/ui/audits?created_after=yesterday": "YYYY-MM-DD",
        "/ui/audits?cursor=zzz": "cursor",
        f"/ui/compare?audits={audit}": "2 to 20",
        "/ui/compare?audits=a,b&max_increase=lots": "a percentage like 10%",
        "/ui/compare?audits=a,b&max_increase=-1": "(≥ 0)",
        "/ui/compare?audits=a,b&max_increase=nan": "finite number",
    }
    for path, fragment in cases.items():
        resp = client.get(path)
        assert resp.status_code in (400, 404), path
        assert fragment in resp.get_data(as_text=True), path


def test_errors_no_route_sees_are_pages_for_a_browser_and_json_for_a_script(
    client: FlaskClient,
) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    mistyped = client.get("/ui/audit", headers=browser)  # matches no route: the app's handler
    assert (mistyped.status_code, mistyped.mimetype) == (404, "text/html")
    assert "<html" in mistyped.get_data(as_text=True)
    wrong = client.delete("/ui/audits", headers=browser)
    assert (wrong.status_code, wrong.mimetype) == (405, "text/html")
    assert "GET" in wrong.headers["Allow"]
    script = client.get("/ui/audit", headers={"Accept": "*/*"})  # the pages' own fetch()
    assert (script.status_code, script.mimetype) == (404, "application/problem+json")
    api = client.get("/v1/nowhere", headers=browser)  # the API stays problem+json
    assert api.mimetype == "application/problem+json"


def test_compare_page_takes_what_the_api_takes(
    client: FlaskClient, auth: dict[str, str], db_session: Session
) -> None:
    """`latest:NAME` and a percentage, as GET /v1/compare and the gate take them."""
    ids = (
        upload_model(client, auth, cnn_bytes(), name="digits").get_json()["id"],
        upload_dataset(client, auth, digits_npz()).get_json()["id"],
    )
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    worse = finished_audit(client, auth, db_session, ids, 1, fake_result(0.015, 0.0005))
    sign_in(client, bearer_key(auth))
    resp = client.get(f"/ui/compare?audits=latest:digits,{worse}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    page = resp.get_data(as_text=True)
    assert f'href="/ui/audits/{base}"' in page  # the baseline latest:digits resolved to
    assert 'data-verdict="regressed"' in page  # ψ rose 50%, more than the default 10%
    # 60% allows that rise; the form re-submits it as the fraction the API answers
    resp = client.get(f"/ui/compare?audits={base},{worse}&max_increase=60%25")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    page = resp.get_data(as_text=True)
    assert 'data-verdict="regressed"' not in page
    assert 'name="max_increase" value="0.6"' in page


def test_the_session_secret_is_generated_once_or_taken_from_the_settings(
    settings: Settings, db_session: Session
) -> None:
    first = create_app({"ROBAUDIT_SETTINGS": settings})
    again = create_app({"ROBAUDIT_SETTINGS": settings})
    path = settings.data_dir / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.config["SECRET_KEY"] == again.config["SECRET_KEY"] == path.read_text().strip()
    chosen = settings.with_overrides(secret_key="s" * 40)
    app: Flask = create_app({"ROBAUDIT_SETTINGS": chosen})
    assert app.config["SECRET_KEY"] == "s" * 40


def test_guessing_keys_at_sign_in_is_rate_limited(settings: Settings, db_session: Session) -> None:
    app = create_app({"ROBAUDIT_SETTINGS": settings.with_overrides(bad_key_rate_limit="2/minute")})
    app.extensions["robaudit.db"].session_factory = lambda: db_session
    client = app.test_client()
    token = csrf(client)
    statuses = [
        client.post("/ui/signin", data={"api_key": f"ra_guess{i}", "csrf": token}).status_code
        for i in range(3)
    ]
    assert statuses == [401, 401, 429]
    last = client.post("/ui/signin", data={"api_key": "ra_again", "csrf": token})
    assert last.mimetype == "text/html"
    assert int(last.headers["Retry-After"]) > 0
    assert "retry in" in last.get_data(as_text=True)

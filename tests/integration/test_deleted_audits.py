"""A deleted audit (DELETE /v1/audits/{id}) disappears from lists, GET /v1/compare and gates,
and is never reused: `latest:NAME` skips it, and the UI neither lists, charts nor offers it."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.integration.test_history import fake_result, finished_audit, ids  # noqa: F401
from tests.integration.test_web_ui_pages import bearer_key, sign_in

# Which rows a query keeps does not depend on the database backend: one is enough here.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def three_audits(
    client: FlaskClient, auth: dict[str, str], db: Session, model_dataset: tuple[str, str]
) -> tuple[str, str, str]:
    """Succeeded audits of model "digits", oldest first, all measured alike."""
    return (
        finished_audit(client, auth, db, model_dataset, 1, fake_result(0.010, 0.001)),
        finished_audit(client, auth, db, model_dataset, 2, fake_result(0.0777, 0.001)),
        finished_audit(client, auth, db, model_dataset, 3, fake_result(0.011, 0.001)),
    )


def test_latest_name_never_resolves_to_a_deleted_audit(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    ids: tuple[str, str],  # noqa: F811
) -> None:
    old, mid, new = three_audits(client, auth, db_session, ids)
    url = f"/v1/compare?audits=latest:digits,{new}"
    assert client.get(url, headers=auth).get_json()["baseline"] == mid  # the newest live one
    assert client.delete(f"/v1/audits/{mid}", headers=auth).status_code == 204
    resp = client.get(url, headers=auth)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["baseline"] == old
    # With no live audit left to name, the gate is told so instead of reusing a deleted one.
    assert client.delete(f"/v1/audits/{old}", headers=auth).status_code == 204
    resp = client.get(url, headers=auth)
    assert resp.status_code == 404
    assert "no succeeded audit of a model named 'digits'" in resp.get_json()["detail"]


def test_the_ui_neither_lists_charts_nor_offers_a_deleted_audit(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    ids: tuple[str, str],  # noqa: F811
) -> None:
    old, mid, new = three_audits(client, auth, db_session, ids)
    assert client.delete(f"/v1/audits/{mid}", headers=auth).status_code == 204
    sign_in(client, bearer_key(auth))
    model_page = client.get(f"/ui/models/{ids[0]}").get_data(as_text=True)
    listed = re.findall(r'data-audit-id="([^"]+)"', model_page)
    assert sorted(listed) == sorted([old, new])
    # Each trend point's tooltip names its audit; the deleted one's ψ (0.0777) is not plotted.
    trend = re.search(r'<figure id="trend-time-divergence">(.*?)</figure>', model_page, re.S)
    assert trend, model_page
    assert old[:8] in trend[1]
    assert mid[:8] not in trend[1]
    assert "0.0777" not in trend[1]
    audit_page = client.get(f"/ui/audits/{new}").get_data(as_text=True)
    select = re.search(r'<select name="audits" id="baseline">(.*?)</select>', audit_page, re.S)
    assert select, audit_page
    assert re.findall(r'<option value="([^"]+)"', select[1]) == [old]

"""The API and the CLI gate refuse to judge audits measured differently or degenerate models."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.persistence.models import Audit
from robaudit.cli import main
from tests.factories.api import upload_dataset, upload_model
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_history import fake_result, finished_audit


@pytest.fixture
def ids(client: FlaskClient, auth: dict[str, str]) -> tuple[str, str]:
    model = upload_model(client, auth, cnn_bytes(), name="digits").get_json()["id"]
    dataset = upload_dataset(client, auth, digits_npz()).get_json()["id"]
    return model, dataset


def _with_config(db: Session, audit_id: str, **changes: object) -> None:
    audit = db.get(Audit, audit_id)
    assert audit is not None
    db.execute(update(Audit).where(Audit.id == audit_id).values(config={**audit.config, **changes}))
    db.commit()


def test_api_answers_incomparable_with_every_reason(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    cand = finished_audit(client, auth, db_session, ids, 1, fake_result(0.001, 0.0005))
    _with_config(db_session, cand, steps=50, norm="l2")
    out = client.get(f"/v1/compare?audits={base},{cand}", headers=auth).get_json()
    verdict = out["verdicts"][0]
    assert verdict["verdict"] == "incomparable"
    assert verdict["regressed"] is False
    assert any("steps differs: 20 vs 50" in r for r in verdict["reasons"])
    assert any("norm differs" in r for r in verdict["reasons"])
    assert verdict["per_epsilon"] == []


def test_cli_gate_exits_2_on_incomparable_and_degenerate(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    ids: tuple[str, str],
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("ROBAUDIT_URL", server)
    monkeypatch.setenv("ROBAUDIT_API_KEY", auth["Authorization"].removeprefix("Bearer "))
    base = finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    same = finished_audit(client, auth, db_session, ids, 1, fake_result(0.010, 0.0005))
    assert main(["gate", same, "--baseline", base]) == 0
    capsys.readouterr()

    black_box = {**fake_result(0.010, 0.0005), "backend": "onnxruntime"}
    other = finished_audit(client, auth, db_session, ids, 2, black_box)
    junit = tmp_path / "gate.xml"
    assert main(["gate", other, "--baseline", base, "--junit", str(junit)]) == 2
    assert "cannot compare: backend differs: torch vs onnxruntime" in capsys.readouterr().err
    assert 'errors="1"' in junit.read_text()
    assert "backend differs" in junit.read_text()

    degenerate = fake_result(0.0, 0.0)
    degenerate["verdict"] = "degenerate"
    degenerate["diagnostics"]["degenerate"] = {"kind": "constant_output", "reason": "flat"}
    dead = finished_audit(client, auth, db_session, ids, 3, degenerate)
    assert main(["gate", dead, "--baseline", base]) == 2  # ψ = 0 must not pass as "better"
    err = capsys.readouterr().err
    assert "candidate audit's model is degenerate (constant_output): flat" in err


def test_report_states_a_degenerate_verdict(
    client: FlaskClient, auth: dict[str, str], db_session: Session, ids: tuple[str, str]
) -> None:
    degenerate = fake_result(0.0, 0.0)
    degenerate["verdict"] = "degenerate"
    degenerate["diagnostics"]["degenerate"] = {
        "kind": "constant_output",
        "reason": "scores ignore the input",
    }
    audit_id = finished_audit(client, auth, db_session, ids, 0, degenerate)
    text = client.get(f"/v1/audits/{audit_id}/report", headers=auth).get_data(as_text=True)
    assert "Verdict: degenerate. scores ignore the input" in text


def test_gate_latest_takes_the_newest_audit_measured_alike_and_junit_errors_otherwise(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    ids: tuple[str, str],
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("ROBAUDIT_URL", server)
    monkeypatch.setenv("ROBAUDIT_API_KEY", auth["Authorization"].removeprefix("Bearer "))
    finished_audit(client, auth, db_session, ids, 0, fake_result(0.010, 0.0005))
    alike = finished_audit(client, auth, db_session, ids, 1, fake_result(0.010, 0.0005))
    stronger = finished_audit(client, auth, db_session, ids, 2, fake_result(0.010, 0.0005))
    _with_config(db_session, stronger, steps=50)  # newer, but another threat model
    cand = finished_audit(client, auth, db_session, ids, 3, fake_result(0.010, 0.0005))
    junit = tmp_path / "gate.xml"
    assert main(["gate", cand, "--baseline", "latest:digits", "--junit", str(junit)]) == 0
    assert f"against {alike}:" in capsys.readouterr().out
    assert 'errors="0"' in junit.read_text()
    assert f"vs {alike}" in junit.read_text()

    assert main(["gate", stronger, "--baseline", "latest:digits", "--junit", str(junit)]) == 2
    assert "no succeeded audit of a model named 'digits'" in capsys.readouterr().err
    text = junit.read_text()
    assert 'tests="1" failures="0" errors="1"' in text  # never tests="0"
    assert "<error message=" in text
    assert "measured like it" in text

    queued = client.post(
        "/v1/audits", json={"model_id": ids[0], "dataset_id": ids[1], "force": True}, headers=auth
    ).get_json()["id"]
    assert main(["gate", cand, "--baseline", queued, "--junit", str(junit)]) == 2
    assert "only succeeded audits compare" in junit.read_text()
    assert main(["gate", cand, "--baseline", cand, "--max-increase", "x", "--junit", str(junit)])
    assert 'errors="1"' in junit.read_text()

"""The client commands against the real app on a real port: `status` is a short table unless
`--json` is asked for, and errors are one line. (The README's recipe: test_ci_recipes.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.persistence.models import Audit
from robaudit.cli import main
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_history import fake_result

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def on_disk(tmp_path: Path) -> tuple[Path, Path]:
    model, data = tmp_path / "model.onnx", tmp_path / "holdout.npz"
    model.write_bytes(cnn_bytes())
    data.write_bytes(digits_npz())
    return model, data


@pytest.fixture
def env(server: str, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    key = auth["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("ROBAUDIT_URL", server)
    monkeypatch.setenv("ROBAUDIT_API_KEY", key)
    return {"ROBAUDIT_URL": server, "ROBAUDIT_API_KEY": key}


def _succeed(db: Session, audit_id: str) -> None:
    db.execute(
        update(Audit)
        .where(Audit.id == audit_id)
        .values(status="succeeded", result=fake_result(0.01, 0.001))
    )
    db.commit()


def test_status_is_a_short_table_and_json_on_request(
    env: dict[str, str],
    db_session: Session,
    on_disk: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = on_disk
    assert main(["submit", str(model), str(data), "--json", "--steps", "7"]) == 0
    created = json.loads(capsys.readouterr().out)
    _succeed(db_session, created["id"])
    assert main(["status", created["id"]]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"audit   {created['id']}  succeeded")
    assert "eps 0.03" in table
    assert len(table.splitlines()) < 10
    assert main(["status", created["id"], "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert audit["config"]["steps"] == 7  # the flag reached the API
    assert audit["config"]["restarts"] == 1  # what was not given took the service's default


def test_client_errors_are_one_clear_line(
    env: dict[str, str], on_disk: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = on_disk
    assert main(["submit", str(model), str(data), "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robaudit: error: --steps: Input should be greater than or equal to 1")
    assert main(["status", "no-such-audit"]) == 2
    # The test server runs in this process: its JSON request log lines share our stderr.
    said = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]
    assert len(said) == 1, said
    assert said[0].startswith("robaudit: error: 404 ")

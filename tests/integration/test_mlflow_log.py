"""`robaudit mlflow-log` against the real app and a real local MLflow store (SQLite in
tmp_path), read back through MlflowClient."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.persistence.models import Audit
from robaudit.cli import main
from robaudit.cli.mlflow_log import MISSING_EXTRA
from tests.factories.api import upload_dataset, upload_model
from tests.integration.test_api import cnn_bytes, digits_npz
from tests.integration.test_history import fake_result, finished_audit

pytestmark = [
    # MLflow's store is the same whatever robaudit's database is.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    # mlflow 3.18's own SQL store still uses a loader SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


@pytest.fixture
def audit_id(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    monkeypatch.setenv("ROBAUDIT_URL", server)
    monkeypatch.setenv("ROBAUDIT_API_KEY", auth["Authorization"].removeprefix("Bearer "))
    model = upload_model(client, auth, cnn_bytes(), name="digits", version="2.1").get_json()
    dataset = upload_dataset(client, auth, digits_npz()).get_json()
    result = fake_result(0.0123, 0.001)
    audit = finished_audit(client, auth, db_session, (model["id"], dataset["id"]), 0, result)
    db_session.execute(update(Audit).where(Audit.id == audit).values(backend="torch"))
    db_session.commit()
    return audit


def test_an_audit_lands_in_an_mlflow_run_with_metrics_params_and_report(
    audit_id: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    # A SQLite store puts new experiments' artifacts under ./mlruns: keep them in tmp_path.
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["mlflow-log", audit_id, "--tracking-uri", uri, "--experiment", "release"]
    assert main(argv) == 0
    run_id = capsys.readouterr().out.strip()
    ml = MlflowClient(tracking_uri=uri)
    run = ml.get_run(run_id)
    assert ml.get_experiment(run.info.experiment_id).name == "release"
    assert run.info.status == "FINISHED"
    eps = fake_result(0.0123, 0.001)["per_epsilon"][0]
    key = f"eps_{eps['epsilon']:g}"
    metrics = run.data.metrics
    assert metrics[f"{key}/divergence_mean"] == pytest.approx(0.0123)
    assert metrics[f"{key}/divergence_ci95_low"] == pytest.approx(eps["divergence"]["ci95"][0])
    assert metrics[f"{key}/pgd_accuracy"] == pytest.approx(eps["pgd_accuracy"])
    params = run.data.params
    assert params["robaudit.model.name"] == "digits"
    assert params["robaudit.model.version"] == "2.1"
    assert params["robaudit.audit_id"] == audit_id
    assert len(params["robaudit.dataset.sha256"]) == 64
    assert params["robaudit.config.seed"] == "0"
    assert params["robaudit.config.landscape.samples"]  # nested config fields, flattened
    [folder] = ml.list_artifacts(run_id)
    [page] = ml.list_artifacts(run_id, folder.path)
    assert page.path == f"robaudit/report-{audit_id}.html"
    local = Path(ml.download_artifacts(run_id, page.path, str(tmp_path)))
    assert "<html" in local.read_text().lower()

    # Into an existing run, e.g. the training run that produced the model.
    assert main(["mlflow-log", audit_id, "--tracking-uri", uri, "--run-id", run_id]) == 0
    assert capsys.readouterr().out.strip() == run_id


def test_without_the_extra_it_says_how_to_install_it(
    audit_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_mlflow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "mlflow":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    assert main(["mlflow-log", audit_id]) == 2
    assert MISSING_EXTRA in capsys.readouterr().err

"""Schemathesis against the real app over HTTP on PostgreSQL: every documented operation,
stateful (create → get/cancel/report/delete through the OpenAPI links), with all checks.

It must find nothing: every answer documented, conforming to its schema, finite JSON, 405
with Allow. The run is bounded by examples and time so that it stays near 30 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from infra.config import Settings
from infra.persistence.migrate import upgrade
from infra.persistence.session import make_engine
from service.app import create_app
from service.auth import create_key
from tests import services
from tests.factories.api import upload_dataset, upload_model
from tests.integration.test_api import cnn_bytes, digits_npz


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, API key) of the app served on a local port, on its own PostgreSQL database,
    with one model and one dataset so that audits can be created."""
    url = services.create_pg_database()
    try:
        upgrade(url)
        root = tmp_path_factory.mktemp("schemathesis")
        settings = Settings(
            data_dir=root / "data",
            database_url=url,
            rate_limit="100000/minute",
            bad_key_rate_limit="100000/minute",  # it sends many requests without a key
        )
        app = create_app({"ROBAUDIT_SETTINGS": settings})
        engine = make_engine(url)
        with Session(engine) as session:
            key = create_key(session=session, tenant_name="schemathesis")
            session.commit()
        engine.dispose()
        headers = {"Authorization": f"Bearer {key}"}
        client = app.test_client()
        assert upload_model(client, headers, cnn_bytes(), name="digits").status_code == 201
        assert upload_dataset(client, headers, digits_npz()).status_code == 201
        httpd = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_port}", key
        httpd.shutdown()
        thread.join()
        app.extensions["robaudit.db"].engine.dispose()
    finally:
        services.drop_pg_database(url)


def test_schemathesis_finds_nothing(live_api: tuple[str, str], tmp_path: Path) -> None:
    base, key = live_api
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(cli),
        "run",
        f"{base}/openapi.json",
        "--checks=all",
        "--phases=examples,coverage,fuzzing,stateful",
        "--max-examples=5",
        "--max-time=25",
        "--workers=1",
        "--generation-deterministic",
        f"--header=Authorization: Bearer {key}",
        "--suppress-health-check=all",
        f"--report-dir={tmp_path}",
        "--no-color",
    ]
    # Schema-valid is not always valid: a cursor is opaque (one this API did not write is a
    # 400), and an upload's bytes are a model or dataset only when intake says so (422).
    (tmp_path / "schemathesis.toml").write_text(
        "[checks.positive_data_acceptance]\n"
        'expected-statuses = ["2xx", "400", "401", "404", "409", "422", "429"]\n'
    )
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]

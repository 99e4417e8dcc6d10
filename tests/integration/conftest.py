"""An app bound to the per-test savepoint session, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from infra.config import Settings
from service.app import create_app
from tests.factories.api import tenant_headers


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url)


@pytest.fixture
def app(settings: Settings, db_session: Session) -> Iterator[Flask]:
    app = create_app({"ROBAUDIT_SETTINGS": settings, "TESTING": True})
    state = app.extensions["robaudit.db"]
    state.session_factory = lambda: db_session
    yield app
    state.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(db_session: Session) -> dict[str, str]:
    return tenant_headers(db_session, "acme")


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    """The app on a real local HTTP port, for the CLI's client."""
    httpd = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join()

"""Shared fixtures: the database (SQLite and PostgreSQL, migrated once), apps, small models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from infra.persistence.migrate import upgrade
from infra.persistence.session import make_engine
from tests import services

# A test's directory says what it needs. `pytestmark` in a conftest marks nothing (pytest reads
# it from test modules only), so the marks are added here, where every collected item passes.
_DIRECTORY_MARKS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(tests_root):
            continue
        mark = _DIRECTORY_MARKS.get(item.path.relative_to(tests_root).parts[0])
        if mark is not None:
            item.add_marker(mark)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database per backend; every test using it runs once on each."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
        upgrade(url)
        yield url
        return
    url = services.create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        services.drop_pg_database(url)


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict[str, Engine]]:
    engines: dict[str, Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture
def db_session(database_url: str, _engines: dict[str, Engine]) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test."""
    engine = _engines.setdefault(database_url, make_engine(database_url))
    conn = engine.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        conn.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d

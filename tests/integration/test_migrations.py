"""Migration hygiene: one head, no drift between the models and the migrations, reversible."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from infra.persistence.migrate import alembic_config, upgrade
from infra.persistence.models import Base
from infra.persistence.session import make_engine

pytestmark = pytest.mark.integration


def test_single_head() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'round.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert {"tenants", "api_keys", "models", "datasets", "audits"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def _insert(db: sqlite3.Connection, table: str, **given: object) -> None:
    """A row with `given` and a placeholder in every other required column."""
    values = dict(given)
    for _, name, kind, notnull, default, _pk in db.execute(f"PRAGMA table_info({table})"):
        if notnull and default is None and name not in values:
            values[name] = 0 if kind in ("INTEGER", "BOOLEAN", "FLOAT") else "{}"
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608 (test names)
               list(values.values()))  # fmt: skip


def test_a_table_rebuild_on_sqlite_keeps_the_rows_that_reference_it(tmp_path: Path) -> None:
    """SQLite alters `audits` by rebuilding it (0009 and back), and with foreign keys on its
    DROP TABLE would delete the audit's shards by cascade: migrations run with them off."""
    path = tmp_path / "rows.db"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        _insert(db, "tenants", id="t")
        _insert(db, "models", id="m", tenant_id="t")
        _insert(db, "datasets", id="d", tenant_id="t")
        _insert(db, "audits", id="a", tenant_id="t", model_id="m", dataset_id="d")
        _insert(db, "audit_shards", id="s", audit_id="a", position=0)
    command.downgrade(alembic_config(f"sqlite:///{path}"), "0008")  # rebuilds audits, models
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id, audit_id FROM audit_shards").fetchall() == [("s", "a")]
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM audit_shards").fetchone() == (1,)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []

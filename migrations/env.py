"""Alembic environment: the URL comes from the caller's config, else from the settings
(DATABASE_URL, or SQLite in ROBAUDIT_DATA_DIR, as the service itself would use)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from infra.config import Settings
from infra.persistence.models import Base
from infra.persistence.session import make_engine

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            _foreign_keys_off(conn)
        _run(conn)
    engine.dispose()


def _foreign_keys_off(conn: Connection) -> None:
    """SQLite alters a table by rebuilding it (batch mode), and with foreign keys on, its
    DROP TABLE of the old copy deletes every row that references it by cascade: rebuilding
    `audits` would empty `audit_shards`. The pragma only takes outside a transaction, so it
    goes to the driver's connection (autocommit) before the migration's own transaction."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()

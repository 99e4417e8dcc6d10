"""Administration: database migrations and API keys."""

from __future__ import annotations

import argparse

from robaudit.cli.common import Subparsers, emit


def register(sub: Subparsers) -> None:
    db = sub.add_parser("db", help="database administration").add_subparsers(metavar="ACTION")
    upgrade = db.add_parser("upgrade", help="apply the Alembic migrations (DATABASE_URL)")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(metavar="ACTION")
    create = keys.add_parser("create", help="create an API key for a tenant and print it")
    create.add_argument(
        "--tenant", required=True, help="the tenant's name; created on its first key"
    )
    create.add_argument("--label", help="a note kept with the key, e.g. who or what uses it")
    create.set_defaults(handler=cmd_keys_create)


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from infra.config import Settings
    from infra.persistence.migrate import upgrade

    settings = Settings.from_env()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    emit("database at head")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    emit(create_key(args.tenant, args.label))
    return 0


def create_key(tenant: str, label: str | None) -> str:
    """A new key for the tenant; only its sha256 is stored, so this is the one chance to see it."""
    from infra.config import Settings
    from infra.persistence.session import make_engine, make_session_factory
    from service.auth import create_key as store_key

    engine = make_engine(Settings.from_env().database_url)
    with make_session_factory(engine)() as session:
        key = store_key(session=session, tenant_name=tenant, label=label)
        session.commit()
    engine.dispose()
    return key

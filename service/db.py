"""The Flask extension that owns the engine and hands out one session per app context."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from infra.persistence.session import make_engine, make_session_factory

KEY = "robaudit.db"


class Database:
    """Bound with init_app; tests swap `session_factory` for one joined to a savepoint."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.session_factory: sessionmaker[Session] | None = None

    def init_app(self, app: Flask) -> None:
        state = Database()
        state.engine = make_engine(app.config["DATABASE_URL"])
        state.session_factory = make_session_factory(state.engine)
        app.extensions[KEY] = state
        app.teardown_appcontext(_close_session)

    @property
    def session(self) -> Session:
        if "db_session" not in g:
            factory = current_app.extensions[KEY].session_factory
            g.db_session = factory()
        session: Session = g.db_session
        return session


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


db = Database()

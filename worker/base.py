"""The base Task: owns the settings, the database session and the artifact store per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from celery import Task
from sqlalchemy.orm import Session, sessionmaker

from infra.config import Settings
from infra.persistence.session import make_engine, make_session_factory
from infra.storage import ArtifactStore


class RobauditTask(Task):
    """Tasks get `self.session()`, `self.store` and `self.settings`; nothing at import time."""

    abstract = True

    @cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @cached_property
    def _session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(make_engine(self.settings.database_url))

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.artifact_dir)

    @contextmanager
    def session(self) -> Iterator[Session]:
        session = self._session_factory()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

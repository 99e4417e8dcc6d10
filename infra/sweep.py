"""Storage hygiene: the periodic sweep of the artifact store (the worker's sweeper calls it).

Kept apart from service.catalog, which imports the web layer; workers must not.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditShard, Dataset, Model
from infra.storage import ArtifactStore

DIGEST = re.compile(r"[0-9a-f]{64}")
_last_sweep: dict[Path, float] = {}  # per store, in this process: when it was last swept


def sweep_artifacts(*, session: Session, store: ArtifactStore, older_than: float) -> list[Path]:
    """Remove temp files and artifacts no row references, once older than `older_than` s.

    Referenced: every model and dataset row, soft-deleted ones included (an upload of the
    same bytes restores them), and every digest inside audit and shard results (landscape
    PNGs). Returns the removed paths.
    """
    referenced = set(session.scalars(select(Model.sha256)))
    referenced.update(session.scalars(select(Dataset.sha256)))
    for column in (Audit.result, AuditShard.result):
        for result in session.scalars(select(column).where(column.is_not(None))):
            referenced.update(_digests(result))
    return store.sweep(referenced, older_than)


def sweep_configured(*, session: Session, settings: Settings) -> list[Path]:
    """`sweep_artifacts` with the settings' store and grace, at most every grace/4 seconds.

    The worker's sweeper loop runs every few seconds for its outbox work; reading every
    audit result that often would load the database for nothing, as leftovers only become
    removable once a grace period old.
    """
    now = time.monotonic()
    if now - _last_sweep.get(settings.artifact_dir, -math.inf) < settings.sweep_grace_s / 4:
        return []
    _last_sweep[settings.artifact_dir] = now
    store = ArtifactStore(settings.artifact_dir)
    return sweep_artifacts(session=session, store=store, older_than=settings.sweep_grace_s)


def _digests(value: Any) -> Iterator[str]:
    if isinstance(value, str) and DIGEST.fullmatch(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _digests(item)
    elif isinstance(value, list):
        for item in value:
            yield from _digests(item)

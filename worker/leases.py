"""Row-level state transitions of an audit, each one conditional UPDATE."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from service.persistence.models import Audit, AuditShard, AuditStatus, utcnow

STALE_AFTER = timedelta(minutes=10)


def take_lease(session: Session, audit_id: str, worker: str) -> bool:
    """queued → running (or take over a running audit whose worker stopped heartbeating)."""
    now = utcnow()
    result = session.execute(
        update(Audit)
        .where(
            Audit.id == audit_id,
            Audit.cancel_requested.is_(False),
            or_(
                Audit.status == AuditStatus.QUEUED.value,
                and_(
                    Audit.status == AuditStatus.RUNNING.value,
                    Audit.heartbeat_at < now - STALE_AFTER,
                ),
            ),
        )
        .values(
            status=AuditStatus.RUNNING.value,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
            attempts=Audit.attempts + 1,
            stage="loading",
        )
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def report_shard_progress(
    session: Session, audit_id: str, shard_id: str, done: int, stage: str
) -> bool:
    """Store a shard's progress, the audit's total and a heartbeat; True means stop now.

    Stops on a cancel request, and when the audit is no longer running (another shard
    failed it). Ends with a commit so that no transaction stays open while the engine runs.
    """
    cancel, status = session.execute(
        select(Audit.cancel_requested, Audit.status).where(Audit.id == audit_id)
    ).one()
    session.execute(update(AuditShard).where(AuditShard.id == shard_id).values(done=done))
    total = (
        select(func.coalesce(func.sum(AuditShard.done), 0))
        .where(AuditShard.audit_id == audit_id)
        .scalar_subquery()
    )
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id)
        .values(progress_done=total, stage=stage, heartbeat_at=utcnow())
    )
    session.commit()
    return bool(cancel) or status != AuditStatus.RUNNING.value


def release_lease(session: Session, audit_id: str) -> None:
    """running → queued and undispatched, so a sweeper sends it again (its shards were not sent)."""
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == AuditStatus.RUNNING.value)
        .values(status=AuditStatus.QUEUED.value, dispatched_at=None, worker=None, stage=None)
    )
    session.commit()


def finish(
    session: Session,
    audit_id: str,
    status: AuditStatus,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    backend: str | None = None,
) -> None:
    """running → a terminal status, with the result or the error."""
    session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == AuditStatus.RUNNING.value)
        .values(
            status=status.value,
            result=result,
            error=error,
            backend=backend,
            finished_at=utcnow(),
            stage=status.value,
        )
    )
    session.commit()

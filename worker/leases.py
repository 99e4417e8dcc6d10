"""Row-level state transitions of audits and shards, each one conditional UPDATE.

A shard is leased by the worker that runs it: `claim_shard` counts the attempt before any
work starts, the worker heartbeats while it runs, and a shard whose heartbeat is older than
`Settings.stale_after_s` may be claimed by anyone (its worker is gone). Results are stored
only by the lease holder of a running audit, so nothing lands after a cancel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Row, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from infra.dispatch import STARTED, settle_cancel
from infra.persistence.models import (
    ACTIVE,
    Audit,
    AuditShard,
    AuditStatus,
    ShardStatus,
    Tenant,
    utcnow,
)
from robustness.results import AuditResult

LIVE = (AuditStatus.QUEUED.value, *(s.value for s in ACTIVE))
DEFERRED: Literal["deferred"] = "deferred"
__all__ = [
    "DEFERRED",
    "Claim",
    "claim_shard",
    "complete_shard",
    "finish",
    "heartbeat",
    "settle_cancel",
]


@dataclass(frozen=True)
class Claim:
    shard_id: str
    start: int
    stop: int
    attempts: int
    last_error: str | None


def _lock_tenant(session: Session, audit_id: str) -> str | None:
    """The audit's tenant, its row locked to the commit (PostgreSQL; SQLite serialises
    writers anyway). Starting an audit and ending one both take it: two workers starting two
    audits of one tenant count each other, and a shard deferred while an audit ends is
    deferred before the end commits, so the wake-up after it (worker/tasks.py) sees it."""
    tenant_id = session.scalar(select(Audit.tenant_id).where(Audit.id == audit_id))
    if tenant_id is not None:
        session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    return tenant_id


def _over_cap(session: Session, audit_id: str, max_running: int) -> bool:
    """Whether starting this queued audit would exceed its tenant's running-audit cap."""
    tenant_id = _lock_tenant(session, audit_id)
    if tenant_id is None:
        return False
    status = session.scalar(select(Audit.status).where(Audit.id == audit_id))
    if status != AuditStatus.QUEUED.value:
        return False  # started meanwhile (a sibling shard), or ended: the update below decides
    started = session.scalar(
        select(func.count()).where(Audit.tenant_id == tenant_id, Audit.status.in_(STARTED))
    )
    return int(started or 0) >= max_running


def _defer(session: Session, audit_id: str, position: int) -> Literal["deferred"]:
    """Leave the shard pending and unsent: it is sent again when a slot frees."""
    session.execute(
        update(AuditShard)
        .where(
            AuditShard.audit_id == audit_id,
            AuditShard.position == position,
            AuditShard.status == ShardStatus.PENDING.value,
        )
        .values(sent_at=None)
    )
    session.commit()
    return DEFERRED


def claim_shard(
    session: Session,
    audit_id: str,
    position: int,
    worker: str,
    stale_after_s: float,
    max_running: int | None = None,
) -> Claim | Literal["deferred"] | None:
    """pending (or stale running) → running by `worker`, attempts + 1; None if not ours to run,
    DEFERRED if the audit has not started and its tenant already runs `max_running` audits.

    The audit row is updated first (queued → running, touched if running), which locks it,
    so a concurrent cancel either sees this shard running or makes the claim fail.
    """
    status = session.scalar(select(Audit.status).where(Audit.id == audit_id))
    capped = max_running is not None and status == AuditStatus.QUEUED.value
    if capped and _over_cap(session, audit_id, int(max_running or 0)):
        return _defer(session, audit_id, position)
    now = utcnow()
    if not _mark_audit_running(session, audit_id, now):
        session.rollback()
        return None
    row = _lease_shard_row(session, audit_id, position, worker, now, stale_after_s)
    if row is None:
        session.rollback()  # done, or running on a live worker: a duplicate delivery
        return None
    if row.done:  # a taken-over shard starts again from zero
        _add_progress(session, audit_id, -row.done)
        session.execute(update(AuditShard).where(AuditShard.id == row.id).values(done=0))
    session.commit()
    return Claim(row.id, row.start, row.stop, row.attempts, row.last_error)


def _mark_audit_running(session: Session, audit_id: str, now: datetime) -> bool:
    """queued → running (or a running audit touched); False if cancelled or ended. Locks the row."""
    audit = session.execute(
        update(Audit)
        .where(
            Audit.id == audit_id,
            Audit.cancel_requested.is_(False),
            Audit.status.in_([AuditStatus.QUEUED.value, AuditStatus.RUNNING.value]),
        )
        .values(
            status=AuditStatus.RUNNING.value,
            started_at=func.coalesce(Audit.started_at, now),
            heartbeat_at=now,
            stage="loading",  # the child's setup and the model's load come first
        )
    )
    return bool(audit.rowcount == 1)  # type: ignore[attr-defined]


def _lease_shard_row(
    session: Session, audit_id: str, position: int, worker: str, now: datetime, stale_after_s: float
) -> Row[str, int, int, int, str | None, int] | None:
    """pending, or running but silent for `stale_after_s` (or on this very worker) → ours."""
    stale = now - timedelta(seconds=stale_after_s)
    live_here = and_(AuditShard.status == ShardStatus.RUNNING.value, AuditShard.worker == worker)
    return session.execute(
        update(AuditShard)
        .where(
            AuditShard.audit_id == audit_id,
            AuditShard.position == position,
            or_(
                AuditShard.status == ShardStatus.PENDING.value,
                and_(
                    AuditShard.status == ShardStatus.RUNNING.value,
                    or_(AuditShard.heartbeat_at < stale, AuditShard.worker == worker),
                ),
            ),
        )
        .values(
            status=ShardStatus.RUNNING.value,
            worker=worker,
            heartbeat_at=now,
            # the same live worker again (a task retried after a database or broker error):
            # the attempt did not die, so it is not counted twice
            attempts=case((live_here, AuditShard.attempts), else_=AuditShard.attempts + 1),
        )
        .returning(
            AuditShard.id,
            AuditShard.start,
            AuditShard.stop,
            AuditShard.attempts,
            AuditShard.last_error,
            AuditShard.done,
        )
    ).one_or_none()


def _add_progress(session: Session, audit_id: str, delta: int) -> None:
    # An increment, not a recomputed sum: concurrent shards would overwrite each other's sum.
    session.execute(
        update(Audit).where(Audit.id == audit_id).values(progress_done=Audit.progress_done + delta)
    )


def heartbeat(
    session: Session,
    audit_id: str,
    shard_id: str,
    worker: str,
    done: int | None = None,
    stage: str | None = None,
) -> bool:
    """Store a shard's progress and heartbeat; True means stop now.

    Stops on a cancel request, when the audit is no longer active (another shard failed
    it) and when this worker lost the lease. Ends with a commit.
    """
    now = utcnow()
    cancel, status = session.execute(
        select(Audit.cancel_requested, Audit.status).where(Audit.id == audit_id)
    ).one()
    previous = session.scalar(
        select(AuditShard.done).where(
            AuditShard.id == shard_id,
            AuditShard.worker == worker,
            AuditShard.status == ShardStatus.RUNNING.value,
        )
    )
    if previous is None:
        session.commit()
        return True  # the lease went to another worker
    shard_values: dict[str, Any] = {"heartbeat_at": now}
    audit_values: dict[str, Any] = {"heartbeat_at": now}
    if done is not None and done != previous:
        shard_values["done"] = done
        audit_values["progress_done"] = Audit.progress_done + (done - previous)
    if stage is not None:
        audit_values["stage"] = stage
    session.execute(update(AuditShard).where(AuditShard.id == shard_id).values(**shard_values))
    session.execute(update(Audit).where(Audit.id == audit_id).values(**audit_values))
    session.commit()
    return bool(cancel) or status != AuditStatus.RUNNING.value


def release_shard(
    session: Session, shard_id: str, worker: str, error: str | None, *, counted: bool = True
) -> None:
    """running → pending, keeping how this attempt ended; the shard will be sent again.

    `counted=False` gives the attempt back: the worker stopped it, the shard did no harm.
    """
    values: dict[str, Any] = {
        "status": ShardStatus.PENDING.value,
        "worker": None,
        "sent_at": None,
        "last_error": error,
    }
    if not counted:
        values["attempts"] = AuditShard.attempts - 1
    session.execute(
        update(AuditShard)
        .where(AuditShard.id == shard_id, AuditShard.worker == worker)
        .values(**values)
    )
    session.commit()


def complete_shard(
    session: Session, audit_id: str, shard_id: str, worker: str, body: dict[str, Any]
) -> bool:
    """Store a shard's result and count it, atomically, if this worker still holds the lease
    and the audit is still running; False for a repeated delivery or a cancelled audit."""
    running = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == AuditStatus.RUNNING.value)
        .values(shards_done=Audit.shards_done + 1)
    )
    marked = session.execute(
        update(AuditShard)
        .where(
            AuditShard.id == shard_id,
            AuditShard.worker == worker,
            AuditShard.status == ShardStatus.RUNNING.value,
        )
        .values(status=ShardStatus.DONE.value, result=body, finished_at=utcnow())
    )
    if running.rowcount != 1 or marked.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.commit()
    return True


def all_done(session: Session, audit_id: str) -> bool:
    """Whether every planned shard of the audit has its result."""
    total, done = session.execute(
        select(
            func.count(AuditShard.id),
            func.count(AuditShard.id).filter(AuditShard.status == ShardStatus.DONE.value),
        ).where(AuditShard.audit_id == audit_id)
    ).one()
    planned = session.scalar(select(Audit.shards_total).where(Audit.id == audit_id))
    return bool(total) and total == done == planned


def finish(
    session: Session,
    audit_id: str,
    status: AuditStatus,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    backend: str | None = None,
) -> bool:
    """A live audit → a terminal status, with the result or the error; once only.

    An audit whose cancel was requested ends `cancelled` rather than failed (the user asked),
    and never succeeds.
    """
    _lock_tenant(session, audit_id)
    where = [Audit.id == audit_id, Audit.status.in_(LIVE)]
    final: Any = status.value
    if status == AuditStatus.SUCCEEDED:
        where.append(Audit.cancel_requested.is_(False))
    else:
        final = case((Audit.cancel_requested.is_(True), AuditStatus.CANCELLED.value), else_=final)
    values: dict[str, Any] = {
        "status": final,
        "result": result,
        # What lists show, kept beside the result so that they never read whole results.
        "summary": AuditResult.model_validate(result).summary().model_dump(mode="json")
        if result is not None
        else None,
        "error": error,
        "backend": backend,
        "finished_at": utcnow(),
        "stage": final,
    }
    if status == AuditStatus.SUCCEEDED:
        values["progress_done"] = Audit.progress_total  # every shard's count is in
    outcome = session.execute(update(Audit).where(*where).values(**values))
    session.commit()
    return outcome.rowcount == 1  # type: ignore[attr-defined]

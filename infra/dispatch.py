"""Sending tasks, outbox style: the rows are the truth, the messages only nudges.

An audit row is committed before its task is sent. If the broker is down at that moment the
row stays `queued` with `dispatched_at` unset, and every worker's sweeper re-sends it once the
broker is back. The same holds for shards (`sent_at`) and model inspections (`inspected_at`).
The sweeper also takes over shards whose worker stopped heartbeating for
`Settings.stale_after_s`, and re-sends work whose message a restarted, empty broker lost
(its queue is empty while rows wait). A duplicate message is harmless: a shard runs only
under its lease (worker/leases.py).

Two definitions the web layer shares with the workers live here too:
- the status an audit shows (`shown_status`): `running` only while one of its shards is
  leased; a started audit none of whose shards is leased shows `queued`, with the stage
  WAITING_STAGE, in the API and in /metrics alike;
- which queued audits may start (`startable_audits`): per tenant, the oldest ones that fit
  under `Settings.max_running_audits` next to its started ones. A worker defers a shard of
  any other queued audit (worker/leases.py) and the shard's `sent_at` is cleared; it is sent
  again when a slot frees (worker/tasks.py after each shard, and this sweeper).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session, aliased

from infra.config import Settings
from infra.persistence.models import (
    ACTIVE,
    Audit,
    AuditShard,
    AuditStatus,
    Model,
    ShardStatus,
    utcnow,
)
from infra.queue import INSPECT_MODEL, RUN_AUDIT, RUN_SHARD, queue_names

log = logging.getLogger(__name__)
NEVER_SENT_GRACE = timedelta(seconds=5)  # the API sends right after commit; give it a moment
RESEND_AFTER = timedelta(hours=1)  # a sent message that nobody took, whatever the queue says
LIVE = (AuditStatus.QUEUED.value, *(s.value for s in ACTIVE))
WORKER_LOST = "its worker stopped heartbeating (killed, out of memory, or host lost)"
WAITING_STAGE = "waiting for a worker"
STARTED = tuple(s.value for s in ACTIVE)  # audits that hold one of their tenant's slots


def leased() -> ColumnElement[bool]:
    """The audit (correlated) has a shard a worker holds right now."""
    return exists().where(
        AuditShard.audit_id == Audit.id, AuditShard.status == ShardStatus.RUNNING.value
    )


def shown_status() -> ColumnElement[str]:
    """The status the API and /metrics show: `running` only while work happens."""
    waiting = and_(Audit.status == AuditStatus.RUNNING.value, ~leased())
    return case((waiting, AuditStatus.QUEUED.value), else_=Audit.status)


def waiting(session: Session, audit_id: str) -> bool:
    """Whether none of the audit's shards is leased now (a `running` row then shows
    `queued` with WAITING_STAGE; the caller keeps the rest of the row it read)."""
    working = session.scalar(
        select(exists().where(
            AuditShard.audit_id == audit_id, AuditShard.status == ShardStatus.RUNNING.value
        ))
    )  # fmt: skip
    return not working


def startable_audits(max_running: int) -> Select[tuple[str]]:
    """Ids of the queued audits that may start now: per tenant, the oldest that fit in the
    slots its started (running, cancelling) audits leave free."""
    other = aliased(Audit)
    started = (
        select(func.count())
        .where(other.tenant_id == Audit.tenant_id, other.status.in_(STARTED))
        .scalar_subquery()
    )
    rank = func.row_number().over(
        partition_by=Audit.tenant_id, order_by=(Audit.created_at, Audit.id)
    )
    ranked = (
        select(Audit.id, rank.label("rank"), started.label("started"))
        .where(Audit.status == AuditStatus.QUEUED.value, Audit.cancel_requested.is_(False))
        .subquery()
    )
    return select(ranked.c.id).where(ranked.c.rank <= max_running - ranked.c.started)


def deferred_shards(session: Session, settings: Settings, tenant_id: str) -> list[tuple[str, int]]:
    """(audit, position) of the unsent pending shards of this tenant's startable audits."""
    rows = session.execute(
        select(AuditShard.audit_id, AuditShard.position)
        .join(Audit, Audit.id == AuditShard.audit_id)
        .where(
            Audit.tenant_id == tenant_id,
            Audit.id.in_(startable_audits(settings.max_running_audits)),
            AuditShard.status == ShardStatus.PENDING.value,
            AuditShard.sent_at.is_(None),
        )
        .order_by(Audit.created_at, AuditShard.position)
    ).all()
    session.commit()
    return [(audit_id, int(position)) for audit_id, position in rows]


def send_audit(celery: Celery, session: Session, audit_id: str) -> bool:
    """Send the task now and record it; False (row untouched) if the broker is unreachable."""
    try:
        celery.send_task(RUN_AUDIT, args=[audit_id], retry=True, retry_policy={"max_retries": 2})
    except Exception as exc:
        log.warning(
            "audit %s not dispatched (broker: %s); a worker sweeper will resend it", audit_id, exc
        )
        return False
    session.execute(update(Audit).where(Audit.id == audit_id).values(dispatched_at=utcnow()))
    session.commit()
    return True


def queue_depth(celery: Celery, queue: str) -> int | None:
    """Messages waiting in a queue (not those a worker holds); None if the broker is down."""
    try:
        with celery.connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(queue=queue).message_count)
    except Exception:
        return None


def take_over_stale_shards(session: Session, settings: Settings) -> int:
    """Running shards whose worker stopped heartbeating become pending and unsent."""
    stale = utcnow() - timedelta(seconds=settings.stale_after_s)
    live_audits = select(Audit.id).where(Audit.status.in_(LIVE))
    result = session.execute(
        update(AuditShard)
        .where(
            AuditShard.status == ShardStatus.RUNNING.value,
            AuditShard.heartbeat_at < stale,
            AuditShard.audit_id.in_(live_audits),
        )
        .values(status=ShardStatus.PENDING.value, worker=None, sent_at=None, last_error=WORKER_LOST)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


def settle(session: Session, audit_id: str, stale_after_s: float | None) -> bool:
    live = exists().where(
        AuditShard.audit_id == audit_id, AuditShard.status == ShardStatus.RUNNING.value
    )
    if stale_after_s is not None:  # a shard silent this long has no live worker
        live = live.where(AuditShard.heartbeat_at >= utcnow() - timedelta(seconds=stale_after_s))
    result = session.execute(
        update(Audit)
        .where(Audit.id == audit_id, Audit.status == AuditStatus.CANCELLING.value, ~live)
        .values(status=AuditStatus.CANCELLED.value, finished_at=utcnow(), stage="cancelled")
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def settle_cancel(session: Session, audit_id: str, stale_after_s: float | None) -> bool:
    """cancelling → cancelled once no live worker runs one of its shards; commits."""
    settled = settle(session, audit_id, stale_after_s)
    session.commit()
    return settled


def settle_cancels(session: Session, settings: Settings) -> None:
    """`cancelling` audits none of whose shards still runs on a live worker end `cancelled`."""
    ids = session.scalars(
        select(Audit.id).where(Audit.status == AuditStatus.CANCELLING.value).limit(500)
    ).all()
    for audit_id in ids:
        settle_cancel(session, audit_id, settings.stale_after_s)


def resend_shards(celery: Celery, session: Session, settings: Settings) -> list[str]:
    """Pending shards never sent, or sent long ago while their queue is empty (lost)."""
    now = utcnow()
    lost = now - timedelta(seconds=settings.stale_after_s)
    depth = queue_depth(celery, queue_names(settings)["compute"])
    unsent = AuditShard.sent_at.is_(None)
    waiting = or_(unsent, AuditShard.sent_at < lost) if depth == 0 else unsent
    rows = session.execute(
        select(AuditShard.id, AuditShard.audit_id, AuditShard.position)
        .join(Audit, Audit.id == AuditShard.audit_id)
        .where(
            AuditShard.status == ShardStatus.PENDING.value,
            waiting,
            or_(
                Audit.status == AuditStatus.RUNNING.value,
                # a queued audit over its tenant's cap waits unsent: sending it would only
                # have a worker defer it again
                Audit.id.in_(startable_audits(settings.max_running_audits)),
            ),
            Audit.cancel_requested.is_(False),
        )
        .limit(1000)
    ).all()
    session.commit()
    sent = []
    for shard_id, audit_id, position in rows:
        celery.send_task(RUN_SHARD, args=[audit_id, position])
        session.execute(update(AuditShard).where(AuditShard.id == shard_id).values(sent_at=now))
        session.commit()
        sent.append(f"{audit_id}/{position}")
    return sent


def resend_stale(celery: Celery, session: Session, settings: Settings) -> list[str]:
    """Re-send queued audits never sent, or sent but lost (never planned, queue empty, or
    long ago); claim each first so that two sweepers do not both send it."""
    now = utcnow()
    lost = now - timedelta(seconds=settings.stale_after_s)
    empty = queue_depth(celery, queue_names(settings)["control"]) == 0
    stale = or_(
        # never sent: after the API's grace, or at once if a worker had leased it before
        and_(
            Audit.dispatched_at.is_(None),
            or_(Audit.created_at < now - NEVER_SENT_GRACE, Audit.started_at.is_not(None)),
        ),
        Audit.dispatched_at < now - RESEND_AFTER,
        and_(Audit.dispatched_at < lost, Audit.shards_total == 0, true() if empty else false()),
    )
    candidates = session.scalars(
        select(Audit.id).where(Audit.status == AuditStatus.QUEUED.value, stale).limit(500)
    ).all()
    session.commit()
    sent = []
    for audit_id in candidates:
        claimed = session.execute(
            update(Audit)
            .where(Audit.id == audit_id, Audit.status == AuditStatus.QUEUED.value, stale)
            .values(dispatched_at=now)
        )
        session.commit()
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            continue  # another worker's sweeper took it
        try:
            celery.send_task(RUN_AUDIT, args=[audit_id])
        except Exception:
            session.execute(update(Audit).where(Audit.id == audit_id).values(dispatched_at=None))
            session.commit()
            raise
        sent.append(audit_id)
    return sent


def resend_inspections(celery: Celery, session: Session, settings: Settings) -> list[str]:
    """Models not inspected whose inspection was neither sent nor alive for a while."""
    now = utcnow()
    quiet = now - max(timedelta(seconds=settings.stale_after_s), NEVER_SENT_GRACE)
    ids = session.scalars(
        select(Model.id)
        .where(
            Model.inspected_at.is_(None),
            Model.deleted_at.is_(None),
            func.coalesce(Model.inspect_sent_at, Model.created_at) < quiet,
        )
        .limit(500)
    ).all()
    session.commit()
    for model_id in ids:
        celery.send_task(INSPECT_MODEL, args=[model_id])
        session.execute(update(Model).where(Model.id == model_id).values(inspect_sent_at=now))
        session.commit()
    return list(ids)


def sweep(celery: Celery, session: Session, settings: Settings) -> dict[str, list[str]]:
    """One pass of the outbox sweeper; what it took over or sent, by kind."""
    taken = take_over_stale_shards(session, settings)
    settle_cancels(session, settings)
    return {
        "taken_over": [str(taken)] if taken else [],
        "audits": resend_stale(celery, session, settings),
        "shards": resend_shards(celery, session, settings),
        "inspections": resend_inspections(celery, session, settings),
    }

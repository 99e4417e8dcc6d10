"""Sending audit tasks, outbox style: the row is the truth, the message only a nudge.

An audit row is committed before its task is sent. If the broker is down at that moment
the row stays `queued` with `dispatched_at` unset, and every worker's sweeper re-sends such
rows once the broker is back. A duplicate message is harmless: only one worker can take
the lease (worker/leases.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.persistence.models import Audit, AuditStatus, utcnow
from service.queue import RUN_AUDIT

log = logging.getLogger(__name__)
NEVER_SENT_GRACE = timedelta(seconds=5)  # the API sends right after commit; give it a moment
RESEND_AFTER = timedelta(hours=1)  # a sent message that nobody took (e.g. broker lost it)
# A running audit heartbeats after every batch; this long without one, its workers are gone.
STALE_RUNNING = timedelta(minutes=30)


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


def recover_abandoned(session: Session) -> None:
    """Running audits whose workers stopped heartbeating: queue them again, or finish a cancel."""
    now = utcnow()
    abandoned = and_(
        Audit.status == AuditStatus.RUNNING.value, Audit.heartbeat_at < now - STALE_RUNNING
    )
    session.execute(
        update(Audit)
        .where(abandoned, Audit.cancel_requested.is_(True))
        .values(status=AuditStatus.CANCELLED.value, finished_at=now, stage="cancelled")
    )
    session.execute(
        update(Audit)
        .where(abandoned)
        .values(status=AuditStatus.QUEUED.value, dispatched_at=None, stage="requeued: no heartbeat")
    )
    session.commit()


def resend_stale(celery: Celery, session: Session) -> list[str]:
    """Re-send queued audits never sent, or sent long ago and still not taken; claim each first.

    Abandoned running audits are queued again first, so their pending shards are re-sent.
    """
    recover_abandoned(session)
    now = utcnow()
    stale = or_(
        # never sent: after the API's grace, or at once if a worker had leased it before
        and_(
            Audit.dispatched_at.is_(None),
            or_(Audit.created_at < now - NEVER_SENT_GRACE, Audit.started_at.is_not(None)),
        ),
        Audit.dispatched_at < now - RESEND_AFTER,
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

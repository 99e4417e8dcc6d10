"""The webhook task (control queue) and the calls that queue deliveries (infra/webhooks.py).

`notify_ended` runs after every audit and shard task: if that task ended the audit, the
deliveries are written and sent at once. A failed attempt sends the task again with a
countdown of the backoff (up to ROBAUDIT_STALE_AFTER_S); a longer wait, or a message lost
with a restarted worker, is the sweeper's: it sends the row again once overdue (`sweep`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import structlog
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra import webhooks
from infra.config import Settings
from infra.persistence.models import WebhookDelivery
from infra.queue import DELIVER_WEBHOOK
from worker.base import RobauditTask
from worker.celery_app import app

log = logging.getLogger(__name__)


def send(celery: Celery, delivery_ids: list[str], countdown: float | None = None) -> None:
    for delivery_id in delivery_ids:
        celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], countdown=countdown)


def notify_ended(session: Session, audit_id: str) -> None:
    """Write and send the deliveries of an audit that has just ended (nothing otherwise)."""
    send(app, webhooks.enqueue(session, audit_id))


def sweep(celery: Celery, session: Session, settings: Settings) -> list[str]:
    """Deliveries of audits that ended without them, and overdue ones whose message was
    lost: a countdown message gets an attempt's timeout and a sweep's interval of grace,
    and a re-sent one as much again before it is re-sent once more."""
    new = webhooks.catch_up(session)
    lateness = timedelta(seconds=settings.webhook_timeout_s + settings.sweep_interval_s)
    overdue = webhooks.take_overdue(session, settings, lateness=lateness)
    send(celery, [*new, *overdue])
    return [*new, *overdue]


@app.task(
    name=DELIVER_WEBHOOK,
    base=RobauditTask,
    bind=True,
    acks_late=True,
    time_limit=300,
    ignore_result=True,
)
def deliver_webhook(self: RobauditTask, delivery_id: str) -> str:
    """One attempt; on failure the next is sent with the backoff as countdown.

    A countdown longer than the broker's visibility timeout would have Redis hand the held
    message out again and again; such longer waits are left to the sweeper instead."""
    with self.session() as session:
        audit_id = session.scalar(
            select(WebhookDelivery.audit_id).where(WebhookDelivery.id == delivery_id)
        )
        if audit_id is not None:  # the lines of this delivery name its audit, as shards do
            structlog.contextvars.bind_contextvars(audit_id=audit_id)
        outcome = webhooks.deliver(session, delivery_id, self.settings)
    if outcome.retry_in_s is not None and outcome.retry_in_s <= self.settings.stale_after_s:
        send(app, [delivery_id], countdown=outcome.retry_in_s)
    log.info("webhook delivery %s: %s", delivery_id, outcome.state)
    return outcome.state

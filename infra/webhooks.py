"""Webhook deliveries, outbox style: a row per (endpoint, audit, event) is the truth.

When an audit reaches a terminal state, `enqueue` writes one pending delivery for each live
endpoint of its tenant (the worker that ended it calls it, and every sweeper pass catches
up on audits that ended elsewhere, e.g. a queued audit cancelled through the API). A
`robaudit.deliver_webhook` task (control queue) runs `deliver`: it claims the row, makes
one attempt (infra/webhook_http.py), records it in the row's log, and on failure sets the
next attempt after an exponential backoff. The sweeper re-sends due rows whose message was
lost (a restarted worker), so a delivery survives restarts; a duplicate message finds the
row claimed or not yet due and does nothing.

Each request carries the signed JSON event (infra/signing.py) and the headers
`Robaudit-Event`, `Robaudit-Delivery` (the same id on every attempt: receivers de-duplicate
on it) and `Robaudit-Signature`.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import (
    TERMINAL,
    Audit,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from infra.signing import SIGNATURE_HEADER, signature_header
from infra.webhook_http import Attempt, post

EVENTS = {status.value: f"audit.{status.value}" for status in TERMINAL}
MAX_BACKOFF = timedelta(hours=6)
CATCH_UP_WINDOW = timedelta(days=1)  # how far back the sweeper looks for ended audits
CLAIM_MARGIN = timedelta(seconds=30)  # past the attempt's timeout, before a claim lapses


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def event_body(audit: Audit, event: str) -> dict[str, Any]:
    """What receivers get: the event and enough of the audit to act on it (its verdict,
    its error); the rest is one `GET /v1/audits/{id}` away."""
    result = audit.result or {}
    return {
        "event": event,
        "created_at": utcnow().isoformat(),
        "audit": {
            "id": audit.id,
            "status": audit.status,
            "model_id": audit.model_id,
            "model_name": audit.model.name,
            "model_version": audit.model.version,
            "dataset_id": audit.dataset_id,
            "verdict": result.get("verdict"),
            "error": audit.error,
            "finished_at": audit.finished_at.isoformat() if audit.finished_at else None,
            "links": {"self": f"/v1/audits/{audit.id}", "report": f"/v1/audits/{audit.id}/report"},
        },
    }


def enqueue(session: Session, audit_id: str) -> list[str]:
    """Pending deliveries for an ended audit, one per live endpoint of its tenant that
    existed when it ended; the ids of the new ones (none if already written). Commits."""
    audit = session.get(Audit, audit_id)
    if audit is None or audit.status not in EVENTS or audit.finished_at is None:
        return []
    event = EVENTS[audit.status]
    endpoints = session.scalars(
        select(WebhookEndpoint.id).where(
            WebhookEndpoint.tenant_id == audit.tenant_id,
            WebhookEndpoint.deleted_at.is_(None),
            WebhookEndpoint.created_at <= audit.finished_at,
            ~_delivered_exists(audit.id),
        )
    ).all()
    created = []
    for endpoint_id in endpoints:
        row = WebhookDelivery(
            endpoint_id=endpoint_id,
            audit_id=audit.id,
            event=event,
            payload=event_body(audit, event),
            attempts_log=[],
        )
        try:
            with session.begin_nested():  # another worker may write the same row first
                session.add(row)
        except IntegrityError:
            continue
        created.append(row.id)
    session.commit()
    return created


def _delivered_exists(audit_id: str) -> Any:
    """The endpoint (correlated) already has a delivery of this audit."""
    return exists().where(
        WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.audit_id == audit_id
    )


def catch_up(session: Session) -> list[str]:
    """Deliveries for audits that ended recently without them (ended outside a worker, or
    the worker died before enqueueing)."""
    since = utcnow() - CATCH_UP_WINDOW
    missing = (
        select(Audit.id)
        .join(WebhookEndpoint, WebhookEndpoint.tenant_id == Audit.tenant_id)
        .where(
            Audit.status.in_(list(EVENTS)),
            Audit.finished_at >= since,
            Audit.finished_at >= WebhookEndpoint.created_at,
            WebhookEndpoint.deleted_at.is_(None),
            ~exists().where(
                WebhookDelivery.endpoint_id == WebhookEndpoint.id,
                WebhookDelivery.audit_id == Audit.id,
            ),
        )
        .distinct()
        .limit(200)
    )
    audit_ids = session.scalars(missing).all()
    session.commit()
    return [d for audit_id in audit_ids for d in enqueue(session, audit_id)]


def due(session: Session, settings: Settings, *, lateness: timedelta) -> list[str]:
    """Pending deliveries due for `lateness` already and not claimed: their message is lost."""
    now = utcnow()
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now - lateness,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .limit(500)
    ).all()
    session.commit()
    return list(ids)


def take_overdue(session: Session, settings: Settings, *, lateness: timedelta) -> list[str]:
    """The overdue deliveries (`due`), each made due from now: the sweeper re-sends one once
    per `lateness`, not at every sweep while its message waits in a busy queue. A delivery
    an attempt has just rescheduled is no longer overdue, so it keeps its backoff."""
    ids = due(session, settings, lateness=lateness)
    if ids:
        now = utcnow()
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id.in_(ids),
                WebhookDelivery.status == DeliveryStatus.PENDING.value,
                WebhookDelivery.next_attempt_at <= now - lateness,
            )
            .values(next_attempt_at=now)
        )
        session.commit()
    return ids


@dataclass(frozen=True)
class Outcome:
    state: str  # skipped, delivered, pending (retry later), failed
    retry_in_s: float | None = None


def deliver(session: Session, delivery_id: str, settings: Settings) -> Outcome:
    """One attempt of a due delivery, recorded; `retry_in_s` when another one is due later."""
    now = utcnow()
    claim_until = now + timedelta(seconds=settings.webhook_timeout_s) + CLAIM_MARGIN
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == DeliveryStatus.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .values(claimed_until=claim_until)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return Outcome("skipped")  # delivered, not due yet, or another worker has it
    row = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    endpoint = (
        session.get(WebhookEndpoint, row.endpoint_id, populate_existing=True) if row else None
    )
    assert row is not None  # the claim found it
    assert endpoint is not None  # deleting an endpoint keeps its row
    session.commit()  # nothing is held open during the network call
    if endpoint.deleted_at is not None:
        attempt = Attempt(None, "the endpoint was deleted", now.timestamp(), now.timestamp())
        return _record(session, row, attempt, settings, final=True)
    body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(utcnow().timestamp())
    headers = {
        "Content-Type": "application/json",
        "Robaudit-Event": row.event,
        "Robaudit-Delivery": row.id,
        SIGNATURE_HEADER: signature_header(endpoint.secret, body, timestamp),
    }
    attempt = post(
        endpoint.url,
        body,
        headers,
        timeout_s=settings.webhook_timeout_s,
        block_private=settings.webhook_block_private,
    )
    return _record(session, row, attempt, settings, final=False)


def _record(
    session: Session, row: WebhookDelivery, attempt: Attempt, settings: Settings, *, final: bool
) -> Outcome:
    number = row.attempts + 1
    entry = {
        "attempt": number,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
    }
    values: dict[str, Any] = {
        "attempts": number,
        "attempts_log": [*row.attempts_log, entry],
        "claimed_until": None,
    }
    retry_in: float | None = None
    if attempt.ok:
        values.update(status=DeliveryStatus.DELIVERED.value, delivered_at=utcnow())
    elif final or number >= settings.webhook_max_attempts:
        values.update(status=DeliveryStatus.FAILED.value)
    else:
        wait = min(timedelta(seconds=settings.webhook_backoff_s * 2 ** (number - 1)), MAX_BACKOFF)
        values.update(next_attempt_at=utcnow() + wait)
        retry_in = wait.total_seconds()
    session.execute(
        update(WebhookDelivery)
        .where(and_(WebhookDelivery.id == row.id, WebhookDelivery.attempts == row.attempts))
        .values(**values)
    )
    session.commit()
    state = values.get("status", DeliveryStatus.PENDING.value)
    return Outcome(state, retry_in)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()

"""Webhook endpoints of a tenant, and their delivery log: schemas and service functions.

Delivery itself is the workers' (infra/webhooks.py); the API only keeps the endpoints and
shows what was sent.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from celery import Celery
from pydantic import Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.persistence.models import WebhookDelivery, WebhookEndpoint, utcnow
from infra.queue import DELIVER_WEBHOOK
from infra.webhook_http import MAX_URL_CHARS, RefusedUrl, check_literal_host, check_url
from infra.webhooks import enqueue, new_secret
from service.catalog import live_row
from service.errors import Unprocessable
from service.pagination import paginate
from service.schemas import BaseModel, ListQuery, Out


class WebhookCreate(BaseModel):
    url: str = Field(
        max_length=MAX_URL_CHARS,
        description="http or https; receives a POST per audit that succeeded, failed or was "
        "cancelled",
    )
    description: str | None = Field(None, max_length=200)

    @field_validator("url")
    @classmethod
    def _sendable(cls, value: str) -> str:
        try:
            return check_url(value.strip())
        except RefusedUrl as exc:
            raise ValueError(str(exc)) from None


class WebhookPath(BaseModel):
    webhook_id: str


class WebhookOut(Out):
    id: str
    url: str
    description: str | None
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Signs every delivery (`Robaudit-Signature`); shown only in this answer"
    )


class WebhookPage(Out):
    items: list[WebhookOut]
    next_cursor: str | None


class DeliveryAttempt(Out):
    attempt: int
    status_code: int | None = Field(description="The receiver's answer; null: none came")
    error: str | None = Field(description="Why the attempt failed; null: a 2xx answer")
    started_at: datetime
    finished_at: datetime


class DeliveryOut(Out):
    id: str = Field(description="Also the `Robaudit-Delivery` header of every attempt")
    event: str
    audit_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[DeliveryAttempt]
    next_attempt_at: datetime | None = Field(description="When pending: the next attempt")
    created_at: datetime
    delivered_at: datetime | None


class DeliveryPage(Out):
    items: list[DeliveryOut]
    next_cursor: str | None


EVENTS = ["audit.succeeded", "audit.failed", "audit.cancelled"]
log = logging.getLogger(__name__)


def endpoint_json(row: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "description": row.description,
        "events": EVENTS,
        "created_at": row.created_at,
    }


def delivery_json(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event": row.event,
        "audit_id": row.audit_id,
        "status": row.status,
        "attempts": row.attempts_log,
        "next_attempt_at": row.next_attempt_at if row.status == "pending" else None,
        "created_at": row.created_at,
        "delivered_at": row.delivered_at,
    }


MAX_ENDPOINTS = 20  # per tenant: every ended audit costs one delivery per endpoint


def create_endpoint(
    *, session: Session, tenant_id: str, body: WebhookCreate, block_private: bool
) -> WebhookEndpoint:
    if block_private:
        try:
            check_literal_host(body.url)
        except RefusedUrl as exc:
            raise Unprocessable(f"url: {exc}") from None
    live = session.scalars(
        select(WebhookEndpoint.id).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None)
        )
    ).all()
    if len(live) >= MAX_ENDPOINTS:
        raise Unprocessable(
            f"this tenant has {len(live)} webhook endpoints, the most allowed; delete one first"
        )
    row = WebhookEndpoint(
        tenant_id=tenant_id, url=body.url, secret=new_secret(), description=body.description
    )
    session.add(row)
    session.flush()
    return row


def get_endpoint(*, session: Session, tenant_id: str, webhook_id: str) -> WebhookEndpoint:
    return live_row(session, WebhookEndpoint, tenant_id, webhook_id, "webhook")


def list_endpoints(
    *, session: Session, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[WebhookEndpoint], str | None]:
    stmt = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None)
    )
    return paginate(session, stmt, WebhookEndpoint, limit=limit, cursor=cursor)


def delete_endpoint(*, session: Session, tenant_id: str, webhook_id: str) -> None:
    """No more deliveries to it; pending ones end `failed` at their next attempt."""
    row = get_endpoint(session=session, tenant_id=tenant_id, webhook_id=webhook_id)
    row.deleted_at = utcnow()


def list_deliveries(
    *, session: Session, tenant_id: str, webhook_id: str, query: ListQuery
) -> tuple[list[WebhookDelivery], str | None]:
    get_endpoint(session=session, tenant_id=tenant_id, webhook_id=webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == webhook_id)
    return paginate(session, stmt, WebhookDelivery, limit=query.limit, cursor=query.cursor)


def notify_ended(session: Session, celery: Celery, audit_id: str) -> None:
    """An audit the API ended (a queued one cancelled): its deliveries now, not at the next
    sweep. Best effort: with the broker down, the sweeper sends the rows later."""
    for delivery_id in enqueue(session, audit_id):
        try:
            celery.send_task(DELIVER_WEBHOOK, args=[delivery_id])
        except Exception as exc:
            log.warning(
                "webhook delivery %s not sent (broker: %s); the sweeper will", delivery_id, exc
            )

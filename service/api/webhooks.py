"""/v1/webhooks: a tenant's endpoints for audit events, and what was delivered to them."""

from __future__ import annotations

from flask import Response

from service.api.common import BAD_CURSOR, blueprint, json_response, settings
from service.auth import tenant_id
from service.db import db
from service.schemas import ListQuery
from service.webhooks import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
    WebhookPath,
    create_endpoint,
    delete_endpoint,
    delivery_json,
    endpoint_json,
    list_deliveries,
    list_endpoints,
)

bp = blueprint(
    "webhooks",
    "/v1/webhooks",
    "URLs that receive a signed POST when an audit succeeds, fails or is cancelled. Each "
    "delivery carries `Robaudit-Signature: t=<unix>,v1=<hex>`, HMAC-SHA256 with the "
    "endpoint's secret over `<t>.<body>`; failed deliveries are retried with backoff.",
)


@bp.post(
    "",
    responses={201: WebhookCreated},
    description=(
        "The answer holds the endpoint's signing `secret`; it is not shown again.\n\n"
        "A URL whose host is a loopback, private or link-local address, or `localhost`, "
        "answers 422 unless the deployment allows private addresses; a name is checked "
        "each time a delivery is sent."
    ),
)
def create_webhook(body: WebhookCreate) -> Response:
    """Add a webhook endpoint."""
    row = create_endpoint(
        session=db.session,
        tenant_id=tenant_id(),
        body=body,
        block_private=settings().webhook_block_private,
    )
    db.session.commit()
    created = WebhookCreated.model_validate({**endpoint_json(row), "secret": row.secret})
    return json_response(created, 201)


@bp.get("", responses={200: WebhookPage, **BAD_CURSOR})
def list_webhooks(query: ListQuery) -> Response:
    """List webhook endpoints, newest first (without their secrets)."""
    rows, cursor = list_endpoints(
        session=db.session, tenant_id=tenant_id(), limit=query.limit, cursor=query.cursor
    )
    items = [WebhookOut.model_validate(endpoint_json(r)) for r in rows]
    return json_response(WebhookPage(items=items, next_cursor=cursor))


@bp.delete("/<webhook_id>", responses={204: None})
def delete_webhook(path: WebhookPath) -> Response:
    """Delete a webhook endpoint: nothing more is sent to it."""
    delete_endpoint(session=db.session, tenant_id=tenant_id(), webhook_id=path.webhook_id)
    db.session.commit()
    return Response(status=204)


@bp.get(
    "/<webhook_id>/deliveries",
    responses={200: DeliveryPage, **BAD_CURSOR},
    description="Newest first; each delivery lists every attempt with its status code or error.",
)
def webhook_deliveries(path: WebhookPath, query: ListQuery) -> Response:
    """The delivery log of one endpoint."""
    rows, cursor = list_deliveries(
        session=db.session, tenant_id=tenant_id(), webhook_id=path.webhook_id, query=query
    )
    items = [DeliveryOut.model_validate(delivery_json(r)) for r in rows]
    return json_response(DeliveryPage(items=items, next_cursor=cursor))

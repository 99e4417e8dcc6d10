"""/v1/audits"""

from __future__ import annotations

from flask import Response, current_app, send_file, url_for

from infra.dispatch import send_audit
from service import audits, reports
from service.api.common import blueprint, json_response, settings, store
from service.auth import tenant_id
from service.db import db
from service.schemas import (
    AuditCreate,
    AuditCreated,
    AuditListQuery,
    AuditOut,
    AuditPage,
    AuditPath,
    IdempotencyHeader,
    LandscapePath,
)

bp = blueprint("audits", "/v1/audits")


@bp.post("", responses={202: AuditCreated, 200: AuditCreated, 429: None})
def create_audit(body: AuditCreate, header: IdempotencyHeader) -> Response:
    """Queue an audit; commit first, then enqueue by task name."""
    session = db.session
    row, created = audits.create_audit(
        session=session,
        settings=settings(),
        tenant_id=tenant_id(),
        model_id=body.model_id,
        dataset_id=body.dataset_id,
        config=body.config,
        force=body.force,
        idempotency_key=header.idempotency_key,
    )
    session.commit()
    dispatched = row.dispatched_at is not None or row.status != "queued"
    if created:
        dispatched = send_audit(current_app.extensions["robaudit.celery"], session, row.id)
    links = {
        "self": url_for("audits.get_audit", audit_id=row.id),
        "report": url_for("audits.get_audit", audit_id=row.id) + "/report",
    }
    created_body = {
        "id": row.id,
        "status": row.status,
        "links": links,
        "estimate": audits.estimate_with_seconds(session=session, settings=settings(), audit=row),
        # False: the broker was unreachable; the audit is kept and a worker will send it.
        "dispatched": dispatched,
    }
    return json_response(created_body, 202 if created else 200)


@bp.get("", responses={200: AuditPage})
def list_audits(query: AuditListQuery) -> Response:
    """The audit history, newest first, with filters."""
    rows, cursor = audits.list_audits(
        session=db.session,
        tenant_id=tenant_id(),
        limit=query.limit,
        cursor=query.cursor,
        model_id=query.model_id,
        model_name=query.model_name,
        status=query.status,
        created_after=query.created_after,
        created_before=query.created_before,
    )
    return json_response({"items": [audits.audit_json(r) for r in rows], "next_cursor": cursor})


@bp.get("/<audit_id>", responses={200: AuditOut})
def get_audit(path: AuditPath) -> Response:
    """One audit: status, progress, and the result once it succeeded."""
    row = audits.get_audit(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return json_response(audits.audit_json(row))


@bp.post("/<audit_id>/cancel", responses={200: AuditOut})
def cancel_audit(path: AuditPath) -> Response:
    """Cancel: queued audits at once, running ones at the next batch boundary."""
    session = db.session
    row = audits.cancel_audit(session=session, tenant_id=tenant_id(), audit_id=path.audit_id)
    session.commit()
    return json_response(audits.audit_json(row))


@bp.get("/<audit_id>/landscape/<int:k>", responses={200: None})
def get_landscape(path: LandscapePath) -> Response:
    """The k-th loss/decision surface as JSON grids (rows: adversarial, columns: random)."""
    landscape = audits.get_landscape(
        session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id, k=path.k
    )
    return json_response(landscape)


@bp.get("/<audit_id>/landscape/<int:k>.png", responses={200: None})
def get_landscape_png(path: LandscapePath) -> Response:
    """The k-th landscape as a picture: 3-D loss surface and margin contour with S = 0."""
    landscape = audits.get_landscape(
        session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id, k=path.k
    )
    return send_file(store().path(landscape["png_sha256"]), mimetype="image/png", max_age=3600)


@bp.get("/<audit_id>/report.json", responses={200: None})
def get_report_json(path: AuditPath) -> Response:
    """The report's data: the audit with its model, dataset and cost estimate."""
    data = reports.report_data(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return json_response(data)


@bp.get("/<audit_id>/report", responses={200: None})
def get_report(path: AuditPath) -> Response:
    """A self-contained HTML report with the landscape pictures inlined."""
    data = reports.report_data(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return Response(reports.report_html(data, store()), mimetype="text/html")

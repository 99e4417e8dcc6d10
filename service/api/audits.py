"""/v1/audits: queue audits, follow them, read their results, reports and landscapes."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, send_file, url_for

from infra.dispatch import send_audit
from robustness.results import LandscapeResult
from service import audits, reports, webhooks
from service.api.common import (
    BAD_CURSOR,
    CONFLICT,
    blueprint,
    json_response,
    problem,
    settings,
    store,
)
from service.auth import tenant_id
from service.db import db
from service.errors import NotFound
from service.schemas import (
    AuditCreate,
    AuditCreated,
    AuditLinks,
    AuditListQuery,
    AuditOut,
    AuditPage,
    AuditPath,
    IdempotencyHeader,
    LandscapePath,
    ReportOut,
)

bp = blueprint(
    "audits",
    "/v1/audits",
    "An audit measures how far a model's predictions can be moved inside an ε-ball "
    "around each sample of a dataset (lower divergence is more robust).",
)
PNG: dict[str, Any] = {
    "description": "PNG picture",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
}
HTML: dict[str, Any] = {"description": "HTML page", "content": {"text/html": {}}}


@bp.post(
    "",
    responses={
        202: AuditCreated,
        200: AuditCreated,
        409: problem(
            "The audit this `Idempotency-Key` answered with was deleted since; send a new key"
        ),
    },
    description=(
        "Answers 202 with the audit's id, links and a cost estimate; the audit runs on a "
        "worker.\n\n"
        "An identical model, dataset and config that already succeeded is answered with 200 and "
        "that audit, unless `force` is true.\n\n"
        "An `Idempotency-Key` is bound to the audit that answered its first request, created "
        "(202) or reused (200). The same key with the same body (model, dataset, config and "
        "`force`) answers 200 with that audit, even while two such requests race; the same key "
        "with another body answers 422, and no audit is queued. If that audit was deleted "
        "since, the key answers 409: it ran once already, so send a new key to run it again."
    ),
)
def create_audit(body: AuditCreate, header: IdempotencyHeader) -> Response:
    """Queue an audit of a model on a dataset."""
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
    session.commit()  # before enqueueing, so a fast worker finds the row
    dispatched = row.dispatched_at is not None or row.status != "queued"
    if created:
        dispatched = send_audit(current_app.extensions["robaudit.celery"], session, row.id)
    link = url_for("audits.get_audit", audit_id=row.id)
    created_body = AuditCreated(
        id=row.id,
        status=row.status,  # an AuditStatus value, validated
        links=AuditLinks(self=link, report=link + "/report"),
        estimate=audits.estimate_with_seconds(session=session, settings=settings(), audit=row),
        dispatched=dispatched,
    )
    return json_response(created_body, 202 if created else 200)


@bp.get(
    "",
    responses={200: AuditPage, **BAD_CURSOR},
    description=(
        "Filter by model, model name, status or creation time; follow `next_cursor` for the "
        "next page."
    ),
)
def list_audits(query: AuditListQuery) -> Response:
    """List audits, newest first."""
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
    return json_response(
        AuditPage(items=[audits.audit_summary(r) for r in rows], next_cursor=cursor)
    )


@bp.get(
    "/<audit_id>",
    responses={200: AuditOut},
    description=(
        "The result holds, per ε, the divergence (mean, median, p90, max, bootstrap 95% CI) "
        "beside clean, FGSM and PGD accuracy, plus diagnostics and a manifest of what was "
        "measured."
    ),
)
def get_audit(path: AuditPath) -> Response:
    """Read one audit: its status and progress, and its result once it succeeded."""
    row = audits.get_audit(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return json_response(audits.audit_out(row))


@bp.delete(
    "/<audit_id>",
    responses={204: None, 409: CONFLICT},
    description=(
        "It disappears from lists, `GET /v1/compare` and gates, and is never reused for an "
        "identical request; reading it (and its report) answers 404 from then on, as for a "
        "deleted model or dataset. A queued or running audit answers 409: cancel it first."
    ),
)
def delete_audit(path: AuditPath) -> Response:
    """Delete a finished audit."""
    session = db.session
    audits.delete_audit(session=session, tenant_id=tenant_id(), audit_id=path.audit_id)
    session.commit()
    return Response(status=204)


@bp.post(
    "/<audit_id>/cancel",
    responses={200: AuditOut, 409: CONFLICT},
    description=(
        "A queued audit is cancelled at once; a running one becomes `cancelling` until its "
        "workers stop, within seconds.\n\n"
        "Cancelling a finished audit answers 409."
    ),
)
def cancel_audit(path: AuditPath) -> Response:
    """Cancel an audit."""
    session = db.session
    row = audits.cancel_audit(session=session, tenant_id=tenant_id(), audit_id=path.audit_id)
    session.commit()
    webhooks.notify_ended(session, current_app.extensions["robaudit.celery"], row.id)
    return json_response(audits.audit_out(row))


@bp.get(
    "/<audit_id>/landscape/<int:k>",
    responses={200: LandscapeResult, 409: CONFLICT},
    description=(
        "Grids of cross-entropy and margin around one sample: rows step along the adversarial "
        "direction, columns along a random one; `decision_boundary` traces where the prediction "
        "changes."
    ),
)
def get_landscape(path: LandscapePath) -> Response:
    """Read the k-th loss and decision surface of a succeeded audit."""
    landscape = audits.get_landscape(
        session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id, k=path.k
    )
    return json_response(landscape)


@bp.get(
    "/<audit_id>/landscape/<int:k>.png",
    responses={200: PNG, 409: CONFLICT},
    description=(
        "A 3-D loss surface beside the margin's contour map, with the decision boundary and the "
        "ε-box drawn."
    ),
)
def get_landscape_png(path: LandscapePath) -> Response:
    """Picture of the k-th landscape."""
    landscape = audits.get_landscape(
        session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id, k=path.k
    )
    if landscape.png_sha256 is None:
        raise NotFound("landscape picture", f"{path.audit_id}/{path.k}")
    return send_file(store().path(landscape.png_sha256), mimetype="image/png", max_age=3600)


@bp.get("/<audit_id>/report.json", responses={200: ReportOut})
def get_report_json(path: AuditPath) -> Response:
    """Read the report's data: the audit with its model, dataset and cost estimate."""
    data = reports.report_data(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return json_response(data)


@bp.get("/<audit_id>/report", responses={200: HTML})
def get_report(path: AuditPath) -> Response:
    """A self-contained HTML report, with the landscape pictures inlined."""
    data = reports.report_data(session=db.session, tenant_id=tenant_id(), audit_id=path.audit_id)
    return Response(
        reports.report_html(data.model_dump(mode="json"), store()), mimetype="text/html"
    )

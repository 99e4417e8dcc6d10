"""The UI's pages: audits (filters, live progress), one audit, a model's trend, a comparison.

Each page calls the same service functions as the API, scoped to the signed-in key's tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app, jsonify, render_template, request, send_file
from pydantic import ValidationError
from sqlalchemy import select
from werkzeug.wrappers import Response

from infra.persistence.models import TERMINAL, Audit, AuditStatus, Model
from service import audits, reports
from service.auth import tenant_id
from service.db import db
from service.errors import NotFound, Problem
from service.limits import RetryLater
from service.schemas import CompareQuery
from service.ui import views
from service.ui.blueprint import bp
from service.ui.session import REPORT_CSP, page_error

PAGE_SIZE = 25
STATUSES = [s.value for s in AuditStatus]
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


@bp.errorhandler(Problem)
def _problem(exc: Problem) -> Response:
    """A service error on a page: an HTML page that says what to fix, with the same status."""
    response = page_error(exc.status, exc.detail)
    if isinstance(exc, RetryLater):  # too many bad keys at sign-in
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.get("/audits")
def audits_page() -> Response | str:
    """Audits, newest first, filtered by model name, status and creation date."""
    args = request.args
    errors: list[str] = []
    status = args.get("status", "")
    if status and status not in STATUSES:
        errors.append(f"status must be one of {', '.join(STATUSES)}")
        status = ""
    after = _date(args.get("created_after", ""), "created after", errors)
    before = _date(args.get("created_before", ""), "created before", errors)
    rows, cursor = audits.list_audits(
        session=db.session,
        tenant_id=tenant_id(),
        limit=PAGE_SIZE,
        cursor=args.get("cursor") or None,
        model_name=args.get("model_name", "").strip() or None,
        status=status or None,
        created_after=after,
        created_before=before,
    )
    body = render_template(
        "ui/audits.html",
        rows=[views.audit_row(r) for r in rows],
        next_cursor=cursor,
        filters={k: args.get(k, "") for k in ("model_name", "created_after", "created_before")}
        | {"status": status},
        statuses=STATUSES,
        errors=errors,
    )
    return Response(body, status=400 if errors else 200, mimetype="text/html")


def _date(value: str, what: str, errors: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        errors.append(f"{what}: write a date as YYYY-MM-DD, not {value!r}")
        return None


@bp.get("/audits/<audit_id>")
def audit_page(audit_id: str) -> str:
    """One audit: progress while it runs; results, charts, diagnostics and landscapes after."""
    row = audits.get_audit(session=db.session, tenant_id=tenant_id(), audit_id=audit_id)
    out = audits.audit_out(row)
    return render_template(
        "ui/audit.html",
        audit=out,
        row=views.audit_row(row),
        model=row.model,
        dataset=row.dataset,
        charts=views.epsilon_charts(out.result) if out.result else None,
        baselines=views.baseline_choices(db.session, row),
        terminal=out.status in TERMINAL_VALUES,
    )


@bp.get("/audits/<audit_id>/progress")
def progress(audit_id: str) -> Response:
    """What the page's script polls: status, progress and ETA, as the API reports them."""
    row = audits.get_audit(session=db.session, tenant_id=tenant_id(), audit_id=audit_id)
    out = audits.audit_out(row)
    return jsonify(
        status=out.status,
        done=out.progress.done,
        total=out.progress.total,
        stage=out.progress.stage,
        eta_seconds=out.progress.eta_seconds,
        terminal=out.status in TERMINAL_VALUES,
    )


@bp.get("/audits/<audit_id>/landscape/<int:k>.png")
def landscape_png(audit_id: str, k: int) -> Response:
    landscape = audits.get_landscape(
        session=db.session, tenant_id=tenant_id(), audit_id=audit_id, k=k
    )
    if landscape.png_sha256 is None:
        raise NotFound("landscape picture", f"{audit_id}/{k}")
    return send_file(
        current_app.extensions["robaudit.store"].path(landscape.png_sha256),
        mimetype="image/png",
        max_age=3600,
    )


@bp.get("/audits/<audit_id>/report")
def report(audit_id: str) -> Response:
    """The audit's self-contained HTML report, as the API serves it."""
    data = reports.report_data(session=db.session, tenant_id=tenant_id(), audit_id=audit_id)
    store = current_app.extensions["robaudit.store"]
    response = Response(
        reports.report_html(data.model_dump(mode="json"), store), mimetype="text/html"
    )
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


@bp.get("/models/<model_id>")
def model_page(model_id: str) -> str:
    """A model and its audits across versions: divergence and PGD accuracy by version and time."""
    model = db.session.get(Model, model_id)
    if model is None or model.tenant_id != tenant_id():
        raise NotFound("model", model_id)  # deleted models keep their history: shown
    # ...but not deleted audits: DELETE /v1/audits/{id} hides one everywhere, trends included
    versions = list(
        db.session.scalars(
            select(Model)
            .where(Model.tenant_id == model.tenant_id, Model.name == model.name)
            .order_by(Model.created_at, Model.id)
        )
    )
    history = list(
        db.session.scalars(
            select(Audit)
            .where(Audit.model_id.in_([v.id for v in versions]), Audit.deleted_at.is_(None))
            .order_by(Audit.created_at.desc())
            .limit(500)
        )
    )
    trend = views.Trend.of(versions, history, request.args.get("epsilon", ""))
    return render_template(
        "ui/model.html",
        model=model,
        versions=versions,
        rows=[views.audit_row(a) for a in history],
        trend=trend,
    )


@bp.get("/compare")
def compare_page() -> str:
    """The verdict of each audit against the first (the baseline), as the release gate says."""
    query = _compare_query()
    ids = [i.strip() for i in query.audits.split(",") if i.strip()]
    if request.args.get("baseline") == "oldest":  # ticked in a list: the oldest is the baseline
        created = {a.id: a.created_at for a in views.audits_by_id(db.session, ids)}
        ids.sort(key=lambda i: (created.get(i) is None, created.get(i) or 0, i))
    out = reports.compare_audits(
        session=db.session, tenant_id=tenant_id(), audit_ids=ids, max_increase=query.max_increase
    )
    # Keyed by the ids compared: `latest:NAME` is resolved to its audit's id in `out`.
    compared = views.audits_by_id(db.session, [item.id for item in out.items])
    rows = {a.id: views.audit_row(a) for a in compared}
    return render_template(
        "ui/compare.html",
        out=out,
        rows=rows,
        chart=views.compare_chart(out, rows),
        ids=",".join(ids),
    )


def _compare_query() -> CompareQuery:
    """The page's query read as GET /v1/compare reads it (`max_increase` 0.1 or 10%, finite,
    ≥ 0): one definition, so that a link works the same on both. Repeated `audits` (ticked
    boxes) are one list. Bad input is a 400 page that says what to fix."""
    fields = {"audits": ",".join(request.args.getlist("audits"))}
    if raw := request.args.get("max_increase", ""):
        fields["max_increase"] = raw
    try:
        return CompareQuery.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or "query"
        detail = error["msg"].removeprefix("Value error, ")
        raise Problem(400, "Bad Request", f"{where}: {detail}") from None

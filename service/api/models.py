"""/v1/models"""

from __future__ import annotations

from flask import Response, current_app

from infra.persistence.models import Model
from infra.queue import INSPECT_MODEL
from service import catalog, limits
from service.api.common import blueprint, json_response, settings, store
from service.auth import tenant_id
from service.db import db
from service.schemas import ModelForm, ModelListQuery, ModelOut, ModelPage, ModelPath

bp = blueprint("models", "/v1/models")


@bp.post("", responses={201: ModelOut, 200: ModelOut, 413: None})
def upload_model(form: ModelForm) -> Response:
    """Upload an ONNX classifier; the same bytes again return the existing model."""
    session = db.session
    limits.check_upload(session, tenant_id(), settings(), Model, form.file.stream)
    row, created = catalog.create_model(
        session=session,
        store=store(),
        settings=settings(),
        tenant_id=tenant_id(),
        stream=form.file.stream,
        filename=form.file.filename,
        name=form.name,
        version=form.version,
        input_range=form.input_range,
        output=form.output,
        class_names=form.class_names,
    )
    session.commit()
    if created:
        try:
            current_app.extensions["robaudit.celery"].send_task(INSPECT_MODEL, args=[row.id])
        except Exception:  # best effort: every audit checks conversion and parity again
            current_app.logger.warning("model %s: inspection not sent (broker down)", row.id)
    return json_response(catalog.model_json(row), 201 if created else 200)


@bp.get("", responses={200: ModelPage})
def list_models(query: ModelListQuery) -> Response:
    """Models of this tenant, newest first."""
    rows, cursor = catalog.list_models(
        session=db.session,
        tenant_id=tenant_id(),
        limit=query.limit,
        cursor=query.cursor,
        name=query.name,
    )
    return json_response({"items": [catalog.model_json(r) for r in rows], "next_cursor": cursor})


@bp.get("/<model_id>", responses={200: ModelOut})
def get_model(path: ModelPath) -> Response:
    """One model, with its intake report and backend status."""
    row = catalog.get_model(session=db.session, tenant_id=tenant_id(), model_id=path.model_id)
    return json_response(catalog.model_json(row))


@bp.delete("/<model_id>", responses={204: None})
def delete_model(path: ModelPath) -> Response:
    """Delete: gone from lists and new audits; past audits and their reports stay readable."""
    session = db.session
    catalog.delete_model(session=session, tenant_id=tenant_id(), model_id=path.model_id)
    session.commit()
    return Response(status=204)

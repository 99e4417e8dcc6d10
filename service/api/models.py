"""/v1/models: upload ONNX classifiers and read their intake reports."""

from __future__ import annotations

from flask import Response, current_app

from infra.persistence.models import Model
from infra.queue import INSPECT_MODEL
from service import catalog, limits
from service.api.common import BAD_CURSOR, blueprint, json_response, settings, store
from service.auth import tenant_id
from service.db import db
from service.schemas import ModelForm, ModelListQuery, ModelOut, ModelPage, ModelPath

bp = blueprint(
    "models",
    "/v1/models",
    "ONNX classifiers to audit. Intake checks the graph, finds its data input and score "
    "output, and tests which backends compute the same scores as onnxruntime.",
)
TOO_LARGE = {"description": "The file is over the size limit, or the tenant's storage quota"}


@bp.post(
    "",
    responses={201: ModelOut, 200: ModelOut, 413: TOO_LARGE},
    description=(
        "Answers 201 with the intake report: input and output, opset, and whether the torch and "
        "onnxruntime backends can run it.\n\n"
        "The same bytes and metadata again answer 200 with the existing model; the same bytes "
        "with another name, version, input range, output, class names or `preprocessing` are a "
        "new model (a version) sharing the stored file.\n\n"
        "Graphs with external data, custom operator domains or oversized constants are refused "
        "with 422."
    ),
)
def upload_model(form: ModelForm) -> Response:
    """Upload an ONNX classifier."""
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
        preprocessing=form.preprocessing,
    )
    session.commit()
    if created:
        try:
            current_app.extensions["robaudit.celery"].send_task(INSPECT_MODEL, args=[row.id])
        except Exception:  # best effort: every audit checks conversion and parity again
            current_app.logger.warning("model %s: inspection not sent (broker down)", row.id)
    return json_response(ModelOut.model_validate(catalog.model_json(row)), 201 if created else 200)


@bp.get(
    "",
    responses={200: ModelPage, **BAD_CURSOR},
    description="Filter by `name`; follow `next_cursor` for the next page.",
)
def list_models(query: ModelListQuery) -> Response:
    """List models, newest first."""
    rows, cursor = catalog.list_models(
        session=db.session,
        tenant_id=tenant_id(),
        limit=query.limit,
        cursor=query.cursor,
        name=query.name,
    )
    items = [ModelOut.model_validate(catalog.model_json(r)) for r in rows]
    return json_response(ModelPage(items=items, next_cursor=cursor))


@bp.get("/<model_id>", responses={200: ModelOut})
def get_model(path: ModelPath) -> Response:
    """Read one model, with its intake report and backend status."""
    row = catalog.get_model(session=db.session, tenant_id=tenant_id(), model_id=path.model_id)
    return json_response(ModelOut.model_validate(catalog.model_json(row)))


@bp.delete(
    "/<model_id>",
    responses={204: None},
    description=(
        "It disappears from lists and cannot be audited again; past audits and their reports "
        "stay readable."
    ),
)
def delete_model(path: ModelPath) -> Response:
    """Delete a model."""
    session = db.session
    catalog.delete_model(session=session, tenant_id=tenant_id(), model_id=path.model_id)
    session.commit()
    return Response(status=204)

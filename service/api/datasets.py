"""/v1/datasets"""

from __future__ import annotations

from flask import Response

from infra.persistence.models import Dataset
from service import catalog, limits
from service.api.common import blueprint, json_response, settings, store
from service.auth import tenant_id
from service.db import db
from service.schemas import DatasetForm, DatasetOut, DatasetPage, DatasetPath, ListQuery

bp = blueprint("datasets", "/v1/datasets")


@bp.post("", responses={201: DatasetOut, 200: DatasetOut, 413: None})
def upload_dataset(form: DatasetForm) -> Response:
    """Upload an .npz with x (float, N×…) and y (int labels, N)."""
    session = db.session
    limits.check_upload(session, tenant_id(), settings(), Dataset, form.file.stream)
    row, created = catalog.create_dataset(
        session=session,
        store=store(),
        settings=settings(),
        tenant_id=tenant_id(),
        stream=form.file.stream,
        filename=form.file.filename,
        name=form.name,
    )
    session.commit()
    return json_response(catalog.dataset_json(row), 201 if created else 200)


@bp.get("", responses={200: DatasetPage})
def list_datasets(query: ListQuery) -> Response:
    """Datasets of this tenant, newest first."""
    rows, cursor = catalog.list_datasets(
        session=db.session, tenant_id=tenant_id(), limit=query.limit, cursor=query.cursor
    )
    return json_response({"items": [catalog.dataset_json(r) for r in rows], "next_cursor": cursor})


@bp.get("/<dataset_id>", responses={200: DatasetOut})
def get_dataset(path: DatasetPath) -> Response:
    """One dataset."""
    row = catalog.get_dataset(session=db.session, tenant_id=tenant_id(), dataset_id=path.dataset_id)
    return json_response(catalog.dataset_json(row))


@bp.delete("/<dataset_id>", responses={204: None})
def delete_dataset(path: DatasetPath) -> Response:
    """Delete: gone from lists and new audits; past audits and their reports stay readable."""
    session = db.session
    catalog.delete_dataset(session=session, tenant_id=tenant_id(), dataset_id=path.dataset_id)
    session.commit()
    return Response(status=204)

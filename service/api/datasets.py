"""/v1/datasets: upload evaluation sets."""

from __future__ import annotations

from flask import Response

from infra.persistence.models import Dataset
from service import catalog, limits
from service.api.common import BAD_CURSOR, blueprint, json_response, settings, store
from service.auth import tenant_id
from service.db import db
from service.schemas import DatasetForm, DatasetOut, DatasetPage, DatasetPath, ListQuery

bp = blueprint(
    "datasets",
    "/v1/datasets",
    "Labelled samples to audit models on: an .npz with arrays x (float, N×…) and y (int, N), "
    "or a zip of images (class-named folders, or a labels.csv).",
)
TOO_LARGE = {"description": "The file is over the size limit, or the tenant's storage quota"}


@bp.post(
    "",
    responses={201: DatasetOut, 200: DatasetOut, 413: TOO_LARGE},
    description=(
        "An .npz with `x` (float, N×…) and `y` (integer labels, N); answers 201, or 200 with "
        "the existing dataset for the same bytes.\n\n"
        "Or a zip of PNG/JPEG/BMP/WebP images: class-named folders (ImageFolder), or images "
        "with a top-level labels.csv (file,label). Images are decoded at audit time: resized "
        "to cover the model's H×W / crop_fraction, center-cropped, scaled to [0, 1].\n\n"
        "Pickles, object arrays, zip bombs, NaN or inf values and mismatched lengths are "
        "refused with 422; so are image zips with '..' or absolute paths, symlinks, nested "
        "archives, too many members or pixels, and images whose headers do not parse."
    ),
)
def upload_dataset(form: DatasetForm) -> Response:
    """Upload a dataset."""
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
        crop_fraction=form.crop_fraction,
    )
    session.commit()
    return json_response(
        DatasetOut.model_validate(catalog.dataset_json(row)), 201 if created else 200
    )


@bp.get("", responses={200: DatasetPage, **BAD_CURSOR})
def list_datasets(query: ListQuery) -> Response:
    """List datasets, newest first; follow `next_cursor` for the next page."""
    rows, cursor = catalog.list_datasets(
        session=db.session, tenant_id=tenant_id(), limit=query.limit, cursor=query.cursor
    )
    items = [DatasetOut.model_validate(catalog.dataset_json(r)) for r in rows]
    return json_response(DatasetPage(items=items, next_cursor=cursor))


@bp.get("/<dataset_id>", responses={200: DatasetOut})
def get_dataset(path: DatasetPath) -> Response:
    """Read one dataset."""
    row = catalog.get_dataset(session=db.session, tenant_id=tenant_id(), dataset_id=path.dataset_id)
    return json_response(DatasetOut.model_validate(catalog.dataset_json(row)))


@bp.delete(
    "/<dataset_id>",
    responses={204: None},
    description=(
        "It disappears from lists and cannot be used by new audits; past audits and their "
        "reports stay readable."
    ),
)
def delete_dataset(path: DatasetPath) -> Response:
    """Delete a dataset."""
    session = db.session
    catalog.delete_dataset(session=session, tenant_id=tenant_id(), dataset_id=path.dataset_id)
    session.commit()
    return Response(status=204)

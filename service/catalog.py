"""Service functions for models and datasets: keyword-only, typed, one job each."""

from __future__ import annotations

import json
from typing import IO, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from robustness.datasets import check_arrays, load_npz
from robustness.onnx_graph import inspect, load_model_bytes
from service.config import Settings
from service.errors import NotFound, Problem, Unprocessable
from service.pagination import paginate
from service.persistence.models import Dataset, Model, utcnow
from service.storage import ArtifactStore, StoredArtifact, TooLarge

PENDING = "pending: a worker checks conversion and parity"


def _store(store: ArtifactStore, stream: IO[bytes], limit: int) -> StoredArtifact:
    try:
        return store.save_stream(stream, max_bytes=limit)
    except TooLarge as exc:
        raise Problem(413, "Content Too Large", str(exc)) from exc


Row = TypeVar("Row", Model, Dataset)


def _restore_same_bytes(
    session: Session, entity: type[Row], tenant_id: str, sha256: str
) -> tuple[Row, bool] | None:
    """The tenant's row for these bytes, if any: (row, created). Deleted rows come back."""
    row = session.scalar(
        select(entity).where(entity.tenant_id == tenant_id, entity.sha256 == sha256)
    )
    if row is None:
        return None
    created = row.deleted_at is not None  # uploading deleted bytes restores the object
    row.deleted_at = None
    return row, created


def _insert_or_existing(session: Session, row: Row) -> tuple[Row, bool]:
    """Insert: (row, True); if a concurrent upload of the same bytes won, (its row, False)."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        entity = type(row)
        winner = session.scalar(
            select(entity).where(entity.tenant_id == row.tenant_id, entity.sha256 == row.sha256)
        )
        if winner is None:
            raise
        return winner, False
    return row, True


def parse_range(value: str | list[float] | None) -> list[float]:
    if value is None or value == "":
        return [0.0, 1.0]
    try:
        parts = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError) as exc:
        raise Unprocessable(f"input_range {value!r} is not 'lo,hi'") from exc
    if len(parts) != 2 or not parts[0] < parts[1]:
        raise Unprocessable(f"input_range {value!r} must be two numbers lo,hi with lo < hi")
    return parts


def parse_class_names(value: str | list[str] | None) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError:
            loaded = [v.strip() for v in value.split(",")]
        value = loaded if isinstance(loaded, list) else [str(loaded)]
    return [str(v) for v in value]


def create_model(
    *,
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    tenant_id: str,
    stream: IO[bytes],
    filename: str | None,
    name: str | None,
    version: str | None,
    input_range: str | list[float] | None,
    output: str | None,
    class_names: str | list[str] | None,
) -> tuple[Model, bool]:
    """Store and inspect an ONNX model; (row, created). Same bytes again → the existing row."""
    stored = _store(store, stream, settings.max_model_bytes)
    existing = _restore_same_bytes(session, Model, tenant_id, stored.sha256)
    if existing is not None:
        return existing
    info = inspect(load_model_bytes(stored.path.read_bytes()), output)
    names = parse_class_names(class_names)
    if names is not None and info.num_classes is not None and len(names) != info.num_classes:
        raise Unprocessable(
            f"class_names has {len(names)} entries but the model scores {info.num_classes} classes"
        )
    row = Model(
        tenant_id=tenant_id,
        name=name or (filename or "model").rsplit(".", 1)[0],
        version=version,
        sha256=stored.sha256,
        size_bytes=stored.size,
        opset=info.opset,
        input_range=parse_range(input_range),
        requested_output=output,
        class_names=names,
        intake=info.to_dict(),
        backends={
            "torch": {"ok": None, "parity_max_abs_diff": None, "reason": PENDING},
            "onnxruntime": {"ok": None, "reason": PENDING},
        },
    )
    return _insert_or_existing(session, row)


def create_dataset(
    *,
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    tenant_id: str,
    stream: IO[bytes],
    filename: str | None,
    name: str | None,
) -> tuple[Dataset, bool]:
    """Store and check an .npz dataset; (row, created). Same bytes again → the existing row."""
    stored = _store(store, stream, settings.max_dataset_bytes)
    existing = _restore_same_bytes(session, Dataset, tenant_id, stored.sha256)
    if existing is not None:
        return existing
    x, y = load_npz(stored.path, max_member_bytes=settings.max_npz_member_bytes)
    facts = check_arrays(x, y)
    row = Dataset(
        tenant_id=tenant_id,
        name=name or (filename or "dataset").rsplit(".", 1)[0],
        sha256=stored.sha256,
        size_bytes=stored.size,
        n=facts.n,
        shape=facts.shape,
        dtype=facts.dtype,
        num_classes=facts.num_classes,
        value_range=facts.value_range,
    )
    return _insert_or_existing(session, row)


def get_model(*, session: Session, tenant_id: str, model_id: str) -> Model:
    """A live model of this tenant, else 404 (another tenant's and deleted ones included)."""
    row = session.get(Model, model_id)
    if row is None or row.tenant_id != tenant_id or row.deleted_at is not None:
        raise NotFound("model", model_id)
    return row


def get_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """A live dataset of this tenant, else 404."""
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant_id != tenant_id or row.deleted_at is not None:
        raise NotFound("dataset", dataset_id)
    return row


def delete_model(*, session: Session, tenant_id: str, model_id: str) -> None:
    """Hide a model from lists and new audits; audits that used it stay readable."""
    get_model(session=session, tenant_id=tenant_id, model_id=model_id).deleted_at = utcnow()
    session.flush()


def delete_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> None:
    """Hide a dataset from lists and new audits; audits that used it stay readable."""
    get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id).deleted_at = utcnow()
    session.flush()


def list_models(
    *, session: Session, tenant_id: str, limit: int, cursor: str | None, name: str | None
) -> tuple[list[Model], str | None]:
    stmt = select(Model).where(Model.tenant_id == tenant_id, Model.deleted_at.is_(None))
    if name:
        stmt = stmt.where(Model.name == name)
    return paginate(session, stmt, Model, limit=limit, cursor=cursor)


def list_datasets(
    *, session: Session, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[Dataset], str | None]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    return paginate(session, stmt, Dataset, limit=limit, cursor=cursor)


def model_json(row: Model) -> dict[str, Any]:
    intake = row.intake
    out = intake["output"]
    return {
        "id": row.id,
        "name": row.name,
        "version": row.version,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "opset": row.opset,
        "input_range": row.input_range,
        "input": intake["input"],
        "output": {"name": out["name"], "num_classes": out["num_classes"], "kind": out["kind"]},
        "backends": row.backends,
        "class_names": row.class_names,
        "notes": intake.get("notes", []),
        "created_at": row.created_at.isoformat(),
    }


def dataset_json(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "n": row.n,
        "shape": row.shape,
        "dtype": row.dtype,
        "num_classes": row.num_classes,
        "value_range": row.value_range,
        "created_at": row.created_at.isoformat(),
    }

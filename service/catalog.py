"""Service functions for models and datasets: keyword-only, typed, one job each."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, Dataset, Model, WebhookEndpoint, utcnow
from infra.sandbox import ChildRaised, LimitExceeded, Limits, SandboxError, run_sandboxed
from infra.storage import ArtifactStore, StoredArtifact, TooLarge
from robustness.datasets import DatasetFacts, is_array_zip, scan_npz
from robustness.errors import AuditInputError
from robustness.image_datasets import ImageLimits, scan_images
from robustness.onnx_safety import IntakeLimits
from robustness.preprocessing import Preprocessing, resolve_range
from service.errors import NotFound, Problem, Unprocessable
from service.limits import FLOAT32_MAX
from service.pagination import paginate

PENDING = "pending: a worker checks conversion and parity"
INTAKE_TARGET = "robustness.onnx_graph:intake_file"
LIMIT_SETTINGS = {
    "memory": "ROBAUDIT_INTAKE_MEMORY_MB",
    "cpu": "ROBAUDIT_INTAKE_CPU_S",
    "wall": "ROBAUDIT_INTAKE_WALL_S",
}


@contextmanager
def _staged(store: ArtifactStore, stream: IO[bytes], limit: int) -> Iterator[StoredArtifact]:
    """The upload in the store's temp dir; it enters the store only through `store.commit`."""
    try:
        with store.staged(stream, max_bytes=limit) as staged:
            yield staged
    except TooLarge as exc:
        raise Problem(413, "Content Too Large", str(exc)) from exc


def _intake_model(path: Path, output: str | None, settings: Settings) -> dict[str, Any]:
    """Parse, check and inspect the model in a sandbox: it reads that one file, nothing else."""
    limits = Limits(
        memory_bytes=settings.intake_memory_bytes,
        cpu_seconds=settings.intake_cpu_s,
        wall_seconds=settings.intake_wall_s,
        threads=1,
    )
    intake = IntakeLimits(max_nodes=settings.intake_max_nodes, max_depth=settings.intake_max_depth)
    payload = {"path": str(path), "output": output, "limits": asdict(intake)}
    try:
        info: dict[str, Any] = run_sandboxed(INTAKE_TARGET, payload, limits=limits, readable=[path])
    except LimitExceeded as exc:
        raise Unprocessable(
            f"the model was refused: {exc} while reading it (setting "
            f"{LIMIT_SETTINGS.get(exc.limit, exc.limit)}); upload a smaller or simpler graph",
            limit=exc.limit,
        ) from exc
    except ChildRaised as exc:
        if exc.kind in ("ModelRejected", "AuditInputError"):
            raise Unprocessable(exc.message) from exc
        raise Unprocessable(f"the model could not be read: {exc.kind}: {exc.message}") from exc
    except SandboxError as exc:
        raise Unprocessable(f"the model could not be read: {exc}") from exc
    return info


Row = TypeVar("Row", Model, Dataset)
# The soft-deleted rows a tenant reads by id.
Live = TypeVar("Live", Model, Dataset, Audit, WebhookEndpoint)


def _stem(filename: str | None, fallback: str) -> str:
    """A default name from the uploaded file's name, cleaned of what no database stores."""
    text = (filename or "").encode("utf-8", "replace").decode().replace("\x00", "")
    return text.rsplit(".", 1)[0][:200] or fallback


def _restore_same(session: Session, row: Row) -> tuple[Row, bool] | None:
    """The tenant's row for the same bytes (and, for a model, the same metadata), if any:
    (row, created). Deleted rows come back."""
    existing = session.scalar(_same(row))
    if existing is None:
        return None
    created = existing.deleted_at is not None  # uploading deleted bytes restores the object
    existing.deleted_at = None
    return existing, created


def _same(row: Row) -> Select[Row]:
    """The rows a new upload is the same as: its bytes, and a model's metadata too."""
    entity = type(row)
    stmt = select(entity).where(entity.tenant_id == row.tenant_id, entity.sha256 == row.sha256)
    if isinstance(row, Model):
        stmt = stmt.where(Model.variant == row.variant)
    return stmt


def model_variant(
    *,
    name: str,
    version: str | None,
    input_range: list[float],
    output: str | None,
    class_names: list[str] | None,
    preprocessing: dict[str, Any] | None = None,
) -> str:
    """The hash of a model's metadata: the same bytes with another one are another version."""
    meta: dict[str, Any] = {
        "name": name,
        "version": version,
        "input_range": [float(v) for v in input_range],
        "output": output,
        "class_names": class_names,
    }
    if preprocessing is not None:  # absent, not null: rows stored before it keep their hash
        meta["preprocessing"] = preprocessing
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _insert_or_existing(session: Session, row: Row) -> tuple[Row, bool]:
    """Insert: (row, True); if a concurrent upload of the same bytes won, (its row, False)."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        winner = session.scalar(_same(row))
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
    if len(parts) != 2 or not all(map(math.isfinite, parts)) or not parts[0] < parts[1]:
        raise Unprocessable(f"input_range {value!r} must be two finite numbers lo,hi with lo < hi")
    if not parts[1] - parts[0] <= FLOAT32_MAX:  # the engine computes in float32
        raise Unprocessable(
            f"input_range {value!r} is wider than float32 can hold; declare the range the "
            "model's inputs really take, e.g. 0,1 or 0,255"
        )
    return parts


def parse_preprocessing(value: str | dict[str, Any] | list[Any] | None) -> Preprocessing | None:
    """The `preprocessing` field: a JSON object of robustness.preprocessing.Preprocessing."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Unprocessable(
                f"preprocessing is not JSON ({exc.msg}); send an object such as "
                '{"scale": 1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], '
                '"layout": "NCHW"}'
            ) from exc
    if not isinstance(value, dict):
        raise Unprocessable("preprocessing must be a JSON object with scale, mean, std, layout")
    try:
        return Preprocessing.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in ('preprocessing', *e['loc']))}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise Unprocessable(problems) from exc


def _model_range(pre: Preprocessing | None, input_range: str | list[float] | None) -> list[float]:
    """The stored input range: [0, scale] with preprocessing; 422 if they contradict."""
    declared = None if input_range in (None, "") else parse_range(input_range)
    try:
        return resolve_range(pre, declared) or parse_range(None)
    except AuditInputError as exc:
        raise Unprocessable(str(exc)) from exc


def _check_preprocessing(pre: Preprocessing | None, intake: dict[str, Any]) -> None:
    """422 if the declared preprocessing cannot apply to the model's input (channels, rank)."""
    try:
        if pre is not None:
            pre.check_input(intake["input"]["shape"])
    except AuditInputError as exc:
        raise Unprocessable(str(exc)) from exc


def _sibling_intake(
    session: Session, tenant_id: str, sha256: str, output: str | None
) -> dict[str, Any] | None:
    """The intake report of another version of these bytes that read the same output, if any:
    the bytes were checked in the sandbox already."""
    same_output = (
        Model.requested_output.is_(None) if output is None else Model.requested_output == output
    )
    return session.scalar(
        select(Model.intake)
        .where(Model.tenant_id == tenant_id, Model.sha256 == sha256, same_output)
        .limit(1)
    )


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
    preprocessing: str | dict[str, Any] | list[Any] | None = None,
) -> tuple[Model, bool]:
    """Check, inspect and store an ONNX model; (row, created). The same bytes and metadata
    are the existing row; the same bytes with other metadata (preprocessing included) are a
    new row (a version) that shares the stored file."""
    pre = parse_preprocessing(preprocessing)
    value_range = _model_range(pre, input_range)
    names = parse_class_names(class_names)
    pre_json = None if pre is None else pre.model_dump(mode="json")
    with _staged(store, stream, settings.max_model_bytes) as staged:
        row = Model(
            tenant_id=tenant_id,
            name=name or _stem(filename, "model"),
            version=version,
            sha256=staged.sha256,
            input_range=value_range,
            requested_output=output,
            class_names=names,
            preprocessing=pre_json,
        )
        row.variant = model_variant(
            name=row.name,
            version=version,
            input_range=value_range,
            output=output,
            class_names=names,
            preprocessing=pre_json,
        )
        existing = _restore_same(session, row)
        if existing is not None:
            return existing
        info = _sibling_intake(session, tenant_id, staged.sha256, output)
        if info is None:
            info = _intake_model(staged.path, output, settings)
        _check_preprocessing(pre, info)
        num_classes = info["output"]["num_classes"]
        if names is not None and num_classes is not None and len(names) != num_classes:
            raise Unprocessable(
                f"class_names has {len(names)} entries but the model scores {num_classes} classes"
            )
        stored = store.commit(staged)
    row.size_bytes = stored.size
    row.opset = info["opset"]
    row.intake = info
    row.backends = {
        "torch": {"ok": None, "parity_max_abs_diff": None, "reason": PENDING},
        "onnxruntime": {"ok": None, "reason": PENDING},
    }
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
    crop_fraction: float | None = None,
) -> tuple[Dataset, bool]:
    """Check and store an .npz or image zip; (row, created). Same bytes → the existing row."""
    with _staged(store, stream, settings.max_dataset_bytes) as staged:
        probe = Dataset(tenant_id=tenant_id, sha256=staged.sha256)
        existing = _restore_same(session, probe)
        if existing is not None:
            return existing
        facts, class_names = _scan_dataset(staged.path, settings)
        if class_names is None and crop_fraction is not None:
            raise Unprocessable("crop_fraction applies to image datasets only; this is an .npz")
        stored = store.commit(staged)
    row = Dataset(
        tenant_id=tenant_id,
        name=name or _stem(filename, "dataset"),
        sha256=stored.sha256,
        size_bytes=stored.size,
        n=facts.n,
        shape=facts.shape,
        dtype=facts.dtype,
        num_classes=facts.num_classes,
        value_range=facts.value_range,
        format="arrays" if class_names is None else "images",
        class_names=class_names,
        crop_fraction=crop_fraction if class_names is not None else None,
    )
    return _insert_or_existing(session, row)


def _scan_dataset(path: Path, settings: Settings) -> tuple[DatasetFacts, list[str] | None]:
    """The stored facts and, for an image zip, its class names; images are not decoded here.

    An image dataset's sample shape is the model's input, known at audit time: [] here."""
    if is_array_zip(path):
        facts = scan_npz(
            path,
            max_member_bytes=settings.max_npz_member_bytes,
            max_total_bytes=settings.max_npz_total_bytes,
        )
        return facts, None
    index, _pixels = scan_images(path, ImageLimits(max_total_bytes=settings.max_npz_total_bytes))
    facts = DatasetFacts(len(index.files), [], "uint8", len(index.class_names), [0.0, 1.0])
    return facts, index.class_names


def get_model(*, session: Session, tenant_id: str, model_id: str) -> Model:
    """A live model of this tenant, else 404 (another tenant's and deleted ones included)."""
    return live_row(session, Model, tenant_id, model_id, "model")


def get_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """A live dataset of this tenant, else 404."""
    return live_row(session, Dataset, tenant_id, dataset_id, "dataset")


def live_row(session: Session, entity: type[Live], tenant_id: str, row_id: str, what: str) -> Live:
    """The tenant's row by id unless it is deleted; else 404, as if another tenant's row (or
    a deleted one) did not exist."""
    row = session.get(entity, row_id)
    if row is None or row.tenant_id != tenant_id or row.deleted_at is not None:
        raise NotFound(what, row_id)
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
        "preprocessing": row.preprocessing,
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
        "format": row.format,
        "class_names": row.class_names,
        "crop_fraction": row.crop_fraction,
        "created_at": row.created_at.isoformat(),
    }

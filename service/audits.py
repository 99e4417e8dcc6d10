"""Service functions for audits: create (idempotent, deduplicated), read, list, cancel."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, defer, object_session

from infra.config import Settings
from infra.dispatch import WAITING_STAGE, settle, shown_status, waiting
from infra.persistence.models import TERMINAL, Audit, AuditStatus, Dataset, Model, utcnow
from robustness.config import AuditConfig
from robustness.cost import estimate_cost
from robustness.datasets import DatasetFacts, check_fit
from robustness.image_datasets import image_target, target_shape
from robustness.results import AuditResult, LandscapeResult, ResultSummary
from robustness.spec import spec_from_config
from service import idempotency, limits
from service.catalog import get_dataset, get_model, live_row
from service.errors import NotFound, Problem
from service.pagination import paginate
from service.schemas import AuditOut, AuditSummary, CostOut, Passes, Progress


def config_hash(config: AuditConfig) -> str:
    return hashlib.sha256(
        json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


def create_audit(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    model_id: str,
    dataset_id: str,
    config: AuditConfig,
    force: bool,
    idempotency_key: str | None,
) -> tuple[Audit, bool]:
    """(audit, created). Replays of an Idempotency-Key and identical succeeded audits are reused
    (service/idempotency.py: 422, 409); a new audit must fit the operator's caps
    (service/limits.py: 422, 429)."""
    request = idempotency.AuditRequest(model_id, dataset_id, config_hash(config), force)
    replay = idempotency.replay(session, tenant_id, idempotency_key, request)
    if replay is not None:
        return replay, False
    model = get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    dataset = get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    facts = _check_fit(model, dataset)
    limits.check_ranges(config, model.input_range, math.prod(facts.shape))
    digest = request.config_hash
    done = None if force else _same_succeeded(session, tenant_id, model, dataset, digest)
    if done is not None:
        return idempotency.bind(session, tenant_id, idempotency_key, done, request), False
    budget = limits.budget_of(
        session, settings=settings, tenant_id=tenant_id, model=model, config=config, n=dataset.n
    )
    limits.check_budget(budget, settings)
    limits.check_tenant_slots(session, tenant_id, settings)
    audit = Audit(
        tenant_id=tenant_id,
        model_id=model.id,
        dataset_id=dataset.id,
        config=config.model_dump(mode="json"),
        config_hash=digest,
        status=AuditStatus.QUEUED.value,
        progress_total=min(dataset.n, config.max_samples) * (len(config.epsilons) + 1),
    )
    answer = idempotency.bind(session, tenant_id, idempotency_key, audit, request)
    return answer, answer is audit


def _check_fit(model: Model, dataset: Dataset) -> DatasetFacts:
    """The dataset's samples, labels and values fit the model's input, classes and range; the
    facts as the audit will see them (an image dataset is decoded to the model's input)."""
    facts = DatasetFacts(
        dataset.n, dataset.shape, dataset.dtype, dataset.num_classes, dataset.value_range
    )
    if dataset.format == "images":  # decoded to the model's input: its shape, [0, scale]
        target = image_target(
            model.intake["input"]["shape"], model.declared_preprocessing(), dataset.crop_fraction
        )
        facts = replace(facts, shape=target_shape(target), value_range=[0.0, target.scale])
    check_fit(
        model.intake["input"], model.intake["output"]["num_classes"], model.input_range, facts
    )
    return facts


def _same_succeeded(
    session: Session, tenant_id: str, model: Model, dataset: Dataset, digest: str
) -> Audit | None:
    """The latest succeeded audit of the same model, dataset and config, to reuse."""
    return session.scalar(
        select(Audit)
        .where(
            Audit.tenant_id == tenant_id,
            Audit.model_id == model.id,
            Audit.dataset_id == dataset.id,
            Audit.config_hash == digest,
            Audit.status == AuditStatus.SUCCEEDED.value,
            Audit.deleted_at.is_(None),
        )
        .order_by(Audit.created_at.desc())
        .limit(1)
    )


def get_audit(*, session: Session, tenant_id: str, audit_id: str) -> Audit:
    """A live audit of this tenant, else 404 (another tenant's and deleted ones included)."""
    return live_row(session, Audit, tenant_id, audit_id, "audit")


def delete_audit(*, session: Session, tenant_id: str, audit_id: str) -> None:
    """Hide a finished audit from lists, compare, gates and reuse; its row stays (soft delete,
    as for models and datasets). A live audit is refused with 409: cancel it first."""
    audit = get_audit(session=session, tenant_id=tenant_id, audit_id=audit_id)
    if audit.status not in {s.value for s in TERMINAL}:
        raise Problem(
            409,
            "Conflict",
            f"the audit is {audit.status}; cancel it first (POST /v1/audits/{audit_id}/cancel) "
            "and delete it once it is cancelled",
        )
    audit.deleted_at = utcnow()
    session.flush()


def list_audits(
    *,
    session: Session,
    tenant_id: str,
    limit: int,
    cursor: str | None,
    model_id: str | None = None,
    model_name: str | None = None,
    status: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> tuple[list[Audit], str | None]:
    stmt = (
        select(Audit)
        .where(Audit.tenant_id == tenant_id, Audit.deleted_at.is_(None))
        .options(defer(Audit.result))  # a page reads summaries, never whole results
    )
    if model_id:
        stmt = stmt.where(Audit.model_id == model_id)
    if model_name:
        stmt = stmt.join(Model, Model.id == Audit.model_id).where(Model.name == model_name)
    if status:
        stmt = stmt.where(shown_status() == status)
    if created_after:
        stmt = stmt.where(Audit.created_at > created_after)
    if created_before:
        stmt = stmt.where(Audit.created_at < created_before)
    return paginate(session, stmt, Audit, limit=limit, cursor=cursor)


def cancel_audit(*, session: Session, tenant_id: str, audit_id: str) -> Audit:
    """Queued audits stop at once; running ones become `cancelling` until their shards'
    workers have killed their sandboxes (seconds), then `cancelled`."""
    audit = get_audit(session=session, tenant_id=tenant_id, audit_id=audit_id)
    if audit.status in {s.value for s in TERMINAL}:
        raise Problem(409, "Conflict", f"the audit is already {audit.status}")
    now = utcnow()
    session.execute(
        update(Audit)
        .where(Audit.id == audit.id, Audit.status == AuditStatus.QUEUED.value)
        .values(status=AuditStatus.CANCELLED.value, finished_at=now, stage="cancelled")
    )
    session.execute(
        update(Audit)
        .where(Audit.id == audit.id, Audit.status == AuditStatus.RUNNING.value)
        .values(status=AuditStatus.CANCELLING.value)
    )
    session.execute(update(Audit).where(Audit.id == audit.id).values(cancel_requested=True))
    session.flush()
    settle(session, audit.id, None)  # no shard running right now: cancelled already
    session.refresh(audit)
    return audit


def estimate(audit: Audit) -> Passes:
    """Forward/backward passes the audit will spend (before it runs)."""
    spec = spec_from_config(AuditConfig.from_stored(audit.config), audit.model.input_range)
    return Passes.model_validate(estimate_cost(spec, audit.dataset.n).to_dict())


def estimate_with_seconds(*, session: Session, settings: Settings, audit: Audit) -> CostOut:
    """The passes, with the seconds one worker is expected to spend on them and their basis."""
    budget = limits.budget_of(
        session,
        settings=settings,
        tenant_id=audit.tenant_id,
        model=audit.model,
        config=AuditConfig.from_stored(audit.config),
        n=audit.dataset.n,
    )
    return CostOut.model_validate({**estimate(audit).model_dump(), **budget.to_dict()})


def stored_result(row: Audit) -> AuditResult | None:
    """The audit's stored result, typed (rows older than a field get its default)."""
    return AuditResult.model_validate(row.result) if row.result is not None else None


def get_landscape(*, session: Session, tenant_id: str, audit_id: str, k: int) -> LandscapeResult:
    """The k-th landscape of a succeeded audit (grids, and the sha256 of its picture)."""
    audit = get_audit(session=session, tenant_id=tenant_id, audit_id=audit_id)
    result = stored_result(audit)
    if audit.status != AuditStatus.SUCCEEDED.value or result is None:
        raise Problem(409, "Conflict", f"the audit is {audit.status}; landscapes come with success")
    if not 0 <= k < len(result.landscapes):
        raise NotFound("landscape", f"{audit_id}/{k}")
    return result.landscapes[k]


def eta_seconds(row: Audit) -> float | None:
    """Seconds left at the pace so far (None before the first batch, 0 once finished)."""
    if row.status in {s.value for s in TERMINAL}:
        return 0.0
    if row.status != AuditStatus.RUNNING.value or row.started_at is None:
        return None
    if not 0 < row.progress_done <= row.progress_total:
        return None
    elapsed = (utcnow() - row.started_at).total_seconds()
    left = elapsed * (row.progress_total - row.progress_done) / row.progress_done
    return round(left, 1)


def _audit_fields(row: Audit) -> dict[str, Any]:
    """What an audit and its summary share: everything but the result."""
    session = object_session(row)
    status, stage = row.status, row.stage
    if row.status == AuditStatus.RUNNING.value and session is not None and waiting(session, row.id):
        status, stage = AuditStatus.QUEUED.value, WAITING_STAGE  # `running` only while work runs
    return {
        "id": row.id,
        "model_id": row.model_id,
        "dataset_id": row.dataset_id,
        "config": AuditConfig.from_stored(row.config),
        "status": status,  # an AuditStatus value, validated
        "progress": Progress(
            done=row.progress_done,
            total=row.progress_total,
            stage=stage,
            eta_seconds=eta_seconds(row),
        ),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "backend": row.backend,
        "error": row.error,
    }


def audit_out(row: Audit) -> AuditOut:
    """The whole audit, its full result included."""
    return AuditOut(**_audit_fields(row), result=stored_result(row))


def audit_summary(row: Audit) -> AuditSummary:
    """The audit as a list shows it: its result summarised."""
    if row.summary is not None:
        summary: ResultSummary | None = ResultSummary.model_validate(row.summary)
    else:  # a result stored without its summary (before it was kept): derived here
        result = stored_result(row)
        summary = result.summary() if result is not None else None
    return AuditSummary(**_audit_fields(row), result=summary)

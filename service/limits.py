"""Operator budgets: per-audit caps (passes, expected seconds, ε against the input range) and
per-tenant quotas (running and queued audits, stored bytes). Over a cap the API answers 422,
429 or 413 with the limit, the figure that broke it and what to change (issue 10)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditStatus, Dataset, Model
from robustness.config import AuditConfig, Norm
from robustness.cost import estimate_cost
from robustness.spec import spec_from_config
from service.errors import Problem, Unprocessable

# How many of the model's latest succeeded audits give its measured throughput.
THROUGHPUT_WINDOW = 5
# float32 (the engine's dtype) overflows above this; ε·dims must stay below it.
FLOAT32_MAX = 3.4028234663852886e38
RETRY_AFTER_FLOOR_S = 5
RETRY_AFTER_CEILING_S = 3600
# In flight: waiting, working, or being stopped (a cancelling audit still holds workers).
QUEUED, RUNNING = AuditStatus.QUEUED.value, AuditStatus.RUNNING.value
CANCELLING = AuditStatus.CANCELLING.value


class RetryLater(Problem):
    """429 with a Retry-After header (service/ratelimit.py registers its handler)."""

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(429, "Too Many Requests", detail, retry_after_s=retry_after, **extra)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Budget:
    """What an audit will cost: passes, and seconds of one worker at the stated throughput."""

    forward_passes: int
    backward_passes: int
    passes_per_second: float
    basis: Literal["measured", "default"]

    @property
    def passes(self) -> int:
        return self.forward_passes + self.backward_passes

    @property
    def seconds(self) -> float:
        return self.passes / self.passes_per_second

    def to_dict(self) -> dict[str, Any]:
        return {
            "expected_seconds": round(self.seconds, 3),
            "passes_per_second": round(self.passes_per_second, 1),
            "basis": self.basis,
        }


def audit_passes(config: AuditConfig, input_range: Sequence[float], n: int) -> int:
    cost = estimate_cost(spec_from_config(config, input_range), n)
    return cost.forward_passes + cost.backward_passes


def _compute_seconds(result: Mapping[str, Any] | None) -> float:
    """Seconds the engine spent on a finished audit, summed over its shards and stages."""
    stages = ((result or {}).get("timing") or {}).get("stages") or {}
    return float(sum(v for v in stages.values() if isinstance(v, int | float)))


def measured_throughput(session: Session, *, tenant_id: str, model: Model) -> float | None:
    """Passes per second of this model's latest succeeded audits (their estimate over their
    engine seconds); None before the model has any."""
    rows = session.scalars(
        select(Audit)
        .where(
            Audit.tenant_id == tenant_id,
            Audit.model_id == model.id,
            Audit.status == AuditStatus.SUCCEEDED.value,
        )
        .order_by(Audit.finished_at.desc())
        .limit(THROUGHPUT_WINDOW)
    ).all()
    passes = seconds = 0.0
    for row in rows:
        spent = _compute_seconds(row.result)
        if spent > 0:
            config = AuditConfig.from_stored(row.config)
            passes += audit_passes(config, model.input_range, row.dataset.n)
            seconds += spent
    return passes / seconds if seconds > 0 else None


def budget_of(
    session: Session,
    *,
    settings: Settings,
    tenant_id: str,
    model: Model,
    config: AuditConfig,
    n: int,
) -> Budget:
    """The audit's passes, and its seconds at this model's measured throughput if known."""
    cost = estimate_cost(spec_from_config(config, model.input_range), n)
    measured = measured_throughput(session, tenant_id=tenant_id, model=model)
    return Budget(
        forward_passes=cost.forward_passes,
        backward_passes=cost.backward_passes,
        passes_per_second=measured or settings.default_passes_per_s,
        basis="measured" if measured else "default",
    )


def check_ranges(config: AuditConfig, input_range: Sequence[float], dims: int) -> None:
    """ε and step size against the model's input range: beyond it they mean nothing, and
    huge finite values overflow float32 inside the attack (ε = 1e300 used to give a 500).

    L∞: ε ≤ hi − lo, the box's side. L2: ε ≤ (hi − lo)·√d, the box's diameter; so ε/√d, the
    per-coordinate share of an L2 ball, stays within the side, as it does for L∞."""
    lo, hi = float(input_range[0]), float(input_range[1])
    side = hi - lo
    l2 = config.norm == Norm.L2
    limit = side * math.sqrt(dims) if l2 else side
    what = f"the input range [{lo:g}, {hi:g}]" + (
        f" over {dims} input values (diameter (hi − lo)·√d)" if l2 else " (side hi − lo)"
    )
    for eps in config.epsilons:
        if not eps <= limit or not eps * dims < FLOAT32_MAX:
            raise Unprocessable(
                f"epsilon {eps:g} is larger than {what}, {limit:g}: an {config.norm} ball "
                f"that wide covers every input; send epsilons ≤ {limit:g}",
                limit={"name": "epsilon", "max": limit},
            )
    step = config.step_size
    if step is not None and not step <= limit:
        raise Unprocessable(
            f"step_size {step:g} is larger than {what}, {limit:g}; send a step_size ≤ {limit:g} "
            "or null (2.5·ε/steps)",
            limit={"name": "step_size", "max": limit},
        )


def check_budget(budget: Budget, settings: Settings) -> None:
    """422 when the audit alone is over the operator's per-audit caps."""
    change = (
        "lower max_samples, steps, restarts or the number of epsilons, or drop baselines "
        "or landscape samples"
    )
    estimate = {"passes": budget.passes, **budget.to_dict()}
    if budget.passes > settings.max_audit_passes:
        raise Unprocessable(
            f"the audit is too large: {budget.passes:,} forward and backward passes, over the "
            f"limit of {settings.max_audit_passes:,} per audit; {change}",
            limit={"name": "max_audit_passes", "max": settings.max_audit_passes},
            estimate=estimate,
        )
    if budget.seconds > settings.max_audit_seconds:
        raise Unprocessable(
            f"the audit is too long: about {budget.seconds:,.0f} s expected ({budget.basis} "
            f"throughput, {budget.passes_per_second:,.0f} passes/s), over the limit of "
            f"{settings.max_audit_seconds:,.0f} s per audit; {change}",
            limit={"name": "max_audit_seconds", "max": settings.max_audit_seconds},
            estimate=estimate,
        )


def _active_counts(session: Session, tenant_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Audit.status, func.count())
        .where(Audit.tenant_id == tenant_id, Audit.status.in_((QUEUED, RUNNING, CANCELLING)))
        .group_by(Audit.status)
    ).all()
    return {str(status): int(count) for status, count in rows}


def _retry_after(session: Session, tenant_id: str, settings: Settings) -> int:
    """Seconds until a slot likely frees: the least expected remaining time of the tenant's
    running audits (default throughput), within [5 s, 1 h]."""
    running = session.scalars(
        select(Audit).where(Audit.tenant_id == tenant_id, Audit.status == AuditStatus.RUNNING.value)
    ).all()
    remaining = [
        audit_passes(AuditConfig.from_stored(a.config), a.model.input_range, a.dataset.n)
        / settings.default_passes_per_s
        * (1 - a.progress_done / max(1, a.progress_total))
        for a in running
    ]
    wait = min(remaining, default=float(RETRY_AFTER_CEILING_S))
    return int(min(max(math.ceil(wait), RETRY_AFTER_FLOOR_S), RETRY_AFTER_CEILING_S))


def check_tenant_slots(session: Session, tenant_id: str, settings: Settings) -> None:
    """429 when the tenant already has as many audits waiting as the queue cap allows, or as
    many in flight (running + queued) as both caps together."""
    counts = _active_counts(session, tenant_id)
    queued = counts.get(QUEUED, 0)
    running = counts.get(RUNNING, 0) + counts.get(CANCELLING, 0)
    cap = settings.max_running_audits + settings.max_queued_audits
    if queued < settings.max_queued_audits and queued + running < cap:
        return
    broken = "max_queued_audits" if queued >= settings.max_queued_audits else "max_running_audits"
    raise RetryLater(
        f"too many audits in flight: {running} running (limit {settings.max_running_audits}) "
        f"and {queued} queued (limit {settings.max_queued_audits}); wait for one to finish, "
        "or cancel one (POST /v1/audits/{id}/cancel)",
        _retry_after(session, tenant_id, settings),
        limit={"name": broken, "max": getattr(settings, broken)},
        running=running,
        queued=queued,
    )


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's models and datasets; deleting one frees its share. Model versions
    that share their bytes share one stored file: counted once."""
    total = 0
    for entity in (Model, Dataset):
        files = (
            select(entity.sha256, entity.size_bytes)
            .where(entity.tenant_id == tenant_id, entity.deleted_at.is_(None))
            .distinct()
            .subquery()
        )
        total += session.scalar(select(func.coalesce(func.sum(files.c.size_bytes), 0))) or 0
    return int(total)


def _stored_already(session: Session, tenant_id: str, entity: type[Model] | type[Dataset],
                    stream: IO[bytes]) -> bool:  # fmt: skip
    """Whether the tenant holds these exact bytes live: uploading them again adds nothing."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    stream.seek(0)
    return (
        session.scalar(
            select(entity.id)
            .where(
                entity.tenant_id == tenant_id,
                entity.sha256 == digest.hexdigest(),
                entity.deleted_at.is_(None),
            )
            .limit(1)
        )
        is not None
    )


def check_upload(
    session: Session,
    tenant_id: str,
    settings: Settings,
    entity: type[Model] | type[Dataset],
    stream: IO[bytes],
) -> None:
    """413 when this upload (already spooled by the form parser) would take the tenant over
    its stored-bytes quota; the same bytes again are an existing object, never refused."""
    stream.seek(0, 2)
    incoming = stream.tell()
    stream.seek(0)
    used = stored_bytes(session, tenant_id)
    quota = settings.max_tenant_stored_bytes
    if used + incoming <= quota or _stored_already(session, tenant_id, entity, stream):
        return
    raise Problem(
        413,
        "Content Too Large",
        f"storage quota exceeded: this tenant stores {used:,} bytes of models and datasets, "
        f"the upload adds {incoming:,} and the quota is {quota:,} bytes; delete models or "
        "datasets you no longer need (DELETE /v1/models/{id}, /v1/datasets/{id})",
        limit={"name": "max_tenant_stored_bytes", "max": quota, "used": used},
    )

"""`latest:MODEL_NAME` as a baseline: the newest succeeded, undeleted audit of that model name
that measured with the candidate's threat model.

"The same threat model" is robustness.compare.measured_differently, the rule every verdict
uses (backend, search, norm, normalization, ε, search settings, dataset, preprocessing).
A degenerate baseline is not skipped: the verdict then says so, and the gate cannot judge.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.persistence.models import Audit, AuditStatus, Model
from robustness.compare import measured_differently
from robustness.config import AuditConfig
from service.audits import get_audit, stored_result
from service.errors import Problem

LATEST = "latest:"
SCANNED = 200  # newest succeeded audits of the name on the candidate's dataset


def resolve(session: Session, tenant_id: str, baseline: str, candidate_id: str) -> str:
    """`baseline` itself, or for `latest:NAME` the id of the audit it names; 404 if none."""
    if not baseline.startswith(LATEST):
        return baseline
    name = baseline.removeprefix(LATEST)
    candidate = get_audit(session=session, tenant_id=tenant_id, audit_id=candidate_id)
    cand_result = stored_result(candidate)
    if candidate.status != AuditStatus.SUCCEEDED.value or cand_result is None:
        raise Problem(
            409, "Conflict", f"audit {candidate.id} is {candidate.status}; only succeeded "
            "audits compare",
        )  # fmt: skip
    cand_config = AuditConfig.from_stored(candidate.config)
    # The same dataset (by sha256) is the same row of a tenant: filter on it in SQL.
    rows = session.scalars(
        select(Audit)
        .join(Model, Model.id == Audit.model_id)
        .where(
            Audit.tenant_id == tenant_id,
            Model.name == name,
            Audit.status == AuditStatus.SUCCEEDED.value,
            Audit.deleted_at.is_(None),  # a deleted audit is never a baseline again
            Audit.dataset_id == candidate.dataset_id,
            Audit.id != candidate.id,
            Audit.created_at <= candidate.created_at,
        )
        .order_by(Audit.created_at.desc(), Audit.id.desc())
        .limit(SCANNED)
    )
    for row in rows:
        result = stored_result(row)
        if result is None:
            continue
        config = AuditConfig.from_stored(row.config)
        if not measured_differently(result, cand_result, config, cand_config):
            return row.id
    raise Problem(
        404,
        "Not Found",
        f"no succeeded audit of a model named {name!r}, older than audit {candidate.id}, "
        "measured like it (backend, search, norm, normalization, ε, search settings, dataset "
        "and preprocessing); audit a baseline with the same settings first, or name its id",
    )

"""Idempotency-Key on POST /v1/audits (draft-ietf-httpapi-idempotency-key-header, as Stripe
does it): a key binds the first request sent with it to the audit that answered it, whether
that audit was created or an identical succeeded one was reused. The same request again gets
that audit; another request with the key (model, dataset, config or `force`) is a 422, and a
key whose audit was deleted since is a 409: running the request again under the same key would
break the key's promise that it runs at most once.

A key has its own row, not a column of the audit: a reused audit answers many keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.persistence.models import Audit, IdempotencyKey
from service.errors import Problem, Unprocessable


@dataclass(frozen=True)
class AuditRequest:
    """What a POST /v1/audits asks for: everything a replay of its key must repeat. The bound
    audit holds the first three (created or reused, it matches them); the key's row, `force`."""

    model_id: str
    dataset_id: str
    config_hash: str
    force: bool


def replay(
    session: Session, tenant_id: str, key: str | None, request: AuditRequest
) -> Audit | None:
    """The audit this key answered with, if it was used before (None for a new key or none).
    422 when the key came with another request, 409 when its audit was deleted since."""
    if not key:
        return None
    found = session.execute(
        select(IdempotencyKey, Audit)
        .join(Audit, Audit.id == IdempotencyKey.audit_id)
        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
    ).first()
    if found is None:
        return None
    bound, audit = found
    _check_same_request(bound, audit, request)
    if audit.deleted_at is not None:
        raise Problem(
            409,
            "Conflict",
            f"audit {audit.id}, which this Idempotency-Key answered, was deleted; send a new key "
            "to run the request again",
        )
    return audit


def _check_same_request(bound: IdempotencyKey, audit: Audit, request: AuditRequest) -> None:
    """Reuse of a key with another payload is the client's error, not a replay (the draft's 422)."""
    asked = (request.model_id, request.dataset_id, request.config_hash)
    if (audit.model_id, audit.dataset_id, audit.config_hash) != asked:
        raise Unprocessable(
            f"this Idempotency-Key was used for audit {audit.id} with another model, dataset "
            "or config; send a new key for a different request"
        )
    if bound.force is not None and bound.force != request.force:
        raise Unprocessable(
            f"this Idempotency-Key was used for audit {audit.id} with force "
            f"{str(bound.force).lower()}; send a new key for a different request"
        )


def bind(
    session: Session, tenant_id: str, key: str | None, audit: Audit, request: AuditRequest
) -> Audit:
    """`audit` as the request's answer: a new one is added, a reused one is already stored; a
    key is bound to it. If a concurrent request bound the key first, its audit, checked as any
    replay is (a racing request with another body is a 422 too)."""
    try:
        with session.begin_nested():
            session.add(audit)
            if key:
                session.flush()  # a new audit's id, for the key's row
                session.add(
                    IdempotencyKey(
                        tenant_id=tenant_id, key=key, audit_id=audit.id, force=request.force
                    )
                )
    except IntegrityError:
        # The lookup before saw no key; a concurrent request bound it since (PostgreSQL made
        # this insert wait for that one's commit): the key now answers with its audit.
        won = replay(session, tenant_id, key, request)
        if won is None:
            raise
        return won
    return audit

"""API keys: 256-bit random secrets, stored only as sha256, sent as `Authorization: Bearer`."""

from __future__ import annotations

import hashlib
import secrets

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.persistence.models import ApiKey, Tenant
from service.db import db
from service.errors import Problem
from service.ratelimit import count_bad_key

PREFIX = "ra_"


def hash_key(key: str) -> str:
    # A fast hash is right here: the keys are 256-bit random, not guessable passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, session: Session, tenant_name: str, label: str | None = None) -> str:
    """Create (or reuse) the tenant and return a new API key; only its hash is stored."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10], label=label))
    session.flush()
    return key


def authenticate() -> None:
    """before_request hook of the API blueprints: sets g.tenant_id or answers 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key:
        count_bad_key()
        raise Problem(
            401,
            "Unauthorized",
            "send an API key as 'Authorization: Bearer <key>' (create one with "
            "`robaudit keys create --tenant NAME`)",
        )
    row = db.session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key.strip()), ApiKey.revoked_at.is_(None))
    )
    if row is None:
        count_bad_key()
        raise Problem(401, "Unauthorized", "the API key is unknown or revoked")
    g.tenant_id = row.tenant_id


def tenant_id() -> str:
    value: str = g.tenant_id
    return value

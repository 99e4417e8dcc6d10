"""Keyset pagination, newest first, on (created_at, id) with an opaque cursor."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from service.errors import Problem

T = TypeVar("T")


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, ident = json.loads(raw)
        created = datetime.fromisoformat(stamp)
    except Exception as exc:
        raise Problem(400, "Bad Request", "the cursor is not one this API returned") from exc
    # Cursors this API writes carry an aware time and a plain id; anything else was forged
    # and would reach the database as a naive time or a NUL byte (a 500 on PostgreSQL).
    if created.tzinfo is None or not isinstance(ident, str) or "\x00" in ident:
        raise Problem(400, "Bad Request", "the cursor is not one this API returned")
    return created, ident


def paginate(
    session: Session, stmt: Select[T], entity: Any, *, limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """One page of `stmt` and the cursor of the next page (None on the last one)."""
    if cursor:
        stamp, ident = decode_cursor(cursor)
        stmt = stmt.where(
            or_(entity.created_at < stamp, and_(entity.created_at == stamp, entity.id < ident))
        )
    stmt = stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)  # type: ignore[attr-defined]

"""Operations: /healthz, /readyz, /openapi.json (no auth)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from sqlalchemy import text

from infra.queue import broker_reachable
from service.api.common import json_response, settings
from service.db import db

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, str] = {}
    ok = True
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        ok, checks["database"] = False, f"unreachable: {type(exc).__name__}"
    broker_ok, what = broker_reachable(settings())
    checks["broker"] = "ok" if broker_ok else what
    ok = ok and broker_ok
    return json_response(
        {"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503
    )


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(current_app.api_doc)  # type: ignore[attr-defined]

"""Operations: /healthz, /readyz, /openapi.json (no auth, no rate limit)."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag
from sqlalchemy import text

from infra.queue import broker_reachable
from service.api.common import json_response, settings
from service.db import db
from service.schemas import Health, Readiness

bp = APIBlueprint(
    "ops",
    __name__,
    abp_tags=[Tag(name="ops", description="Probes for orchestrators; no API key needed.")],
)


@bp.get("/healthz", responses={200: Health})
def healthz() -> Response:
    """Liveness: the API process answers."""
    return json_response(Health(status="ok"))


@bp.get(
    "/readyz",
    responses={200: Readiness, 503: Readiness},
    description=(
        "Answers 503 when either is not; audits are still accepted while only the broker is "
        "down, and sent once it is back."
    ),
)
def readyz() -> Response:
    """Readiness: the database and the broker are reachable."""
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
    body = Readiness(status="ready" if ok else "unavailable", checks=checks)
    return json_response(body, 200 if ok else 503)


# OpenAPI links: what a create answers leads to the operations on the created object (clients
# and stateful testers follow them).
LINKS: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]] = {
    ("/v1/models", "post"): ("model_id", [("get", ""), ("delete", "")]),
    ("/v1/datasets", "post"): ("dataset_id", [("get", ""), ("delete", "")]),
    ("/v1/audits", "post"): (
        "audit_id",
        [("get", ""), ("post", "/cancel"), ("get", "/report.json"), ("delete", "")],
    ),
}


def with_links(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with LINKS on each create's success answers (idempotent)."""
    paths = doc["paths"]
    for (path, method), (param, targets) in LINKS.items():
        links = {}
        for target_method, suffix in targets:
            target = paths[f"{path}/{{{param}}}{suffix}"][target_method]
            name = f"{target_method}{suffix.replace('/', '_').replace('.', '_')}".title()
            links[name.replace("_", "")] = {
                "operationId": target["operationId"],
                "parameters": {param: "$response.body#/id"},
            }
        for code, answer in paths[path][method]["responses"].items():
            if code.startswith("2"):
                answer["links"] = links
    return doc


@bp.get("/openapi.json", doc_ui=False)
def openapi() -> Response:
    """This document."""
    return jsonify(with_links(current_app.api_doc))  # type: ignore[attr-defined]

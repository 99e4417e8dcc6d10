"""Helpers shared by the route modules."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from service.auth import authenticate
from service.config import Settings
from service.errors import PROBLEM
from service.storage import ArtifactStore

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
PROBLEM_RESPONSES: dict[int | str, Any] = {
    401: {"description": "Missing or unknown API key", "content": {PROBLEM: {}}},
    404: {"description": "Not found, or another tenant's", "content": {PROBLEM: {}}},
    422: {"description": "Invalid input; `detail` says what to fix", "content": {PROBLEM: {}}},
}


def blueprint(name: str, prefix: str) -> APIBlueprint:
    bp = APIBlueprint(
        name,
        __name__,
        url_prefix=prefix,
        abp_tags=[Tag(name=name)],
        abp_security=SECURITY,
        abp_responses=PROBLEM_RESPONSES,
    )
    bp.before_request(authenticate)
    return bp


def settings() -> Settings:
    value: Settings = current_app.config["ROBAUDIT_SETTINGS"]
    return value


def store() -> ArtifactStore:
    value: ArtifactStore = current_app.extensions["robaudit.store"]
    return value


def json_response(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response

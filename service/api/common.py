"""Helpers shared by the route modules."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.utils import run_validate_response
from pydantic import BaseModel

from infra.config import Settings
from infra.storage import ArtifactStore
from service.auth import authenticate
from service.errors import PROBLEM, Problem

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
# RFC 9457; some problems add members (`errors`, `limit`, `retry_after_s`).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong and what to change"},
    },
    "additionalProperties": True,
}


def problem(description: str) -> dict[str, Any]:
    """An error answer in the OpenAPI document: problem+json with `description`."""
    return {"description": description, "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}


# What any authenticated route may answer besides its own results.
PROBLEM_RESPONSES: dict[int | str, Any] = {
    401: problem("Missing, unknown or revoked API key"),
    404: problem("No such object, or another tenant's or a deleted one"),
    413: problem("The request body is over the size limit"),
    422: problem("Invalid input; `detail` says which field and what to fix"),
    429: problem("Over the rate limit or a tenant quota; retry after `Retry-After` seconds"),
    503: problem("The database is unreachable; retry later"),
}
BAD_CURSOR: dict[int | str, Any] = {400: problem("The `cursor` is not one this API returned")}
CONFLICT = problem("The audit is not in a state that allows this; `detail` says which")


def blueprint(name: str, prefix: str, description: str) -> APIBlueprint:
    """A blueprint of authenticated routes, tagged `name` in the OpenAPI document."""
    bp = APIBlueprint(
        name,
        __name__,
        url_prefix=prefix,
        abp_tags=[Tag(name=name, description=description)],
        abp_security=SECURITY,
        abp_responses=PROBLEM_RESPONSES,
    )
    bp.before_request(authenticate)
    bp.before_request(cap_body)
    return bp


def cap_body() -> None:
    """Refuse an oversized non-upload body (413) before anything reads or parses it.

    Uploads (multipart) keep the app-wide MAX_CONTENT_LENGTH and stream to disk under their
    own per-file limits; every other body (JSON) gets `max_json_bytes`, also when it comes
    chunked without a Content-Length.
    """
    if request.mimetype == "multipart/form-data":
        return
    limit = settings().max_json_bytes
    too_large = Problem(
        413,
        "Content Too Large",
        f"the request body has {request.content_length or 'more than ' + str(limit)} bytes; the "
        f"limit for a JSON body is {limit} bytes (ROBAUDIT_MAX_JSON_KB)",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    if request.content_length is None and request.method in ("POST", "PUT", "PATCH"):
        # Chunked: werkzeug stops reading one byte past the limit; that byte means too large.
        request.max_content_length = limit + 1
        if len(request.get_data(cache=True)) > limit:
            raise too_large


def settings() -> Settings:
    value: Settings = current_app.config["ROBAUDIT_SETTINGS"]
    return value


def store() -> ArtifactStore:
    value: ArtifactStore = current_app.extensions["robaudit.store"]
    return value


def validate_json_response(response: Any, responses: dict[Any, Any] | None = None) -> Any:
    """The app's response check (validate_response): the JSON body against the route's model
    for its status. flask-openapi3's own check parses the body with the json module and then
    validates the dicts; pydantic-core parses and validates in one pass, at about half the
    cost on a 27 KB audit. Anything but a JSON Response goes to the library's check."""
    model = (responses or {}).get(getattr(response, "status_code", None))
    if not isinstance(response, Response) or response.mimetype != "application/json":
        return run_validate_response(response, responses)
    if isinstance(model, type) and issubclass(model, BaseModel):
        model.model_validate_json(response.get_data())
    return response


def json_response(body: BaseModel, status: int = 200) -> Response:
    """The response model as JSON; the app validates it against the route's declared model."""
    # Serialized by pydantic-core in one pass: a third of a large audit's time went to
    # model_dump and then the json module (benchmarks/README.md, API load).
    return Response(body.model_dump_json(), status=status, mimetype="application/json")

"""RFC 9457 problem+json for every error the API answers."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, json, request
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from robustness.errors import AuditInputError

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An error with an HTTP status and a detail that tells the user what to fix."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


class NotFound(Problem):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(404, "Not Found", f"no {what} with id {ident!r}")


class Unprocessable(Problem):
    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(422, "Unprocessable Content", detail, **extra)


def problem_response(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {
        "type": f"https://robaudit.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM)


def validation_problem(exc: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: pydantic errors as problem+json."""
    errors = [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    return problem_response(422, "Unprocessable Content", f"{where}: {first['msg']}", errors=errors)


# The UI sets this to its HTML error page (service/ui): a person in a browser gets a page.
PAGE_ERROR = "robaudit.page_error"


def _answer(app: Flask, status: int, title: str, detail: str) -> Response:
    """problem+json, or the UI's error page for a browser's request under /ui/ (a mistyped
    page, a wrong method, the database down). A script's fetch (Accept */*) keeps JSON."""
    page = app.extensions.get(PAGE_ERROR)
    wants_page = request.accept_mimetypes.best_match([PROBLEM, "text/html"]) == "text/html"
    if page is not None and wants_page and request.path.startswith("/ui/"):
        response: Response = page(status, detail)
        return response
    return problem_response(status, title, detail)


def register(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, **exc.extra)

    @app.errorhandler(AuditInputError)
    def _input(exc: AuditInputError) -> Response:
        return problem_response(422, "Unprocessable Content", str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if exc.response is not None and exc.response.mimetype == PROBLEM:
            return exc.response  # type: ignore[return-value]
        status = exc.code or 500
        detail = exc.description or exc.name
        if status == 413:
            limit = request.max_content_length
            detail = f"the request body exceeds the limit of {limit} bytes"
        response = _answer(app, status, exc.name, detail)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # RFC 9110 requires it
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        app.logger.warning("database unreachable: %s", type(exc.orig).__name__)
        response = _answer(
            app, 503, "Service Unavailable", "the database is unreachable; retry in a few seconds"
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return _answer(app, 500, "Internal Server Error", "an unexpected error occurred")

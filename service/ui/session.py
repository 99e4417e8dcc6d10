"""Signing in with an API key: a signed, HttpOnly, SameSite=Strict session cookie holding the
key's sha256 (never the key), a per-session CSRF token on every POST, and strict headers."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from flask import g, jsonify, redirect, render_template, request, session, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from infra.config import Settings
from infra.persistence.models import ApiKey
from service.auth import hash_key
from service.db import db
from service.ratelimit import count_bad_key
from service.ui.blueprint import bp

PUBLIC = frozenset({"ui.signin", "ui.static"})
# The UI's own assets only: no inline script or style, no framing, forms post back here only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The report is one self-contained file (inline style, data: pictures); it runs no script.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


def secret_key(settings: Settings) -> str:
    """ROBAUDIT_SECRET_KEY, else a random key generated once into the data dir (mode 0600),
    shared by every process that uses that dir."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = settings.data_dir / "secret_key"
    if not path.exists():
        _create_once(path, secrets.token_hex(32))
    return path.read_text().strip()


def _create_once(path: Path, value: str) -> None:
    """Write `value` to `path` unless another process got there first (link is atomic)."""
    tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    token: str = session["csrf"]
    return token


@bp.app_context_processor
def _template_globals() -> dict[str, object]:
    return {"csrf_token": csrf_token}


@bp.before_request
def _guard() -> Response | None:
    """CSRF on every POST; outside sign-in, a live key in the session or back to sign-in."""
    if request.method == "POST":
        sent = request.form.get("csrf", "")
        if not sent or not secrets.compare_digest(sent, session.get("csrf", "")):
            return page_error(400, "The form has expired. Reload the page and try again.")
    if request.endpoint in PUBLIC:
        return None
    row = None
    if "key" in session:
        row = db.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == session["key"], ApiKey.revoked_at.is_(None))
        )
    if row is None:
        session.pop("key", None)  # revoked since: signed out
        if request.endpoint == "ui.progress":
            return _json_error(401, "signed out: sign in again")
        return redirect(url_for("ui.signin", next=request.full_path.rstrip("?")))
    g.tenant_id = row.tenant_id
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"  # tenant data stays out of caches
    return response


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Response | tuple[str, int] | str:
    """A form posting the API key; a known, unrevoked key opens a session for its tenant."""
    target = _safe_next(request.values.get("next", ""))
    if request.method == "GET":
        return render_template("ui/signin.html", next=target, error=None)
    key = request.form.get("api_key", "").strip()
    row = None
    if key:
        row = db.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        )
    if row is None:
        count_bad_key()  # guessing keys here is limited as on the API
        error = "Enter an API key." if not key else "That API key is unknown or revoked."
        return render_template("ui/signin.html", next=target, error=error), 401
    session.clear()  # a fresh session, and a fresh CSRF token, for the signed-in user
    session["key"] = row.key_hash
    session["prefix"] = row.prefix
    csrf_token()
    return redirect(target or url_for("ui.audits_page"))


@bp.post("/signout")
def signout() -> Response:
    session.clear()
    return redirect(url_for("ui.signin"))


def _safe_next(value: str) -> str:
    """Only a path of this UI: never another host (`//evil`, `https://…`)."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/ui/") or "\\" in value:
        return ""
    return value


def page_error(status: int, detail: str) -> Response:
    response = Response(
        render_template("ui/error.html", status=status, detail=detail), status=status
    )
    response.mimetype = "text/html"
    return response


def _json_error(status: int, detail: str) -> Response:
    response = jsonify({"status": status, "detail": detail})
    response.status_code = status
    return response

"""The web UI: server-rendered pages over the same service functions as the API.

Signed in with an API key, kept (as its sha256) in a signed session cookie; every asset is
served by the app, so the pages work offline. Routes live under /ui; `/` leads there.
"""

from __future__ import annotations

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from infra.config import Settings
from service.errors import PAGE_ERROR
from service.ui import pages, session
from service.ui.blueprint import bp

__all__ = ["bp", "init_app", "pages"]


def init_app(app: Flask, settings: Settings) -> None:
    """Mount the UI: a session secret, strict cookies, the blueprint, and `/` → the audits."""
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = session.secret_key(settings)
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="robaudit_session",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
    )
    app.register_blueprint(bp)
    app.add_url_rule("/", "ui_home", _home)
    # errors the blueprint never sees (no route matched, the database down) as pages too
    app.extensions[PAGE_ERROR] = session.page_error


def _home() -> Response:
    return redirect(url_for("ui.audits_page"))

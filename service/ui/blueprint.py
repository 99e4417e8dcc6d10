"""The UI's blueprint, its static files (service/static/ui) and templates (templates/ui)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint

STATIC = Path(__file__).resolve().parent.parent / "static" / "ui"

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    static_folder=str(STATIC),
    static_url_path="/static",
)

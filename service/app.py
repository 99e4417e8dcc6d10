"""The application factory: create_app(config) builds a configured, unconnected app."""

from __future__ import annotations

from typing import Any

from flask_openapi3 import Info, OpenAPI

from infra.config import Settings
from infra.logging import configure_logging
from infra.queue import make_celery
from infra.storage import ArtifactStore
from service import errors, ratelimit, telemetry
from service.api import audits, compare, datasets, models, ops
from service.db import db

SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "API key"}}


def create_app(config: dict[str, Any] | None = None) -> OpenAPI:
    """Build the API. `config` may hold ROBAUDIT_SETTINGS (a Settings) or Flask keys."""
    config = dict(config or {})
    configure_logging()
    settings: Settings = config.pop("ROBAUDIT_SETTINGS", None) or Settings.from_env()
    settings.ensure_dirs()
    app = OpenAPI(
        __name__,
        info=Info(title="robaudit", version="1", description=__doc__ or ""),
        security_schemes=SECURITY_SCHEMES,  # type: ignore[arg-type]
        validation_error_callback=errors.validation_problem,
        doc_prefix="/docs",
    )
    app.config.update(
        ROBAUDIT_SETTINGS=settings,
        DATABASE_URL=settings.database_url,
        MAX_CONTENT_LENGTH=max(settings.max_model_bytes, settings.max_dataset_bytes) + (1 << 20),
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)
    telemetry.init_app(app)  # first: its hooks time and tag everything after them
    db.init_app(app)
    app.extensions["robaudit.store"] = ArtifactStore(settings.artifact_dir)
    app.extensions["robaudit.celery"] = make_celery(settings, name="robaudit-api")
    errors.register(app)
    app.register_blueprint(ops.bp)
    for module in (models, datasets, audits, compare):
        app.register_api(module.bp)
    ratelimit.init_app(app, settings, exempt=(ops.bp,))
    return app

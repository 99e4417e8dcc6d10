"""The application factory: create_app(config) builds a configured, unconnected app."""

from __future__ import annotations

from typing import Any

from flask_openapi3 import Info, OpenAPI

from infra.config import Settings
from infra.logging import configure_logging
from infra.queue import make_celery
from infra.storage import ArtifactStore
from service import errors, ratelimit, telemetry, ui
from service.api import audits, compare, datasets, models, ops, webhooks
from service.api.common import validate_json_response
from service.db import db

DESCRIPTION = """\
robaudit measures the adversarial robustness of ONNX classifiers.

Upload a model (`POST /v1/models`) and a labelled dataset (`POST /v1/datasets`), then queue
an audit (`POST /v1/audits`). For each ε in the audit's config, a worker searches the ε-ball
around every sample for the input that moves the model's prediction furthest, and reports
that divergence (KL between the predictions; Yu et al., IJCAI 2019): **lower means more
robust**. Clean, FGSM and PGD accuracy are reported beside it, with diagnostics that say
when the search cannot be trusted (gradient masking, a degenerate model).

Follow an audit with `GET /v1/audits/{id}`; read its report at `…/report`; gate a release
with `GET /v1/compare`, which says `regressed` only when the divergence rose beyond noise.

Every `/v1` route needs an API key: `Authorization: Bearer <key>`. Errors are
`application/problem+json` whose `detail` says what to fix.
"""
SECURITY_SCHEMES = {"bearer": {"type": "http", "scheme": "bearer", "description": "API key"}}


def create_app(config: dict[str, Any] | None = None) -> OpenAPI:
    """Build the API. `config` may hold ROBAUDIT_SETTINGS (a Settings) or Flask keys."""
    config = dict(config or {})
    configure_logging()
    settings: Settings = config.pop("ROBAUDIT_SETTINGS", None) or Settings.from_env()
    settings.ensure_dirs()
    app = OpenAPI(
        __name__,
        info=Info(title="robaudit", version="1", description=DESCRIPTION),
        security_schemes=SECURITY_SCHEMES,  # type: ignore[arg-type]
        validation_error_callback=errors.validation_problem,
        doc_prefix="/docs",
        # Every JSON answer is checked against its route's declared model: drift is a 500
        # (and a failing test), never a silent change of the contract.
        validate_response=True,
        validate_response_callback=validate_json_response,
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
    for module in (ops, models, datasets, audits, compare, webhooks):
        app.register_api(module.bp)
    ratelimit.init_app(app, settings, exempt=(ops.bp,))
    ui.init_app(app, settings)  # the web UI (/ui), signed in with an API key
    return app

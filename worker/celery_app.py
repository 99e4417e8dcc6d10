"""The worker's Celery app (`celery -A worker.celery_app worker`); configured from the env."""

from typing import Any

from celery.signals import setup_logging

from infra.config import Settings
from infra.logging import configure_logging
from infra.queue import make_celery

app = make_celery(Settings.from_env(), name="robaudit-worker")
app.conf.include = ["worker.tasks", "worker.sweeper", "worker.liveness", "worker.webhooks"]


@setup_logging.connect
def _json_logs(loglevel: int | None = None, **_kwargs: Any) -> None:
    """A receiver here stops Celery installing its own handlers: its lines are JSON too."""
    configure_logging(loglevel or "INFO")

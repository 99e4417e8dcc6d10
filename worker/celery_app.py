"""The worker's Celery app (`celery -A worker.celery_app worker`); configured from the env."""

from infra.config import Settings
from infra.queue import make_celery

app = make_celery(Settings.from_env(), name="robaudit-worker")
app.conf.include = ["worker.tasks", "worker.sweeper", "worker.liveness"]

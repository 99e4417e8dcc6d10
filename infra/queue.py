"""The Celery client configuration shared by the API (send by name) and the workers.

Redis when REDIS_URL is set; otherwise kombu's filesystem transport in the data directory,
which needs no server (measured: Celery 5.7, `-P solo` worker, tasks sent from another
process). No result backend: results live in the database.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from infra.config import Settings

RUN_AUDIT = "robaudit.run_audit"
RUN_SHARD = "robaudit.run_shard"
INSPECT_MODEL = "robaudit.inspect_model"
DELIVER_WEBHOOK = "robaudit.deliver_webhook"
QUEUE_KINDS = ("control", "compute")


def queue_names(settings: Settings) -> dict[str, str]:
    """Control work (planning, inspection) is cheap and must never wait behind a long shard."""
    return {"control": settings.queue, "compute": f"{settings.queue}-compute"}


def celery_config(settings: Settings) -> dict[str, Any]:
    queues = queue_names(settings)
    if settings.redis_url:
        broker_url = settings.redis_url
        # A message a dead worker held comes back after this; a live worker's shard is only
        # skipped by the duplicate (its lease is fresh), so it may be short (issue 10).
        transport: dict[str, Any] = {"visibility_timeout": 2 * settings.stale_after_s}
        if settings.redis_prefix:
            transport["global_keyprefix"] = settings.redis_prefix
    else:
        folder = str(settings.broker_dir)
        broker_url = "filesystem://"
        transport = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(settings.broker_dir / "control"),  # else ./control in the cwd
            "store_processed": False,
        }
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": queues["control"],
        "task_routes": {
            RUN_AUDIT: {"queue": queues["control"]},
            INSPECT_MODEL: {"queue": queues["control"]},
            DELIVER_WEBHOOK: {"queue": queues["control"]},
            RUN_SHARD: {"queue": queues["compute"]},
        },
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def make_celery(settings: Settings, name: str = "robaudit") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def broker_reachable(settings: Settings) -> tuple[bool, str]:
    """Whether tasks can be sent now (for /readyz)."""
    if settings.redis_url:
        import redis

        try:
            redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
        except Exception as exc:
            return False, f"redis: {exc}"
        return True, "redis"
    ok = settings.broker_dir.is_dir()
    return ok, "filesystem" if ok else f"broker folder {settings.broker_dir} missing"

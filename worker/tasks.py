"""Thin tasks: take IDs, call worker/execution.py, send follow-up work by name.

Database and broker errors are retried with backoff (the base task's session rolls back);
input errors fail the audit at once (execution.py); a shard whose sandbox child died is
released and sent again, and its attempt counter ends it after Settings.max_shard_attempts.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import structlog
from celery.signals import (
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.dispatch import deferred_shards
from infra.persistence.models import TERMINAL, Audit, AuditShard, utcnow
from infra.queue import DELIVER_WEBHOOK, INSPECT_MODEL, RUN_AUDIT, RUN_SHARD
from worker import execution, inspection, leases, runner
from worker.base import RobauditTask
from worker.celery_app import app
from worker.threads import torch_threads
from worker.webhooks import notify_ended

log = logging.getLogger(__name__)
TIME_LIMIT = Settings.from_env().audit_time_limit_s
RETRYABLE = (DBAPIError, BrokerError)  # the database or the broker blinked: try again later
COMMON: dict[str, Any] = {
    "base": RobauditTask,
    "bind": True,
    "acks_late": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_shards(session: Session, audit_id: str, positions: list[int]) -> None:
    """One task per shard; `sent_at` records it (the sweeper sends shards left unsent)."""
    for position in positions:
        app.send_task(RUN_SHARD, args=[audit_id, position])
        session.execute(
            update(AuditShard)
            .where(AuditShard.audit_id == audit_id, AuditShard.position == position)
            .values(sent_at=utcnow())
        )
        session.commit()


@app.task(name=RUN_AUDIT, time_limit=600, soft_time_limit=540, **COMMON)
def run_audit(self: RobauditTask, audit_id: str) -> str:
    """Plan the audit's shards and send them; finalise it if they are all done already."""
    with self.session() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in {s.value for s in TERMINAL}:
            return "skipped"
        if audit.cancel_requested:
            leases.settle_cancel(session, audit_id, self.settings.stale_after_s)
            notify_ended(session, audit_id)
            return "cancelled"
        positions = execution.plan_shards(session, audit_id, self.settings.shard_size)
        if execution.finalise(session, audit_id, self.store):
            notify_ended(session, audit_id)
            return "finalised"
        send_shards(session, audit_id, positions)
    return f"{len(positions)} shard(s)"


@app.task(name=RUN_SHARD, time_limit=TIME_LIMIT + 300, **COMMON)
def run_shard(self: RobauditTask, audit_id: str, position: int) -> str:
    """Run one shard in the sandbox; the last one to finish finalises the audit."""
    with self.session() as session:
        outcome = execution.execute_shard(
            session=session,
            store=self.store,
            settings=self.settings,
            audit_id=audit_id,
            position=position,
            worker=worker_name(),
        )
        if outcome == "retry":
            send_shards(session, audit_id, [position])
        if outcome != "deferred":
            send_deferred(session, self.settings, audit_id)
        notify_ended(session, audit_id)  # if this shard ended the audit
        return outcome


def send_deferred(session: Session, settings: Settings, audit_id: str) -> None:
    """Send the deferred shards of queued audits of this audit's tenant that may start now
    (an audit of the tenant may just have ended); nothing when its slots are all taken."""
    tenant_id = session.scalar(select(Audit.tenant_id).where(Audit.id == audit_id))
    if tenant_id is None:
        return
    by_audit: dict[str, list[int]] = {}
    for waiting, position in deferred_shards(session, settings, tenant_id):
        by_audit.setdefault(waiting, []).append(position)
    for waiting, positions in by_audit.items():
        send_shards(session, waiting, positions)


@app.task(name=INSPECT_MODEL, time_limit=2400, **COMMON)
def inspect_model(self: RobauditTask, model_id: str) -> str:
    """Convert the model and check parity on inputs drawn from its range; store the status."""
    with self.session() as session:
        return inspection.inspect_model(
            session=session, store=self.store, settings=self.settings, model_id=model_id
        )


@worker_init.connect
@worker_process_init.connect
def _set_threads(**_kwargs: Any) -> None:
    import torch

    from infra.config import Settings

    threads = torch_threads(Settings.from_env())
    torch.set_num_threads(threads)
    log.info("torch threads: %d", threads)


@worker_ready.connect
@worker_process_init.connect
def _warm_sandbox(sender: Any = None, **_kwargs: Any) -> None:
    """A spare sandbox child imports torch now, so the first shard of a new (model,
    dataset) pair does not wait for it (worker/runner.py). In the process that runs tasks:
    the solo pool's main process, or each prefork child."""
    from infra.config import Settings

    pool = getattr(sender, "pool", None)
    if pool is not None and not type(pool).__module__.endswith(".solo"):
        return  # a prefork main process runs no task; its children warm their own
    runner.prestart_in_background(torch_threads(Settings.from_env()))


@worker_shutting_down.connect
def _stop_shards(**_kwargs: Any) -> None:
    execution.SHUTDOWN.set()


# What each task's arguments are, for the log context: every line it logs names its work.
_LOG_CONTEXT = {
    RUN_AUDIT: ("audit_id",),
    RUN_SHARD: ("audit_id", "shard"),
    INSPECT_MODEL: ("model_id",),
    DELIVER_WEBHOOK: ("delivery_id",),  # and its audit_id, once the row is read
}


@task_prerun.connect
def _bind_log_context(task: Any = None, args: Any = (), **_kwargs: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        **dict(zip(_LOG_CONTEXT.get(task.name, ()), args, strict=False))
    )
    log.info("task %s started", task.name)


@worker_shutdown.connect
def _close_sandboxes(**_kwargs: Any) -> None:
    runner.close()

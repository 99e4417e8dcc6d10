"""Thin tasks: take IDs, lease rows, call the numeric core, store the outcome."""

from __future__ import annotations

import logging
import os
import socket

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from service.persistence.models import AuditStatus
from service.queue import INSPECT_MODEL, RUN_AUDIT, RUN_SHARD
from worker import execution
from worker.base import RobauditTask
from worker.celery_app import app
from worker.leases import finish, release_lease, take_lease

log = logging.getLogger(__name__)
TIME_LIMIT = int(os.environ.get("ROBAUDIT_AUDIT_TIME_LIMIT_S", str(6 * 3600)))
RETRYABLE = (OperationalError,)  # the database blinked; the broker's own redelivery covers the rest
OUTCOME_STATUS = {"failed": AuditStatus.FAILED, "cancelled": AuditStatus.CANCELLED}
# Warehouse-style options shared by every task; each task adds its own explicit time limits.
COMMON = {
    "base": RobauditTask,
    "bind": True,
    "acks_late": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": True,
    "max_retries": 5,
}


@app.task(name=RUN_AUDIT, time_limit=600, soft_time_limit=540, **COMMON)
def run_audit(self: RobauditTask, audit_id: str) -> str:
    """Lease the audit, split it into shards and send one task per shard."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with self.session() as session:
        if not take_lease(session, audit_id, worker):
            log.info("audit %s not leased (already taken, finished or cancelled)", audit_id)
            return "skipped"
        positions = execution.plan_shards(session, audit_id, self.settings.shard_size)
        try:
            for position in positions:
                app.send_task(RUN_SHARD, args=[audit_id, position])
        except BrokerError:
            release_lease(session, audit_id)  # a sweeper sends the audit again later
            raise
    return f"{len(positions)} shard(s)"


@app.task(name=RUN_SHARD, time_limit=TIME_LIMIT, soft_time_limit=max(TIME_LIMIT - 60, 30), **COMMON)
def run_shard(self: RobauditTask, audit_id: str, position: int) -> str:
    """Run one shard; the shard that completes the count aggregates and finishes the audit."""
    with self.session() as session:
        outcome = execution.execute_shard(
            session=session,
            store=self.store,
            settings=self.settings,
            audit_id=audit_id,
            position=position,
        )
        if outcome.kind in OUTCOME_STATUS:
            finish(session, audit_id, OUTCOME_STATUS[outcome.kind], error=outcome.error)
        elif outcome.result is not None and execution.complete_shard(
            session, audit_id, position, outcome.result
        ):
            result = execution.aggregate(session, audit_id)
            finish(
                session, audit_id, AuditStatus.SUCCEEDED, result=result, backend=result["backend"]
            )
        return outcome.kind


@app.task(name=INSPECT_MODEL, time_limit=1800, soft_time_limit=1740, **COMMON)
def inspect_model(self: RobauditTask, model_id: str) -> str:
    """Convert the model and check parity on inputs drawn from its range; store the status."""
    with self.session() as session:
        execution.inspect_model(session=session, store=self.store, model_id=model_id)
    return AuditStatus.SUCCEEDED.value

"""Thin tasks: take an ID, lease the row, call the numeric core, store the outcome."""

from __future__ import annotations

import logging
import os
import socket

from sqlalchemy.exc import OperationalError

from service.persistence.models import AuditStatus
from service.queue import INSPECT_MODEL, RUN_AUDIT
from worker import execution
from worker.base import RobauditTask
from worker.celery_app import app
from worker.leases import finish, take_lease

log = logging.getLogger(__name__)
TIME_LIMIT = int(os.environ.get("ROBAUDIT_AUDIT_TIME_LIMIT_S", str(6 * 3600)))


@app.task(
    base=RobauditTask,
    bind=True,
    name=RUN_AUDIT,
    acks_late=True,
    time_limit=TIME_LIMIT,
    soft_time_limit=max(TIME_LIMIT - 60, 30),
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def run_audit(self: RobauditTask, audit_id: str) -> str:
    """Run one audit end to end; a repeated delivery of a finished audit is a no-op."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with self.session() as session:
        if not take_lease(session, audit_id, worker):
            log.info("audit %s not leased (already taken, finished or cancelled)", audit_id)
            return "skipped"
        outcome = execution.execute_audit(
            session=session, store=self.store, settings=self.settings, audit_id=audit_id
        )
        finish(
            session,
            audit_id,
            outcome.status,
            result=outcome.result,
            error=outcome.error,
            backend=outcome.backend,
        )
        return outcome.status.value


@app.task(
    base=RobauditTask,
    bind=True,
    name=INSPECT_MODEL,
    acks_late=True,
    time_limit=1800,
    soft_time_limit=1740,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def inspect_model(self: RobauditTask, model_id: str) -> str:
    """Convert the model and check parity on inputs drawn from its range; store the status."""
    with self.session() as session:
        execution.inspect_model(session=session, store=self.store, model_id=model_id)
    return AuditStatus.SUCCEEDED.value

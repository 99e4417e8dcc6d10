"""Each worker's sweeper thread: takes over shards of dead workers, re-sends lost or unsent
work (infra/dispatch.py), and finalises audits whose shards are all done but whose
finalisation was interrupted (a worker killed between the last shard's commit and the merge)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.dispatch import sweep
from infra.persistence.models import ACTIVE, Audit
from infra.persistence.session import make_engine, make_session_factory
from infra.sweep import sweep_configured
from worker import execution, webhooks

log = logging.getLogger(__name__)
_stop = threading.Event()


def finalise_done(session: Session) -> list[str]:
    """Running audits whose shard counter is full: merge and finish them (idempotent)."""
    ids = session.scalars(
        select(Audit.id).where(
            Audit.status.in_([s.value for s in ACTIVE]),
            Audit.shards_total > 0,
            Audit.shards_done >= Audit.shards_total,
        )
    ).all()
    session.commit()
    return [audit_id for audit_id in ids if execution.finalise(session, audit_id)]


def sweep_once(app: Any, session: Session, settings: Settings) -> None:
    done = finalise_done(session)
    report = sweep(app, session, settings)
    report["finalised"] = done
    report["webhooks"] = webhooks.sweep(app, session, settings)
    for kind, items in report.items():
        if items:
            log.info("sweeper %s: %s", kind, ", ".join(items))


def sweep_forever(app: Any, settings: Settings) -> None:
    """Sweep now, then every `sweep_interval_s` seconds, until the worker shuts down."""
    factory = make_session_factory(make_engine(settings.database_url))
    while not _stop.is_set():
        try:
            with factory() as session:
                sweep_once(app, session, settings)
                sweep_configured(session=session, settings=settings)
        except Exception as exc:  # the broker or database may be down; try again later
            log.warning("sweep failed: %s", exc)
        _stop.wait(settings.sweep_interval_s)


@worker_ready.connect
def _start(sender: Any = None, **_kwargs: Any) -> None:
    app = sender.app if sender is not None else None
    threading.Thread(
        target=sweep_forever, args=(app, Settings.from_env()), name="robaudit-sweeper", daemon=True
    ).start()


@worker_shutdown.connect
def _stop_sweeping(**_kwargs: Any) -> None:
    _stop.set()

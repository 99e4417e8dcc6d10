"""Each worker re-sends audits whose task message never reached the broker (outbox sweep)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from service.config import Settings
from service.dispatch import resend_stale
from service.persistence.session import make_engine, make_session_factory
from service.sweep import sweep_configured

log = logging.getLogger(__name__)
_stop = threading.Event()


def sweep_forever(app: Any, interval: float) -> None:
    """Sweep now, then every `interval` seconds, until the worker shuts down."""
    factory = make_session_factory(make_engine(Settings.from_env().database_url))
    while not _stop.is_set():
        try:
            with factory() as session:
                sent = resend_stale(app, session)
                sweep_configured(session=session, settings=Settings.from_env())
            if sent:
                log.info("re-sent %d undispatched audit(s): %s", len(sent), ", ".join(sent))
        except Exception as exc:  # the broker or database may be down; try again later
            log.warning("sweep failed: %s", exc)
        _stop.wait(interval)


@worker_ready.connect
def _start(sender: Any = None, **_kwargs: Any) -> None:
    interval = float(os.environ.get("ROBAUDIT_SWEEP_INTERVAL_S", "30"))
    app = sender.app if sender is not None else None
    threading.Thread(
        target=sweep_forever, args=(app, interval), name="robaudit-sweeper", daemon=True
    ).start()


@worker_shutdown.connect
def _stop_sweeping(**_kwargs: Any) -> None:
    _stop.set()

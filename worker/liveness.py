"""A file the worker touches while its process lives: the container's healthcheck reads its age.

`celery inspect ping` cannot serve here: with the solo pool a running task holds the consumer,
so a ping goes unanswered for the whole length of a shard and a busy worker would look dead.
A daemon thread beats through long tasks; it stops only when the process hangs or exits.
`python -m worker.liveness` exits 0 while the file is fresh, 1 when it is stale or missing.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_ready, worker_shutdown

# Per container, not in the shared data volume: every container answers for itself.
ALIVE_FILE = Path("/tmp/robaudit-worker.alive")  # noqa: S108
BEAT_S = 10.0
STALE_AFTER_S = 60.0  # six missed beats
_stop = threading.Event()


def beat_forever(path: Path = ALIVE_FILE, every_s: float = BEAT_S) -> None:
    while not _stop.is_set():
        path.touch()
        _stop.wait(every_s)


def is_fresh(path: Path = ALIVE_FILE, stale_after_s: float = STALE_AFTER_S) -> bool:
    try:
        return time.time() - path.stat().st_mtime < stale_after_s
    except FileNotFoundError:
        return False


@worker_ready.connect
def _start(**_kwargs: Any) -> None:
    threading.Thread(target=beat_forever, name="robaudit-liveness", daemon=True).start()


@worker_shutdown.connect
def _stop_beating(**_kwargs: Any) -> None:
    _stop.set()
    ALIVE_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(0 if is_fresh() else 1)

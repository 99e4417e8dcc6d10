"""Running a worker/sandboxed.py function in this worker's sandbox child (infra/sandbox.py).

One child per worker process is kept between calls that read the same artifacts, so the
shards of one audit on this worker share its converted-model and dataset caches. A child
that hit a limit, crashed or was stopped is not reused (the sandbox ends it).

A new (model, dataset) pair needs a new child, and a child's imports (torch, onnxruntime,
the converter) cost seconds of CPU: measured 3.3 s before the first shard's first batch on
the scale-out benchmark's model. So the worker keeps one spare child that has done them
already (`worker.sandboxed:preload`) and is not yet set up (no limits, no paths, no request
read). The spare is started when the worker starts and, after it was taken, again once the
worker has been idle for IDLE_S: never while shards run back to back, where its imports
would take CPU from them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from infra.config import Settings
from infra.sandbox import (
    ChildFailed,
    ChildRaised,
    LimitExceeded,
    Limits,
    Sandbox,
    SandboxError,
    Stopped,
)

__all__ = ["ChildFailed", "ChildRaised", "LimitExceeded", "SandboxError", "Stopped", "call"]
log = logging.getLogger(__name__)
PRELOAD = "worker.sandboxed:preload"
IDLE_S = 2.0  # no call for this long: the worker is idle, a spare may start
_current: Sandbox | None = None
_spare: Sandbox | None = None
_lock = threading.Lock()  # the spare is started and waited for off the task's thread
_idle_timer: threading.Timer | None = None
_keep_spare = False  # set by a worker process at start; in-process callers (tests) keep none


def _cuda() -> bool:
    """Whether shards run on CUDA: ROBAUDIT_DEVICE, or (unset) a GPU that torch sees, as the
    payload's device is chosen (worker/sandboxed.py). Unset on a GPU host, the cap used to
    stay on, and under it CUDA does not start (tests/gpu/test_cuda_sandbox.py, on an H200)."""
    return _device_name().startswith("cuda")


def _device_name() -> str:
    from worker.sandboxed import device  # torch: the worker imports it for the payload anyway

    return str(device())


def limits(settings: Settings, *, wall_seconds: float, threads: int) -> Limits:
    """The sandbox limits of one call: its wall time is what is left of the audit's limit;
    CPU time allows every thread busy for all of it."""
    wall = max(1.0, wall_seconds)
    return Limits(
        memory_bytes=settings.audit_memory_bytes,
        cpu_seconds=wall * max(1, threads) + 60,
        wall_seconds=wall,
        threads=threads,
        address_space_cap=not _cuda(),  # the CUDA driver maps huge virtual ranges
    )


def call(
    target: str,
    payload: dict[str, Any],
    *,
    settings: Settings,
    wall_seconds: float,
    readable: list[str],
    on_event: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
) -> Any:
    """`target(payload, emit)` in the sandbox; raises the sandbox's errors unchanged."""
    global _current
    _cancel_idle_timer()
    wanted = limits(settings, wall_seconds=wall_seconds, threads=int(payload.get("threads", 1)))
    paths = [Path(p) for p in readable]
    if (
        _current is None
        or not _current.serves(paths)
        or _spawn_key(_current.limits) != (_spawn_key(wanted))
    ):
        if _current is not None:
            _current.close()
        _current = _take_spare(wanted) or Sandbox(wanted)
    _current.limits = wanted  # time limits are read per call; the rest at setup
    try:
        return _current.call(
            target, payload, readable=paths, on_event=on_event, should_stop=should_stop
        )
    finally:
        _arm_idle_timer(wanted)


def discard_current() -> None:
    """End the child that served the last call, so that the next call starts afresh: after a
    device error, its CUDA context may stay broken for every later call."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


def _spawn_key(lim: Limits) -> Limits:
    """The limits a child is set up with; a spare matches any of them but its threads."""
    return replace(lim, cpu_seconds=0, wall_seconds=0)


def _take_spare(wanted: Limits) -> Sandbox | None:
    global _spare
    with _lock:
        spare, _spare = _spare, None
    if spare is not None and spare.alive and spare.spawn_threads == wanted.threads:
        spare.limits = wanted
        return spare
    if spare is not None:
        spare.close()
    return None


def prestart(threads: int) -> None:
    """Start the spare child (if none), then wait for its imports and log how long they took
    (the lock is held only to start it: a call may take the spare while it imports)."""
    global _spare
    with _lock:
        if _spare is not None and _spare.alive:
            return
        if _spare is not None:
            _spare.close()  # killed while it waited
        _spare = Sandbox(Limits(threads=threads))
        # The child's environment has no ROBAUDIT_DEVICE: without it, a CPU worker's spare on
        # a GPU host would start CUDA before its first call caps its address space.
        _spare.prestart(PRELOAD, {"device": _device_name()})
        spare = _spare
    seconds = spare.wait_preloaded()
    if seconds is None:
        log.warning("sandbox spare did not finish its imports (taken, stopped or too slow)")
    else:
        log.info("sandbox spare ready (preloaded in %.2f s)", seconds)


def prestart_in_background(threads: int) -> None:
    """Keep a spare from now on (a worker process at start); the first one starts now."""
    global _keep_spare
    _keep_spare = True
    threading.Thread(target=prestart, args=(threads,), name="sandbox-spare", daemon=True).start()


def _arm_idle_timer(wanted: Limits) -> None:
    global _idle_timer
    if _keep_spare and (_spare is None or not _spare.alive):
        _idle_timer = threading.Timer(IDLE_S, prestart, args=(wanted.threads,))
        _idle_timer.daemon = True
        _idle_timer.start()


def _cancel_idle_timer() -> None:
    global _idle_timer
    if _idle_timer is not None:
        _idle_timer.cancel()
        _idle_timer = None


def close() -> None:
    """End this worker's sandbox children (worker shutdown)."""
    global _current, _spare
    _cancel_idle_timer()
    with _lock:
        spare, _spare = _spare, None
    for sandbox in (_current, spare):
        if sandbox is not None:
            sandbox.close()
    _current = None

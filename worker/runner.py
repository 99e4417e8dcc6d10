"""Running a worker/sandboxed.py function in this worker's sandbox child (infra/sandbox.py).

One child per worker process is kept between calls that read the same artifacts, so the
shards of one audit on this worker share its converted-model cache. A child that hit a
limit, crashed or was stopped is not reused (the sandbox ends it).
"""

from __future__ import annotations

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
_current: Sandbox | None = None


def _cuda() -> bool:
    return "cuda" in (Settings.from_env().device or "")


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
    wanted = limits(settings, wall_seconds=wall_seconds, threads=int(payload.get("threads", 1)))
    if _current is None or replace(_current.limits, cpu_seconds=0, wall_seconds=0) != replace(
        wanted, cpu_seconds=0, wall_seconds=0
    ):
        if _current is not None:
            _current.close()
        _current = Sandbox(wanted)
    _current.limits = wanted  # time limits are read per call; the rest only at start
    return _current.call(
        target,
        payload,
        readable=[Path(p) for p in readable],
        on_event=on_event,
        should_stop=should_stop,
    )


def close() -> None:
    """End this worker's sandbox child (worker shutdown)."""
    global _current
    if _current is not None:
        _current.close()
        _current = None

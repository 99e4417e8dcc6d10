"""Running a worker/sandboxed.py function in the sandbox child (service/sandbox.py).

TEMPORARY: until service/sandbox.py lands, the function runs in this process with the same
callbacks and exceptions, so the parent's logic (progress, heartbeat, cancel) is the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from service.config import Settings


class SandboxError(Exception):
    pass


class Stopped(SandboxError):
    pass


class LimitExceeded(SandboxError):
    def __init__(self, limit: str, message: str = "") -> None:
        super().__init__(message or f"{limit} limit exceeded")
        self.limit = limit


class ChildRaised(SandboxError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class ChildFailed(SandboxError):
    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"child failed with {returncode}")
        self.returncode = returncode


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
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)

    def emit(event: dict[str, Any]) -> None:
        on_event(event)
        if should_stop():
            raise Stopped

    try:
        return function(payload, emit)
    except SandboxError:
        raise
    except Exception as exc:
        raise ChildRaised(type(exc).__name__, str(exc)) from exc

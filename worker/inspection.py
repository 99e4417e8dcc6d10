"""Model inspection: conversion and parity on inputs drawn from the model's range, sandboxed.

The API sends the task once, best effort; the sweeper re-sends it for any model not yet
inspected (infra/dispatch.py), so `inspected_at` is the outbox flag. A model whose
inspection hits a sandbox limit or kills its child is marked failed, never re-sent; one whose
GPU failed is left for the sweeper to send again, up to Settings.max_shard_attempts.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Model, utcnow
from infra.storage import ArtifactStore
from robustness.errors import device_error
from worker import runner, sandboxed
from worker.execution import INPUT_ERRORS
from worker.threads import torch_threads

INSPECT_WALL_S = 1800


def _both(ok: bool | None, reason: str) -> dict[str, Any]:
    return {"torch": {"ok": ok, "reason": reason}, "onnxruntime": {"ok": ok, "reason": reason}}


def inspect_model(
    *, session: Session, store: ArtifactStore, settings: Settings, model_id: str
) -> str:
    """Fill a model's backend status, once; 'skipped' if it is gone or already inspected."""
    model = session.get(Model, model_id)
    if model is None or model.inspected_at is not None:
        session.commit()
        return "skipped"
    shape = model.intake["input"]["shape"][1:]
    if not all(isinstance(d, int) for d in shape):
        reason = f"input shape {shape} has symbolic dims; checked on the audit's data"
        return _store(session, model, _both(None, reason))
    model.inspect_attempts += 1  # counted before the work: a worker that dies still counts
    model.inspect_sent_at = utcnow()
    session.commit()
    if model.inspect_attempts > settings.max_shard_attempts:
        tries = model.inspect_attempts - 1
        return _store(session, model, _both(False, f"inspection never finished in {tries} tries"))
    path = str(store.path(model.sha256))
    payload = {
        "model_path": path,
        "shape": shape,
        "input_range": model.input_range,
        "preprocessing": model.preprocessing,
        "output": model.requested_output,
        "threads": torch_threads(settings),
        "device": str(sandboxed.device()),
    }
    last = [time.monotonic()]

    def alive() -> bool:  # keeps the sweeper from re-sending a long inspection
        if time.monotonic() - last[0] >= settings.heartbeat_s:
            last[0] = time.monotonic()
            session.execute(
                update(Model).where(Model.id == model_id).values(inspect_sent_at=utcnow())
            )
            session.commit()
        return False

    try:
        statuses = runner.call(
            "worker.sandboxed:inspect_model",
            payload,
            settings=settings,
            wall_seconds=min(INSPECT_WALL_S, settings.audit_time_limit_s),
            readable=[path],
            on_event=lambda _event: None,
            should_stop=alive,
        )
    except runner.LimitExceeded as exc:
        statuses = _both(False, f"refused: {exc}")
    except runner.ChildRaised as exc:
        if exc.kind not in INPUT_ERRORS and device_error(exc.kind, exc.message):
            # the host's failure: a fresh child next time, when the sweeper re-sends it
            runner.discard_current()
            session.commit()
            return "retry"
        reason = exc.message if exc.kind in INPUT_ERRORS else f"{exc.kind}: {exc.message}"
        statuses = _both(False, reason)
    except runner.ChildFailed as exc:
        statuses = _both(False, f"refused: {exc}")
    return _store(session, model, statuses)


def _store(session: Session, model: Model, statuses: dict[str, Any]) -> str:
    model.backends = statuses
    model.inspected_at = utcnow()
    session.commit()
    return "inspected"

"""From database rows to the numeric core and back; no Celery here, so it is testable alone."""

from __future__ import annotations

import io
import logging
import os
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from robustness import engine, loading
from robustness.datasets import load_npz
from robustness.errors import AuditInputError
from robustness.report import result_to_dict
from robustness.spec import BackendKind, spec_from_config
from service.config import Settings
from service.persistence.models import Audit, AuditStatus, Model
from service.storage import ArtifactStore
from worker import render
from worker.leases import report_progress

log = logging.getLogger(__name__)
PROBE_SAMPLES = 32
VERSIONED = ("robaudit", "torch", "onnxruntime", "onnx", "onnx2pytorch", "onnxslim", "numpy")


@dataclass(frozen=True)
class Outcome:
    status: AuditStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    backend: str | None = None


def device() -> torch.device:
    """ROBAUDIT_DEVICE if set (e.g. cpu, cuda:1), else CUDA when present."""
    name = os.environ.get("ROBAUDIT_DEVICE")
    return torch.device(name) if name else loading.default_device()


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def execute_audit(
    *, session: Session, store: ArtifactStore, settings: Settings, audit_id: str
) -> Outcome:
    """Run the engine for a leased audit; bad input becomes a failed audit with a clear error."""
    audit = session.get(Audit, audit_id)
    assert audit is not None
    model, dataset = audit.model, audit.dataset
    session.commit()  # end the read transaction: SQLite writers must not wait on the engine
    dev = device()
    try:
        spec = spec_from_config(audit.config, model.input_range)
        x, y = load_npz(store.path(dataset.sha256), max_member_bytes=settings.max_npz_member_bytes)
        x = x[: spec.max_samples].astype(np.float32)
        y = y[: spec.max_samples].astype(np.int64)
        loaded = loading.load(
            store.read_bytes(model.sha256),
            x[:PROBE_SAMPLES],
            output=model.requested_output,
            backend=BackendKind(audit.config["backend"]),
            device=dev,
            seed=spec.seed,
            fd_directions=spec.fd_directions,
        )

        cancel = False

        def progress(done: int, total: int, stage: str) -> None:
            nonlocal cancel
            cancel = report_progress(session, audit_id, done, total, stage)

        result = engine.run_audit(
            loaded.backend,
            x,
            y,
            spec,
            device=dev,
            parity_max_abs_diff=loaded.parity_max_abs_diff,
            progress=progress,
            cancelled=lambda: cancel,
        )
    except engine.AuditCancelled:
        return Outcome(AuditStatus.CANCELLED, error="cancelled on request")
    except AuditInputError as exc:
        return Outcome(AuditStatus.FAILED, error=str(exc))
    except Exception as exc:
        log.exception("audit %s crashed", audit_id)
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(AuditStatus.FAILED, error=f"internal error: {tail[:500]}")
    body = result_to_dict(result)
    for landscape in body["landscapes"]:
        png = render.landscape_png(landscape)
        landscape["png_sha256"] = store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256
    body["manifest"] = {
        "model_sha256": model.sha256,
        "dataset_sha256": dataset.sha256,
        "config_hash": audit.config_hash,
        "versions": versions(),
        "device": str(dev),
        "backend": result.backend.value,
        "backends": {k.value: v.to_dict() for k, v in loaded.statuses.items()},
        "input_range": model.input_range,
    }
    body["timing"] = {"stages": result.stage_seconds}
    return Outcome(AuditStatus.SUCCEEDED, result=body, backend=result.backend.value)


def inspect_model(*, session: Session, store: ArtifactStore, model_id: str) -> None:
    """Fill a model's backend status from a parity check on inputs drawn from its range."""
    model = session.get(Model, model_id)
    if model is None:
        return
    shape = model.intake["input"]["shape"][1:]
    if not all(isinstance(d, int) for d in shape):
        reason = f"input shape {shape} has symbolic dims; checked on the audit's data"
        model.backends = {
            "torch": {"ok": None, "reason": reason},
            "onnxruntime": {"ok": None, "reason": reason},
        }
        session.commit()
        return
    lo, hi = model.input_range
    rng = np.random.default_rng(0)
    probe = rng.uniform(lo, hi, size=(4, *shape)).astype(np.float32)
    try:
        loaded = loading.load(
            store.read_bytes(model.sha256), probe, output=model.requested_output, device=device()
        )
        model.backends = {k.value: v.to_dict() for k, v in loaded.statuses.items()}
    except AuditInputError as exc:
        model.backends = {
            "torch": {"ok": False, "reason": str(exc)},
            "onnxruntime": {"ok": False, "reason": str(exc)},
        }
    session.commit()

"""From database rows to the numeric core and back; no Celery here, so it is testable alone.

An audit runs as shards (architecture.md): `plan_shards` splits its samples into ranges,
`execute_shard` runs the engine on one range, `complete_shard` records it and counts, in
the same transaction, and the shard that brings the count to the total calls `aggregate`.
"""

from __future__ import annotations

import io
import logging
import os
import traceback
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Literal

import numpy as np
import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from robustness import engine, loading
from robustness.datasets import load_npz
from robustness.errors import AuditInputError
from robustness.report import merge_results, result_to_dict
from robustness.spec import BackendKind, spec_from_config
from service.config import Settings
from service.persistence.models import Audit, AuditShard, AuditStatus, Model, utcnow
from service.storage import ArtifactStore
from worker import render
from worker.leases import report_shard_progress
from worker.model_cache import MODELS

log = logging.getLogger(__name__)
PROBE_SAMPLES = 32
VERSIONED = ("robaudit", "torch", "onnxruntime", "onnx", "onnx2pytorch", "onnxslim", "numpy")


@dataclass(frozen=True)
class ShardOutcome:
    kind: Literal["done", "failed", "cancelled", "skipped"]
    result: dict[str, Any] | None = None
    error: str | None = None


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


def plan_shards(session: Session, audit_id: str, shard_size: int) -> list[int]:
    """Create the shard rows of a leased audit (idempotent); the positions still pending."""
    audit = session.get(Audit, audit_id)
    assert audit is not None
    n = min(audit.dataset.n, int(audit.config["max_samples"]))
    size = max(1, shard_size)
    existing = {
        s.position: s
        for s in session.scalars(select(AuditShard).where(AuditShard.audit_id == audit_id))
    }
    for position, start in enumerate(range(0, n, size)):
        if position not in existing:
            shard = AuditShard(
                audit_id=audit_id, position=position, start=start, stop=min(start + size, n)
            )
            session.add(shard)
            existing[position] = shard
    audit.shards_total = len(existing)
    audit.progress_total = n * len(audit.config["epsilons"])
    session.commit()
    return sorted(p for p, s in existing.items() if s.status == "pending")


def execute_shard(
    *, session: Session, store: ArtifactStore, settings: Settings, audit_id: str, position: int
) -> ShardOutcome:
    """Run the engine on one shard's samples; bad input becomes a clear `failed`."""
    audit = session.get(Audit, audit_id)
    shard = session.scalar(
        select(AuditShard).where(AuditShard.audit_id == audit_id, AuditShard.position == position)
    )
    if (
        audit is None
        or shard is None
        or audit.status != AuditStatus.RUNNING.value
        or shard.status != "pending"
    ):
        return ShardOutcome("skipped")
    model, dataset, shard_id = audit.model, audit.dataset, shard.id
    start, stop = shard.start, shard.stop
    session.commit()  # end the read transaction: SQLite writers must not wait on the engine
    dev = device()
    try:
        spec = spec_from_config(audit.config, model.input_range)
        if position != 0:
            spec = replace(spec, landscape_samples=0)  # the first shard draws the surfaces
        x, y = load_npz(store.path(dataset.sha256), max_member_bytes=settings.max_npz_member_bytes)
        x, y = x[start:stop].astype(np.float32), y[start:stop].astype(np.int64)
        loaded = MODELS.get(
            model.sha256,
            lambda: store.read_bytes(model.sha256),
            x[:PROBE_SAMPLES],
            output=model.requested_output,
            backend=BackendKind(audit.config["backend"]),
            device=dev,
            seed=spec.seed,
            fd_directions=spec.fd_directions,
        )
        cancel = False

        def progress(done: int, _total: int, stage: str) -> None:
            nonlocal cancel
            cancel = report_shard_progress(session, audit_id, shard_id, done, stage)

        result = engine.run_audit(
            loaded.backend,
            x,
            y,
            spec,
            device=dev,
            parity_max_abs_diff=loaded.parity_max_abs_diff,
            progress=progress,
            cancelled=lambda: cancel,
            sample_offset=start,
        )
    except engine.AuditCancelled:
        return ShardOutcome("cancelled", error="cancelled on request")
    except AuditInputError as exc:
        return ShardOutcome("failed", error=str(exc))
    except Exception as exc:
        log.exception("audit %s shard %d crashed", audit_id, position)
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return ShardOutcome("failed", error=f"internal error: {tail[:500]}")
    body = result_to_dict(result)
    for landscape in body["landscapes"]:
        png = render.landscape_png(landscape)
        landscape["png_sha256"] = store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256
    body["stage_seconds"] = result.stage_seconds
    body["manifest_part"] = {
        "device": str(dev),
        "backends": loaded.statuses_dict(),
        "notes": list(loaded.notes),
    }
    return ShardOutcome("done", result=body)


def complete_shard(session: Session, audit_id: str, position: int, body: dict[str, Any]) -> bool:
    """Store a shard's result and count it, atomically; True for the shard that completes it."""
    marked = session.execute(
        update(AuditShard)
        .where(
            AuditShard.audit_id == audit_id,
            AuditShard.position == position,
            AuditShard.status == "pending",
        )
        .values(status="done", result=body, finished_at=utcnow())
    )
    if marked.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()  # a repeated delivery of a shard already counted
        return False
    done, total = session.execute(
        update(Audit)
        .where(Audit.id == audit_id)
        .values(shards_done=Audit.shards_done + 1)
        .returning(Audit.shards_done, Audit.shards_total)
    ).one()
    session.commit()
    return bool(done == total)


def aggregate(session: Session, audit_id: str) -> dict[str, Any]:
    """The audit's `result` from its shards' results."""
    audit = session.get(Audit, audit_id)
    assert audit is not None
    shards = session.scalars(
        select(AuditShard).where(AuditShard.audit_id == audit_id).order_by(AuditShard.position)
    ).all()
    parts = [s.result or {} for s in shards]
    merged = merge_results(parts, seed=int(audit.config["seed"]))
    first = parts[0]["manifest_part"]
    merged["manifest"] = {
        "model_sha256": audit.model.sha256,
        "dataset_sha256": audit.dataset.sha256,
        "config_hash": audit.config_hash,
        "versions": versions(),
        "device": first["device"],
        "backend": merged["backend"],
        "backends": first["backends"],
        "notes": first["notes"],
        "input_range": audit.model.input_range,
        "shards": len(parts),
    }
    stages: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part.get("stage_seconds", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    merged["timing"] = {"stages": stages}
    return merged


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
    probe = loading.uniform_probe(shape, model.input_range)
    try:
        loaded = loading.load(
            store.read_bytes(model.sha256), probe, output=model.requested_output, device=device()
        )
        model.backends = loaded.statuses_dict()
    except AuditInputError as exc:
        model.backends = {
            "torch": {"ok": False, "reason": str(exc)},
            "onnxruntime": {"ok": False, "reason": str(exc)},
        }
    session.commit()

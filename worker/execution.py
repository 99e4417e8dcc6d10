"""From database rows to the sandboxed engine and back; no Celery here, so it is testable alone.

An audit runs as shards (architecture.md): `plan_shards` splits its samples into ranges,
`execute_shard` leases one range, runs the engine on it in a sandbox child
(worker/sandboxed.py) while it heartbeats, and stores the result; `finalise` merges the
results once every shard is done. Planning and finalising are idempotent: any worker may
repeat them any number of times with the same outcome.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditShard, AuditStatus, ShardStatus, utcnow
from infra.storage import ArtifactStore
from robustness.errors import AuditInputError, DatasetRejected, ModelRejected, device_error
from robustness.image_datasets import image_target
from robustness.report import merge_results
from robustness.results import AuditResult, Manifest, ReportFigures
from worker import figures, leases, render, runner, sandboxed
from worker.threads import torch_threads

log = logging.getLogger(__name__)
VERSIONED = ("robaudit", "torch", "onnxruntime", "onnx", "onnx2pytorch", "onnxslim", "numpy")
# Exception class names from the child that mean "fix your input", not "robaudit broke".
INPUT_ERRORS = frozenset(c.__name__ for c in (AuditInputError, ModelRejected, DatasetRejected))
Outcome = Literal["done", "failed", "cancelled", "retry", "released", "skipped", "deferred"]
# Set when this worker is asked to shut down: running shards are stopped and given back at
# once (not counted as attempts) so a restarted or another worker takes them over.
SHUTDOWN = threading.Event()


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def plan_shards(session: Session, audit_id: str, shard_size: int) -> list[int]:
    """Create the shard rows of an audit (idempotent, safe to race); the positions pending."""
    for _ in range(3):
        try:
            return _plan(session, audit_id, shard_size)
        except IntegrityError:  # another worker planned the same audit at the same moment
            session.rollback()
    return _plan(session, audit_id, shard_size)


def _plan(session: Session, audit_id: str, shard_size: int) -> list[int]:
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
    # one unit per sample for the clean pass and one per sample and ε (robustness/engine.py)
    audit.progress_total = n * (len(audit.config["epsilons"]) + 1)
    session.commit()
    return sorted(p for p, s in existing.items() if s.status == ShardStatus.PENDING.value)


def aggregate(
    session: Session, audit_id: str, store: ArtifactStore | None = None
) -> dict[str, Any]:
    """The audit's `result` from its shards' results, with the report's pictures drawn."""
    audit = session.get(Audit, audit_id)
    assert audit is not None
    shards = session.scalars(
        select(AuditShard).where(AuditShard.audit_id == audit_id).order_by(AuditShard.position)
    ).all()
    parts = [AuditResult.model_validate(s.result or {}) for s in shards]
    merged = merge_results(parts, seed=int(audit.config["seed"]))
    manifest = (merged.manifest or Manifest()).model_copy(
        update={
            "model_sha256": audit.model.sha256,
            "dataset_sha256": audit.dataset.sha256,
            "config_hash": audit.config_hash,
            "versions": versions(),
            "backend": merged.backend.value,
            "input_range": audit.model.input_range,
            "preprocessing": audit.model.declared_preprocessing(),
            "class_names": audit.dataset.class_names or audit.model.class_names,
        }
    )
    merged = merged.model_copy(update={"manifest": manifest})
    return draw_figures(merged, store or ArtifactStore(Settings.from_env().artifact_dir)).to_json()


def draw_figures(result: AuditResult, store: ArtifactStore) -> AuditResult:
    """The ε-sweep, the ψ histogram and the vulnerable samples' pictures, stored by sha256.

    Drawn here, once per audit (the API image has no matplotlib); the same result draws the
    same bytes, so finalising again stores nothing new."""

    def save(png: bytes) -> str:
        return store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256

    input_range = result.manifest.input_range if result.manifest else None
    drawn = ReportFigures(
        sweep_png_sha256=save(figures.sweep_png(result)),
        histogram_png_sha256=save(figures.histogram_png(result)),
    )
    samples = tuple(
        v.model_copy(update={"png_sha256": save(figures.sample_png(v, input_range))})
        for v in result.vulnerable
    )
    return result.model_copy(update={"figures": drawn, "vulnerable": samples})


def finalise(session: Session, audit_id: str, store: ArtifactStore | None = None) -> bool:
    """Merge and finish an audit whose shards are all done; any number of times, one outcome.

    True when every shard is done (the audit is finished now, or was already)."""
    if not leases.all_done(session, audit_id):
        session.commit()
        return False
    result = aggregate(session, audit_id, store)
    session.commit()
    leases.finish(
        session, audit_id, AuditStatus.SUCCEEDED, result=result, backend=result["backend"]
    )
    return True


@dataclass
class _Beat:
    """The parent's side of a running child: progress to write, heartbeat and cancel by time."""

    session: Session
    audit_id: str
    shard_id: str
    worker: str
    every_s: float
    done: int | None = None
    stage: str | None = None
    dirty: bool = False
    last: float = 0.0
    loaded_at: float | None = None  # when the child had the model and data (timing log)

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("stage") == "loaded" and self.loaded_at is None:
            self.loaded_at = time.monotonic()
        if "done" in event:
            self.done = int(event["done"])
        if "stage" in event:
            self.stage = str(event["stage"])[:64]
        self.dirty = True

    def should_stop(self) -> bool:
        if SHUTDOWN.is_set():
            return True
        now = time.monotonic()
        if not self.dirty and now - self.last < self.every_s:
            return False
        try:
            stop = leases.heartbeat(
                self.session, self.audit_id, self.shard_id, self.worker, self.done, self.stage
            )
        except Exception as exc:  # a database blink must not kill a long shard; retry soon
            log.warning("heartbeat of shard %s failed: %s", self.shard_id, exc)
            self.session.rollback()
            return False
        self.dirty, self.last = False, now
        return stop


def _shard_label(position: int, claim: leases.Claim) -> str:
    return f"shard {position} (samples {claim.start}–{claim.stop - 1})"


def execute_shard(
    *,
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    audit_id: str,
    position: int,
    worker: str,
) -> Outcome:
    """Lease one shard and run it in a sandbox child; store its result or end the audit."""
    began = time.monotonic()
    claim = leases.claim_shard(
        session, audit_id, position, worker, settings.stale_after_s, settings.max_running_audits
    )
    if claim is None:
        return "skipped"
    if claim == leases.DEFERRED:  # its tenant runs as many audits as it may
        return "deferred"
    label = _shard_label(position, claim)
    if claim.attempts > settings.max_shard_attempts:
        how = claim.last_error or "its worker stopped heartbeating (killed, out of memory or lost)"
        tries = claim.attempts - 1
        times = "once" if tries == 1 else f"{tries} times"
        leases.finish(
            session, audit_id, AuditStatus.FAILED,
            error=f"{label} was tried {times} and never finished; last time {how}",
        )  # fmt: skip
        return "failed"
    audit = session.get(Audit, audit_id)
    assert audit is not None
    assert audit.started_at is not None
    left = settings.audit_time_limit_s - (utcnow() - audit.started_at).total_seconds()
    if left <= 0:
        return _fail(session, audit_id, _time_limit(settings))
    payload = _payload(store, settings, audit, claim, position)
    session.commit()  # no transaction stays open while the child runs
    beat = _Beat(session, audit_id, claim.shard_id, worker, settings.heartbeat_s)
    called = time.monotonic()
    try:
        body = runner.call(
            "worker.sandboxed:run_shard",
            payload,
            settings=settings,
            wall_seconds=left,
            readable=[payload["model_path"], payload["dataset_path"]],
            on_event=beat.on_event,
            should_stop=beat.should_stop,
        )
    except runner.SandboxError as exc:
        return _ended(session, settings, audit_id, claim, worker, label, exc)
    returned = time.monotonic()
    outcome = _store(session, store, settings, audit_id, claim, worker, body)
    _log_timing(audit_id, position, body, began, called, beat.loaded_at or called, returned)
    return outcome


def _log_timing(
    audit_id: str,
    position: int,
    body: dict[str, Any],
    began: float,
    called: float,
    loaded: float,
    returned: float,
) -> None:
    """Where a shard's wall time went (benchmarks/bench_scaleout.py sums these lines):
    lease (database), child start and model load, engine, the rest of the call, store."""
    engine_s = sum(body.get("stage_seconds", {}).values())
    log.info(
        "shard timing audit=%s position=%d lease_s=%.3f load_s=%.3f engine_s=%.3f "
        "call_other_s=%.3f store_s=%.3f total_s=%.3f",
        audit_id, position, called - began, loaded - called, engine_s,
        max(0.0, returned - loaded - engine_s), time.monotonic() - returned,
        time.monotonic() - began,
    )  # fmt: skip


def _payload(
    store: ArtifactStore, settings: Settings, audit: Audit, claim: leases.Claim, position: int
) -> dict[str, Any]:
    """What the child needs: artifact paths, the sample range and the config; no secrets."""
    return {
        "model_path": str(store.path(audit.model.sha256)),
        "model_sha256": audit.model.sha256,
        "dataset_path": str(store.path(audit.dataset.sha256)),
        "start": claim.start,
        "stop": claim.stop,
        "position": position,
        "config": audit.config,
        "input_range": audit.model.input_range,
        "preprocessing": audit.model.preprocessing,
        "output": audit.model.requested_output,
        "max_member_bytes": settings.max_npz_member_bytes,
        "max_total_bytes": settings.max_npz_total_bytes,
        "images": _image_target(audit),
        "threads": torch_threads(settings),
        "device": str(sandboxed.device()),
    }


def _image_target(audit: Audit) -> dict[str, Any] | None:
    """How the child decodes an image dataset for this model; None for an .npz."""
    dataset, model = audit.dataset, audit.model
    if dataset.format != "images":
        return None
    target = image_target(
        model.intake["input"]["shape"], model.declared_preprocessing(), dataset.crop_fraction
    )
    return asdict(target)


def _ended(
    session: Session,
    settings: Settings,
    audit_id: str,
    claim: leases.Claim,
    worker: str,
    label: str,
    exc: runner.SandboxError,
) -> Outcome:
    """A child that returned no result: stopped, over a limit, raised, or died."""
    if isinstance(exc, runner.Stopped):
        if SHUTDOWN.is_set():  # not the shard's fault: give the attempt back
            leases.release_shard(session, claim.shard_id, worker, None, counted=False)
            return "released"
        leases.release_shard(session, claim.shard_id, worker, "stopped: cancel requested")
        leases.settle_cancel(session, audit_id, settings.stale_after_s)
        return "cancelled"
    if isinstance(exc, runner.LimitExceeded):
        error = _time_limit(settings) if exc.limit == "wall" else f"{label}: {exc}"
        return _fail(session, audit_id, error)
    if isinstance(exc, runner.ChildRaised):
        if exc.kind in INPUT_ERRORS:
            return _fail(session, audit_id, exc.message)
        if device_error(exc.kind, exc.message):  # the host's: retried, as a killed worker is
            runner.discard_current()
            error = f"the device failed: {exc.kind}: {exc.message}"[:1000]
            leases.release_shard(session, claim.shard_id, worker, error)
            return "retry"
        return _fail(session, audit_id, f"internal error in {label}: {exc.kind}: {exc.message}")
    if isinstance(exc, runner.ChildFailed) and exc.returncode != -signal.SIGKILL:
        # a segfault or abort is the model's doing, and it would do it again (SECURITY.md:
        # a model that breaks its sandbox once is never redelivered)
        return _fail(session, audit_id, f"{label}: {exc}; the model is not retried")
    # killed from outside, as the host's OOM killer does: not the model's fault, so try again
    leases.release_shard(session, claim.shard_id, worker, str(exc)[:1000])
    return "retry"


def _time_limit(settings: Settings) -> str:
    return (
        f"the audit ran past its time limit of {settings.audit_time_limit_s} s "
        "(ROBAUDIT_AUDIT_TIME_LIMIT_S); audit fewer samples or raise the limit"
    )


def _fail(session: Session, audit_id: str, error: str) -> Outcome:
    leases.finish(session, audit_id, AuditStatus.FAILED, error=error)
    return "failed"


def _store(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    audit_id: str,
    claim: leases.Claim,
    worker: str,
    body: dict[str, Any],
) -> Outcome:
    for landscape in body["landscapes"]:
        png = render.landscape_png(landscape)
        landscape["png_sha256"] = store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256
    if not leases.complete_shard(session, audit_id, claim.shard_id, worker, body):
        # cancelled or failed by a sibling meanwhile, or the lease went to another worker:
        # the result is dropped, and a cancel that waited for this shard ends now
        leases.release_shard(session, claim.shard_id, worker, None, counted=False)
        if leases.settle_cancel(session, audit_id, settings.stale_after_s):
            return "cancelled"
        return "skipped"
    _failpoint("before-finalise", audit_id)
    finalise(session, audit_id, store)
    return "done"


def _failpoint(name: str, key: str) -> None:
    """Fault tests kill this worker here (kill -9), once, when they leave a marker file."""
    folder = Settings.from_env().failpoint_dir
    marker = folder / f"{name}-{key}" if folder else None
    if marker is not None and marker.exists():
        marker.unlink()
        os.kill(os.getpid(), signal.SIGKILL)

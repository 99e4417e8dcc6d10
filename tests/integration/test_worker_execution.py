"""The worker's path from rows to the engine and back, with the real core and database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.persistence.models import Audit, AuditShard, Model
from infra.storage import ArtifactStore
from tests.factories import hostile, images
from tests.factories.api import upload_dataset, upload_model
from tests.factories.models import cnn_onnx, digits_split, natural_cnn, to_onnx
from worker import execution, inspection, leases


class NaNScores(torch.nn.Module):
    """Valid graph, useless scores: every output is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * float("nan")


SMALL = {"epsilons": [0.1, 0.2], "steps": 5, "max_samples": 40}
# The sandbox and the backend choice do not depend on the database; these tests run on one.
# Index 0, SQLite, as in the session fixture's params: the tests group with its other users.
ONE_DATABASE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
# for lifecycle tests, where the numbers do not matter: no landscapes, one ε, few steps
LIGHT = {
    "epsilons": [0.1],
    "steps": 2,
    "max_samples": 40,
    "baselines": ["clean"],
    "landscape": {"samples": 0},
}


def queue_audit(client: FlaskClient, auth: dict[str, str], model: bytes, config: dict) -> str:
    split = digits_split()
    npz = hostile.npz_bytes(x=split.x_test[:40], y=split.y_test[:40])
    model_id = upload_model(client, auth, model).get_json()["id"]
    dataset_id = upload_dataset(client, auth, npz).get_json()["id"]
    resp = client.post(
        "/v1/audits",
        json={"model_id": model_id, "dataset_id": dataset_id, "config": config},
        headers=auth,
    )
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def reload(db_session: Session, audit_id: str) -> Audit:
    """The audit row as the database has it now (workers wrote it through other statements)."""
    audit = db_session.get(Audit, audit_id)
    assert audit is not None
    db_session.refresh(audit)
    return audit


def run(db_session: Session, settings: Settings, audit_id: str, shard_size: int = 512) -> Audit:
    """What the run_audit and run_shard tasks do, in-process and in order."""
    store = ArtifactStore(settings.artifact_dir)
    for position in execution.plan_shards(db_session, audit_id, shard_size):
        execution.execute_shard(
            session=db_session,
            store=store,
            settings=settings,
            audit_id=audit_id,
            position=position,
            worker="test-worker",
        )
    return reload(db_session, audit_id)


def test_audit_runs_and_stores_the_contract_result(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    audit = run(db_session, settings, audit_id)
    assert audit.status == "succeeded", audit.error
    assert audit.backend == "torch"
    assert audit.started_at is not None
    assert audit.finished_at is not None
    assert audit.progress_done == audit.progress_total > 0
    result = audit.result
    assert result is not None
    assert [e["epsilon"] for e in result["per_epsilon"]] == [0.1, 0.2]
    for eps in result["per_epsilon"]:
        d = eps["divergence"]
        assert 0 <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= d["max"]
        assert eps["pgd_accuracy"] <= eps["clean_accuracy"]
    assert result["samples"] == 40
    assert result["diagnostics"]["parity_max_abs_diff"] < 1e-4
    manifest = result["manifest"]
    assert manifest["model_sha256"] == audit.model.sha256
    assert manifest["config_hash"] == audit.config_hash
    assert manifest["versions"]["torch"] != "absent"
    assert manifest["device"] == "cpu"
    # the API serves what the worker stored
    served = client.get(f"/v1/audits/{audit_id}", headers=auth).get_json()
    assert served["status"] == "succeeded"
    assert (
        served["result"]["per_epsilon"][0]["divergence"] == result["per_epsilon"][0]["divergence"]
    )
    assert len(result["landscapes"]) == 8  # 4 samples at each of 2 ε
    grid = client.get(f"/v1/audits/{audit_id}/landscape/0", headers=auth).get_json()
    assert len(grid["loss"]) == len(grid["margin"]) == len(grid["coords"]) == 21
    assert grid["coords"][0] == pytest.approx(-0.2)
    assert grid["coords"][-1] == pytest.approx(0.2)
    png = client.get(f"/v1/audits/{audit_id}/landscape/0.png", headers=auth)
    assert png.status_code == 200
    assert png.mimetype == "image/png"
    assert png.data.startswith(b"\x89PNG")
    png.close()  # send_file's open file; a WSGI server closes it, the test client does not
    assert client.get(f"/v1/audits/{audit_id}/landscape/8", headers=auth).status_code == 404
    report = client.get(f"/v1/audits/{audit_id}/report", headers=auth).get_data(as_text=True)
    # 8 landscapes, the ε-sweep, the ψ histogram and the 6 most vulnerable samples
    assert report.count("data:image/png;base64,") == 8 + 2 + 6
    worst = result["vulnerable"]
    assert [v["epsilon"] for v in worst] == [0.2] * 6
    psi = result["per_epsilon"][1]["per_sample"]
    assert [v["divergence"] for v in worst] == sorted(psi, reverse=True)[:6]
    for v in worst:
        assert f"sample {v['sample_index']}</b>" in report
        assert v["png_sha256"]
    assert result["figures"]["sweep_png_sha256"]
    assert "Most vulnerable samples (ε = 0.2)" in report
    assert "None" not in report


@ONE_DATABASE
def test_an_image_zip_is_decoded_in_the_worker_and_its_class_names_reported(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    upload = upload_dataset(client, auth, images.folder_zip(per_class=3), crop_fraction="0.875")
    assert upload.status_code == 201, upload.get_json()
    data = upload.get_json()
    assert (data["format"], data["n"], data["shape"]) == ("images", 6, [])
    assert (data["class_names"], data["crop_fraction"]) == (["cat", "dog"], 0.875)
    model_id = upload_model(client, auth, cnn_onnx(natural_cnn())).get_json()["id"]
    resp = client.post(
        "/v1/audits",
        json={"model_id": model_id, "dataset_id": data["id"], "config": LIGHT},
        headers=auth,
    )
    assert resp.status_code == 202, resp.get_json()
    audit = run(db_session, settings, resp.get_json()["id"], shard_size=4)  # two shards
    assert audit.status == "succeeded", audit.error
    assert audit.result is not None
    assert audit.result["samples"] == 6
    assert audit.result["manifest"]["class_names"] == ["cat", "dog"]
    report = client.get(f"/v1/audits/{audit.id}/report", headers=auth).get_data(as_text=True)
    assert '<td class="name">cat (0)</td>' in report  # the per-class table
    assert "true class dog (1)" in report or "true class cat (0)" in report  # a vulnerable one


@ONE_DATABASE
def test_onnxruntime_backend_on_request(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    config = {
        **SMALL,
        "epsilons": [0.1],
        "backend": "onnxruntime",
        "max_samples": 8,
        "baselines": ["clean"],
    }
    audit = run(db_session, settings, queue_audit(client, auth, cnn_onnx(natural_cnn()), config))
    assert audit.status == "succeeded", audit.error
    assert audit.backend == "onnxruntime"


def test_cancel_while_a_shard_runs_drops_its_result(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    """`cancelling` while a shard runs; its result is refused; the cancel then settles."""
    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), LIGHT)
    [position] = execution.plan_shards(db_session, audit_id, 512)
    claim = leases.claim_shard(db_session, audit_id, position, "w", settings.stale_after_s)
    assert claim is not None
    resp = client.post(f"/v1/audits/{audit_id}/cancel", headers=auth)
    assert resp.get_json()["status"] == "cancelling"  # a shard is running: not over yet
    assert leases.heartbeat(db_session, audit_id, claim.shard_id, "w", 5, "clean")  # stop
    assert leases.claim_shard(db_session, audit_id, position, "w2", 60) is None
    assert not leases.complete_shard(db_session, audit_id, claim.shard_id, "w", {"x": 1})
    leases.release_shard(db_session, claim.shard_id, "w", "stopped: cancel requested")
    assert leases.settle_cancel(db_session, audit_id, settings.stale_after_s)
    audit = reload(db_session, audit_id)
    assert (audit.status, audit.result, audit.shards_done) == ("cancelled", None, 0)
    shard = db_session.scalars(select(AuditShard).where(AuditShard.audit_id == audit_id)).one()
    assert (shard.status, shard.result) == ("pending", None)


@ONE_DATABASE
def test_inspect_model_fills_backend_status(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    model_id = upload_model(client, auth, cnn_onnx(natural_cnn())).get_json()["id"]
    store = ArtifactStore(settings.artifact_dir)
    assert (
        inspection.inspect_model(
            session=db_session, store=store, settings=settings, model_id=model_id
        )
        == "inspected"
    )
    assert (
        inspection.inspect_model(
            session=db_session, store=store, settings=settings, model_id=model_id
        )
        == "skipped"
    )
    model = db_session.get(Model, model_id)
    assert model is not None
    assert model.backends["torch"]["ok"] is True
    assert model.backends["torch"]["parity_max_abs_diff"] < 1e-4
    assert model.backends["onnxruntime"]["ok"] is True


def test_sharded_audit_aggregates_once(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    from worker.model_cache import MODELS

    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    misses = MODELS.misses
    audit = run(db_session, settings, audit_id, shard_size=16)
    assert audit.status == "succeeded", audit.error
    assert (audit.shards_total, audit.shards_done) == (3, 3)
    assert MODELS.misses - misses <= 1  # one conversion (none if cached), shared by the shards
    assert audit.progress_done == audit.progress_total == 40 * (2 + 1)  # clean + 2 ε
    result = audit.result
    assert result is not None
    assert result["samples"] == 40
    assert result["manifest"]["shards"] == 3
    assert len(result["per_epsilon"][0]["per_sample"]) == 40
    assert len(result["landscapes"]) == 8  # drawn by the first shard only, at both ε
    psi = result["per_epsilon"][1]["per_sample"]
    top = sorted(range(40), key=lambda i: (-psi[i], i))[:6]  # the global top 6 of 3 shards
    assert [v["sample_index"] for v in result["vulnerable"]] == top
    per_class = result["per_epsilon"][1]["per_class"]
    assert sum(c["samples"] for c in per_class) == 40
    # a redelivered shard is neither run nor counted again
    store = ArtifactStore(settings.artifact_dir)
    again = execution.execute_shard(
        session=db_session, store=store, settings=settings, audit_id=audit_id, position=1,
        worker="w",
    )  # fmt: skip
    assert again == "skipped"
    shard = db_session.scalars(
        select(AuditShard).where(AuditShard.audit_id == audit_id, AuditShard.position == 1)
    ).one()
    assert not leases.complete_shard(db_session, audit_id, shard.id, "test-worker", {})
    assert shard.attempts == 1


@ONE_DATABASE
def test_a_model_that_emits_nan_fails_clearly_and_stops_its_other_shards(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    """The first shard fails naming the cause; the others see a failed audit and skip. (A
    one-shard run of the same model proved only the first half, at the same cost.)"""
    audit_id = queue_audit(client, auth, to_onnx(NaNScores()), SMALL)
    audit = run(db_session, settings, audit_id, shard_size=16)
    assert audit.status == "failed"
    assert audit.error is not None
    assert "NaN or inf" in audit.error
    assert audit.shards_done == 0  # shards 1 and 2 saw a failed audit and skipped


def test_finalise_is_idempotent_and_retriggered(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker died between the last shard's commit and the merge: a re-delivered run_audit
    and the sweeper both finish it, any number of times, with the same result."""
    from worker.sweeper import finalise_done

    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), LIGHT)
    real_finalise = execution.finalise
    monkeypatch.setattr(execution, "finalise", lambda _session, _audit_id, _store=None: False)
    audit = run(db_session, settings, audit_id, shard_size=20)
    assert (audit.status, audit.shards_done, audit.result) == ("running", 2, None)
    monkeypatch.setattr(execution, "finalise", real_finalise)

    assert execution.plan_shards(db_session, audit_id, 20) == []  # what run_audit does first
    assert finalise_done(db_session) == [audit_id]  # the sweeper
    db_session.refresh(audit)
    assert audit.status == "succeeded"
    first = audit.result
    assert first is not None
    assert audit.progress_done == audit.progress_total
    assert execution.finalise(db_session, audit_id)  # run_audit on a re-delivery
    assert finalise_done(db_session) == []
    db_session.refresh(audit)
    assert audit.status == "succeeded"
    assert audit.result == first


def test_a_shard_whose_worker_keeps_dying_fails_the_audit_naming_it(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    """Each attempt is counted before it runs; after `max_shard_attempts` the audit fails."""
    from datetime import timedelta

    from infra.dispatch import take_over_stale_shards
    from infra.persistence.models import utcnow

    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), SMALL)
    [position] = execution.plan_shards(db_session, audit_id, 512)
    for attempt in range(settings.max_shard_attempts):
        claim = leases.claim_shard(db_session, audit_id, position, f"w{attempt}", 60)
        assert claim is not None
        assert claim.attempts == attempt + 1
        assert leases.claim_shard(db_session, audit_id, position, "other", 60) is None  # held
        again = leases.claim_shard(db_session, audit_id, position, f"w{attempt}", 60)
        assert again is not None  # the same worker retrying after a database error
        assert again.attempts == attempt + 1  # is not a second attempt
        db_session.execute(  # the worker is killed: its heartbeat goes stale
            update(AuditShard)
            .where(AuditShard.id == claim.shard_id)
            .values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
        db_session.commit()
        assert take_over_stale_shards(db_session, settings) == 1
    outcome = execution.execute_shard(
        session=db_session,
        store=ArtifactStore(settings.artifact_dir),
        settings=settings,
        audit_id=audit_id,
        position=position,
        worker="last",
    )
    assert outcome == "failed"
    audit = reload(db_session, audit_id)
    assert audit.status == "failed"
    assert audit.error is not None
    assert "shard 0 (samples 0–39) was tried 3 times" in audit.error
    assert "stopped heartbeating" in audit.error


def test_a_crash_of_the_sandbox_fails_at_once_but_a_kill_is_retried(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    """A segfault is the model's doing and would recur; SIGKILL may be the host's OOM killer."""
    import signal

    from worker.runner import ChildFailed

    def end(audit_id: str, returncode: int) -> str:
        [position] = execution.plan_shards(db_session, audit_id, 512)
        claim = leases.claim_shard(db_session, audit_id, position, "w", 60)
        assert claim is not None
        name = signal.Signals(-returncode).name
        exc = ChildFailed(f"the model's sandbox died (signal {name})", returncode)
        return execution._ended(db_session, settings, audit_id, claim, "w", "shard 0", exc)

    killed = queue_audit(client, auth, cnn_onnx(natural_cnn()), LIGHT)
    assert end(killed, -signal.SIGKILL) == "retry"
    crashed = queue_audit(client, auth, cnn_onnx(natural_cnn()), {**LIGHT, "seed": 1})
    assert end(crashed, -signal.SIGSEGV) == "failed"
    audit = reload(db_session, crashed)
    assert audit.status == "failed"
    assert audit.error is not None
    assert "SIGSEGV" in audit.error
    assert "not retried" in audit.error
    assert reload(db_session, killed).status != "failed"


@ONE_DATABASE
def test_a_graph_that_allocates_from_its_input_shape_hits_the_memory_limit(
    client: FlaskClient, auth: dict[str, str], db_session: Session, settings: Settings
) -> None:
    """Intake cannot see a shape computed from Shape(x); the worker's sandbox bounds it, the
    audit fails naming the limit, inspection says so too, and the worker runs the next one."""
    import numpy as np

    limited = settings.with_overrides(audit_memory_bytes=6 << 30)
    model_id = upload_model(client, auth, hostile.runtime_shape_bomb()).get_json()["id"]
    rng = np.random.default_rng(0)
    npz = hostile.npz_bytes(x=rng.random((40, 4), dtype=np.float32), y=np.arange(40) % 4)
    dataset_id = upload_dataset(client, auth, npz).get_json()["id"]
    body = {"model_id": model_id, "dataset_id": dataset_id, "config": LIGHT}
    resp = client.post("/v1/audits", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    audit = run(db_session, limited, resp.get_json()["id"])
    assert audit.status == "failed", (audit.status, audit.error, audit.stage)
    assert audit.error is not None
    assert "exceeded its limit of 6.00 GiB of memory" in audit.error, audit.error
    store = ArtifactStore(settings.artifact_dir)
    inspection.inspect_model(session=db_session, store=store, settings=limited, model_id=model_id)
    model = db_session.get(Model, model_id)
    assert model is not None
    assert model.backends["torch"]["ok"] is False
    assert "memory" in model.backends["torch"]["reason"]
    fine = queue_audit(client, auth, cnn_onnx(natural_cnn()), LIGHT)
    assert run(db_session, limited, fine).status == "succeeded"


@ONE_DATABASE
def test_a_device_failure_is_retried_in_a_fresh_child_not_blamed_on_the_model(
    client: FlaskClient,
    auth: dict[str, str],
    db_session: Session,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU that fails (here: one this host lacks) is the host's fault, as a killed worker
    is: the shard is tried again, each time in a new child, up to max_shard_attempts."""
    from worker import runner

    audit_id = queue_audit(client, auth, cnn_onnx(natural_cnn()), LIGHT)
    one = settings.with_overrides(max_shard_attempts=1)
    monkeypatch.setenv("ROBAUDIT_DEVICE", "cuda:99")
    [position] = execution.plan_shards(db_session, audit_id, 512)
    store, children = ArtifactStore(settings.artifact_dir), []
    outcomes = []
    for _ in range(2):
        outcomes.append(
            execution.execute_shard(
                session=db_session, store=store, settings=one, audit_id=audit_id,
                position=position, worker="test-worker",
            )
        )  # fmt: skip
        children.append(runner._current)
    assert outcomes == ["retry", "failed"]
    assert children[0] is None  # the failed child was ended, not reused
    audit = reload(db_session, audit_id)
    assert audit.status == "failed"
    assert audit.error is not None
    assert "was tried once and never finished; last time the device failed" in audit.error
    assert "internal error" not in audit.error
    # the model's inspection, too: left for the sweeper to re-send, the attempt counted
    model = db_session.get(Model, audit.model_id)
    assert model is not None
    before = model.backends
    assert inspection.inspect_model(
        session=db_session, store=store, settings=one, model_id=audit.model_id
    ) == "retry"  # fmt: skip
    db_session.refresh(model)
    assert (model.inspected_at, model.inspect_attempts, model.backends) == (None, 1, before)


def test_the_spare_child_warms_up_on_the_device_the_worker_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child's environment has no ROBAUDIT_DEVICE, so the worker passes its device: a
    CPU worker's spare on a GPU host must not start CUDA before its memory cap is set. Here
    a device this host lacks proves the worker's choice reaches the warm-up: it fails there,
    where the child's own default (the CPU) would have warmed up (every e2e worker does)."""
    from worker import runner

    runner.close()
    monkeypatch.setenv("ROBAUDIT_DEVICE", "cuda:99")
    try:
        runner.prestart(1)
        spare = runner._spare
        assert spare is not None
        assert spare.wait_preloaded(timeout_s=1) is None
    finally:
        runner.close()


@pytest.fixture(autouse=True, scope="module")
def _end_the_sandbox() -> Iterator[None]:
    """The worker keeps its sandbox child between calls; a test module ends it."""
    from worker import runner

    yield
    runner.close()

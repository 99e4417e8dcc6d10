"""A shard on CUDA through the worker's sandbox child: no RLIMIT_AS, Landlock with the NVIDIA
device nodes writable, the same result as the engine in-process on the CPU."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.config import Settings
from infra.sandbox import Limits, Sandbox, SandboxError
from robustness.config import AuditConfig
from robustness.engine import run_audit
from robustness.loading import load
from robustness.spec import spec_from_config
from tests.factories.hostile import npz_bytes
from tests.gpu.cuda import CPU, digits_data, digits_onnx, needs_cuda
from worker import runner

pytestmark = [pytest.mark.gpu, needs_cuda]
GiB = 1 << 30
CONFIG = AuditConfig(epsilons=[0.1], steps=20, landscape={"samples": 1, "resolution": 5})
Record = Callable[[str, object], None]


def _artifacts(tmp_path: Path, n: int) -> tuple[Path, Path]:
    model, data = tmp_path / "model.onnx", tmp_path / "data.npz"
    model.write_bytes(digits_onnx())
    x, y = digits_data(n)
    data.write_bytes(npz_bytes(x=x, y=y))
    return model, data


def _payload(model: Path, data: Path, n: int) -> dict[str, Any]:
    """What worker/execution.py `_payload` sends, for samples [0, n) of an .npz."""
    return {
        "model_path": str(model),
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "dataset_path": str(data),
        "start": 0,
        "stop": n,
        "position": 0,
        "config": CONFIG.model_dump(mode="json"),
        "input_range": [0.0, 1.0],
        "output": None,
        "max_member_bytes": 1 << 28,
        "max_total_bytes": 1 << 29,
        "images": None,
        "threads": 4,
        "device": "cuda",
    }


def _probe(limits: Limits, readable: list[str]) -> tuple[dict[str, Any] | None, str]:
    """tests/sandbox_targets.py `cuda_probe` in a fresh child: its answer (None if it
    failed) and a line saying what happened."""
    try:
        with Sandbox(limits) as box:
            value = box.call(
                "tests.sandbox_targets:cuda_probe", {}, readable=[Path(p) for p in readable]
            )
            return value, f"landlock ABI {box.landlock_abi}: {value}"
    except SandboxError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _diagnosis(limits: Limits) -> str:
    """Which restriction stopped CUDA: wider reads, no Landlock, no address-space cap."""
    wide = ["/proc", "/sys", "/dev", "/etc", "/run", "/var", "/opt", "/tmp"]
    lines = [
        f"as configured: {_probe(limits, [])[1]}",
        f"reading {wide}: {_probe(limits, wide)[1]}",
        f"no Landlock: {_probe(Limits(address_space_cap=False, landlock=False), [])[1]}",
    ]
    return "\n".join(lines)


def test_a_shard_runs_on_cuda_in_the_sandbox_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Record
) -> None:
    monkeypatch.delenv("ROBAUDIT_DEVICE", raising=False)  # unset: CUDA because torch sees it
    settings = Settings()
    limits = runner.limits(settings, wall_seconds=300, threads=4)
    assert not limits.address_space_cap
    n = 128
    model, data = _artifacts(tmp_path, n)
    events: list[dict[str, Any]] = []
    try:
        body = runner.call(
            "worker.sandboxed:run_shard",
            _payload(model, data, n),
            settings=settings,
            wall_seconds=300,
            readable=[str(model), str(data)],
            on_event=events.append,
            should_stop=lambda: False,
        )
        abi = runner._current.landlock_abi if runner._current is not None else -1
    except SandboxError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}\n{_diagnosis(limits)}")
    finally:
        runner.close()
    record_property("sandbox_landlock_abi", abi)
    assert body["manifest"]["device"] == "cuda"
    assert body["backend"] == "torch"
    assert {"stage": "loaded"} in events
    x, y = digits_data(n)
    spec = spec_from_config(CONFIG, [0.0, 1.0])
    on_cpu = run_audit(load(digits_onnx(), x[:32], device=CPU).backend, x, y, spec, device=CPU)
    got = body["per_epsilon"][0]["divergence"]["mean"]
    want = on_cpu.per_epsilon[0].divergence.mean
    record_property("sandbox_psi_mean_cuda_over_cpu", round(got / want, 4))
    assert abs(got / want - 1) < 0.05
    assert body["per_epsilon"][0]["clean_accuracy"] == on_cpu.per_epsilon[0].clean_accuracy


def test_cuda_does_not_start_under_the_address_space_cap(record_property: Record) -> None:
    """Why the cap is off on CUDA: under the default 8 GiB RLIMIT_AS the driver cannot map
    its ranges (worker/runner.py turns it off whenever shards run on CUDA)."""
    capped, said = _probe(Limits(memory_bytes=8 * GiB, landlock=False), [])
    record_property("cuda_under_8GiB_RLIMIT_AS", said[:300])
    assert capped is None or not capped["available"], said
    uncapped, said = _probe(Limits(memory_bytes=8 * GiB, address_space_cap=False), [])
    record_property("cuda_uncapped_with_landlock", said[:300])
    assert uncapped is not None, said
    assert uncapped["available"], said
    assert np.isclose(uncapped["sum"], 256.0**3)

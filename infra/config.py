"""Configuration from the environment, mapped in one place (Warehouse `configure()`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MiB = 1 << 20

# Every environment variable robaudit reads (the compose test checks docker-compose against it).
ENV_VARS = (
    "ROBAUDIT_DATA_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "ROBAUDIT_REDIS_PREFIX",
    "ROBAUDIT_QUEUE",
    "ROBAUDIT_MAX_MODEL_MB",
    "ROBAUDIT_MAX_DATASET_MB",
    "ROBAUDIT_AUDIT_TIME_LIMIT_S",
    "ROBAUDIT_DEVICE",
    "ROBAUDIT_SWEEP_INTERVAL_S",
    "ROBAUDIT_SHARD_SIZE",
    "ROBAUDIT_URL",
    "ROBAUDIT_API_KEY",
    # hostile-upload limits (issue 11)
    "ROBAUDIT_MAX_JSON_KB",
    "ROBAUDIT_MAX_NPZ_TOTAL_MB",
    "ROBAUDIT_INTAKE_MAX_NODES",
    "ROBAUDIT_INTAKE_MAX_DEPTH",
    "ROBAUDIT_INTAKE_MEMORY_MB",
    "ROBAUDIT_INTAKE_CPU_S",
    "ROBAUDIT_INTAKE_WALL_S",
    "ROBAUDIT_SWEEP_GRACE_S",
    # lifecycle (issue 10)
    "ROBAUDIT_STALE_AFTER_S",
    "ROBAUDIT_HEARTBEAT_S",
    "ROBAUDIT_MAX_SHARD_ATTEMPTS",
    "ROBAUDIT_TORCH_THREADS",
    "ROBAUDIT_WORKER_PROCESSES",
    "ROBAUDIT_AUDIT_MEMORY_MB",
    "ROBAUDIT_FAILPOINT_DIR",  # fault tests only: where they ask a worker to die (execution.py)
    # budgets (issue 10)
    "ROBAUDIT_DEFAULT_PASSES_PER_S",
    "ROBAUDIT_MAX_AUDIT_PASSES",
    "ROBAUDIT_MAX_AUDIT_SECONDS",
    "ROBAUDIT_MAX_RUNNING_AUDITS",
    "ROBAUDIT_MAX_QUEUED_AUDITS",
    "ROBAUDIT_MAX_TENANT_STORED_MB",
    "ROBAUDIT_RATE_LIMIT",
    "ROBAUDIT_BAD_KEY_RATE_LIMIT",
)


@dataclass(frozen=True)
class Settings:
    """Every knob robaudit reads; `from_env` documents the variable behind each one."""

    data_dir: Path
    database_url: str
    redis_url: str | None = None
    redis_prefix: str = ""
    queue: str = "robaudit"
    max_model_bytes: int = 1024 * MiB
    max_dataset_bytes: int = 1024 * MiB
    max_npz_member_bytes: int = 4096 * MiB
    audit_time_limit_s: int = 6 * 3600
    shard_size: int = 512
    # lifecycle (issue 10)
    stale_after_s: float = 60.0  # a shard or model inspection silent this long: its worker is gone
    heartbeat_s: float = 2.0  # running shards heartbeat and read the cancel flag this often
    max_shard_attempts: int = 3  # a shard whose process died this often fails its audit
    sweep_interval_s: float = 30.0
    torch_threads: int | None = None  # None: CPUs this worker may use / workers on the host
    worker_processes: int | None = None  # None: counted from the host's robaudit workers
    audit_memory_bytes: int = 8192 * MiB  # a shard's or an inspection's sandbox (SECURITY.md)
    # budgets (issue 10): caps per audit and per tenant, rate limits (service/limits.py)
    default_passes_per_s: float = 2000.0
    max_audit_passes: int = 2_000_000_000
    max_audit_seconds: float = 6 * 3600
    max_running_audits: int = 4
    max_queued_audits: int = 20
    max_tenant_stored_bytes: int = 10 * 1024 * MiB
    rate_limit: str = "600 per minute"
    bad_key_rate_limit: str = "30 per minute"
    extra: Mapping[str, Any] = field(default_factory=dict)
    # hostile-upload limits (issue 11); SECURITY.md explains each one
    max_json_bytes: int = 1 * MiB
    max_npz_total_bytes: int = 4096 * MiB
    intake_max_nodes: int = 100_000
    intake_max_depth: int = 8
    intake_memory_bytes: int = 4096 * MiB
    intake_cpu_s: float = 60.0
    intake_wall_s: float = 120.0
    sweep_grace_s: float = 3600.0

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from the variables in ENV_VARS (README and SECURITY.md list each one)."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("ROBAUDIT_DATA_DIR", ".robaudit")).resolve()
        return cls(
            data_dir=data_dir,
            database_url=env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'robaudit.db'}",
            redis_url=env.get("REDIS_URL") or None,
            redis_prefix=env.get("ROBAUDIT_REDIS_PREFIX", ""),
            queue=env.get("ROBAUDIT_QUEUE", "robaudit"),
            max_model_bytes=int(env.get("ROBAUDIT_MAX_MODEL_MB", "1024")) * MiB,
            max_dataset_bytes=int(env.get("ROBAUDIT_MAX_DATASET_MB", "1024")) * MiB,
            audit_time_limit_s=int(env.get("ROBAUDIT_AUDIT_TIME_LIMIT_S", str(6 * 3600))),
            shard_size=int(env.get("ROBAUDIT_SHARD_SIZE", "512")),
            # hostile-upload limits (issue 11)
            max_json_bytes=int(env.get("ROBAUDIT_MAX_JSON_KB", "1024")) * 1024,
            max_npz_total_bytes=int(env.get("ROBAUDIT_MAX_NPZ_TOTAL_MB", "4096")) * MiB,
            intake_max_nodes=int(env.get("ROBAUDIT_INTAKE_MAX_NODES", "100000")),
            intake_max_depth=int(env.get("ROBAUDIT_INTAKE_MAX_DEPTH", "8")),
            intake_memory_bytes=int(env.get("ROBAUDIT_INTAKE_MEMORY_MB", "4096")) * MiB,
            intake_cpu_s=float(env.get("ROBAUDIT_INTAKE_CPU_S", "60")),
            intake_wall_s=float(env.get("ROBAUDIT_INTAKE_WALL_S", "120")),
            sweep_grace_s=float(env.get("ROBAUDIT_SWEEP_GRACE_S", "3600")),
            # lifecycle (issue 10)
            stale_after_s=float(env.get("ROBAUDIT_STALE_AFTER_S", "60")),
            heartbeat_s=float(env.get("ROBAUDIT_HEARTBEAT_S", "2")),
            max_shard_attempts=int(env.get("ROBAUDIT_MAX_SHARD_ATTEMPTS", "3")),
            sweep_interval_s=float(env.get("ROBAUDIT_SWEEP_INTERVAL_S", "30")),
            torch_threads=_optional_int(env.get("ROBAUDIT_TORCH_THREADS")),
            worker_processes=_optional_int(env.get("ROBAUDIT_WORKER_PROCESSES")),
            audit_memory_bytes=int(env.get("ROBAUDIT_AUDIT_MEMORY_MB", "8192")) * MiB,
            # budgets (issue 10)
            default_passes_per_s=float(env.get("ROBAUDIT_DEFAULT_PASSES_PER_S", "2000")),
            max_audit_passes=int(env.get("ROBAUDIT_MAX_AUDIT_PASSES", "2000000000")),
            max_audit_seconds=float(env.get("ROBAUDIT_MAX_AUDIT_SECONDS", str(6 * 3600))),
            max_running_audits=int(env.get("ROBAUDIT_MAX_RUNNING_AUDITS", "4")),
            max_queued_audits=int(env.get("ROBAUDIT_MAX_QUEUED_AUDITS", "20")),
            max_tenant_stored_bytes=int(env.get("ROBAUDIT_MAX_TENANT_STORED_MB", "10240")) * MiB,
            rate_limit=env.get("ROBAUDIT_RATE_LIMIT", "600 per minute"),
            bad_key_rate_limit=env.get("ROBAUDIT_BAD_KEY_RATE_LIMIT", "30 per minute"),
        )

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides)

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.artifact_dir, self.broker_dir):
            d.mkdir(parents=True, exist_ok=True)


def _optional_int(value: str | None) -> int | None:
    return int(value) if value else None

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

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """ROBAUDIT_DATA_DIR, DATABASE_URL, REDIS_URL, ROBAUDIT_REDIS_PREFIX, ROBAUDIT_QUEUE,
        ROBAUDIT_MAX_MODEL_MB, ROBAUDIT_MAX_DATASET_MB, ROBAUDIT_AUDIT_TIME_LIMIT_S,
        ROBAUDIT_SHARD_SIZE; the caps and rate limits of service/limits.py (ROBAUDIT_MAX_*,
        ROBAUDIT_DEFAULT_PASSES_PER_S, ROBAUDIT_RATE_LIMIT, ROBAUDIT_BAD_KEY_RATE_LIMIT)."""
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

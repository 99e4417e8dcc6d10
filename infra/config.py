"""Every setting robaudit reads from the environment, defined once: `Settings`.

Each field names its variable, unit, bounds and meaning (`Env` beside `Field`). `from_env`
reads them, and a bad value fails at start with the variable and what it allows. README's
tables are generated from here (infra/config_docs.py).
"""

from __future__ import annotations

import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types as at
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MiB = 1 << 20
KiB = 1 << 10
GROUPS = ("general", "budgets", "limits")  # README has a table for each


@dataclass(frozen=True)
class Env:
    """Where a setting comes from: its variable, the unit the variable counts (the field
    holds bytes, the variable MB), and how README shows a default or a domain that the
    field's type and bounds do not say."""

    name: str
    group: str = "general"
    unit: int = 1
    default: str = ""
    allowed: str = ""


class SettingsError(ValueError):
    """An environment variable holds a value its setting does not allow."""


class Settings(BaseSettings):
    """Every knob robaudit reads. Built explicitly (tests) it reads no environment;
    `from_env` reads each field's variable."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    data_dir: Annotated[Path, Env("ROBAUDIT_DATA_DIR")] = Field(
        Path(".robaudit"),
        description="artifacts (by sha256), the SQLite database and the filesystem broker",
    )
    database_url: Annotated[
        str, Env("DATABASE_URL", default="SQLite in the data dir", allowed="an SQLAlchemy URL")
    ] = Field(
        "", pattern=r"^[a-z0-9+]+://", description="e.g. `postgresql+psycopg://user:pw@host/db`"
    )
    redis_url: Annotated[
        str | None,
        Env(
            "REDIS_URL",
            default="unset: filesystem broker",
            allowed="a `redis://`, `rediss://` or `unix://` URL",
        ),
    ] = Field(
        None, pattern=r"^(rediss?|unix)://", description="Celery broker, e.g. `redis://host:6379/0`"
    )
    redis_prefix: Annotated[str, Env("ROBAUDIT_REDIS_PREFIX")] = Field(
        "", description="prefix for every Redis key (several deployments on one Redis)"
    )
    queue: Annotated[str, Env("ROBAUDIT_QUEUE", allowed="letters, digits, `.`, `_`, `-`")] = Field(
        "robaudit",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Celery control queue; shards go to `<name>-compute`",
    )
    device: Annotated[
        str | None,
        Env(
            "ROBAUDIT_DEVICE",
            default="`cuda` if present, else `cpu`",
            allowed="`cpu`, `cuda` or `cuda:N`",
        ),
    ] = Field(None, pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="the worker's torch device")
    shard_size: Annotated[int, Env("ROBAUDIT_SHARD_SIZE")] = Field(
        512,
        ge=1,
        description="samples per shard task; the shards of one audit run on any free workers",
    )
    audit_time_limit_s: Annotated[int, Env("ROBAUDIT_AUDIT_TIME_LIMIT_S")] = Field(
        6 * 3600,
        ge=1,
        description="hard time limit of one audit (the sandbox's wall limit, from its first shard)",
    )
    # lifecycle (issue 10)
    sweep_interval_s: Annotated[float, Env("ROBAUDIT_SWEEP_INTERVAL_S")] = Field(
        30.0,
        gt=0,
        description="how often each worker's sweeper takes over stale shards, re-sends unsent or "
        "lost audits, shards and inspections, and deletes old temporary files",
    )
    stale_after_s: Annotated[float, Env("ROBAUDIT_STALE_AFTER_S")] = Field(
        60.0,
        gt=0,
        description="a shard or inspection silent this long has lost its worker and is taken over "
        "(also the Redis visibility timeout, ×2)",
    )
    heartbeat_s: Annotated[float, Env("ROBAUDIT_HEARTBEAT_S")] = Field(
        2.0, gt=0, description="how often a running shard heartbeats and checks for a cancel"
    )
    max_shard_attempts: Annotated[int, Env("ROBAUDIT_MAX_SHARD_ATTEMPTS")] = Field(
        3,
        ge=1,
        description="starts of a shard (or model inspection) whose process died, "
        "before its audit fails",
    )
    torch_threads: Annotated[
        int | None, Env("ROBAUDIT_TORCH_THREADS", default="CPUs / workers")
    ] = Field(None, ge=1, description="compute threads per worker and sandbox child")
    worker_processes: Annotated[int | None, Env("ROBAUDIT_WORKER_PROCESSES", default="counted")] = (
        Field(None, ge=1, description="worker processes sharing this host's CPUs")
    )
    api_url: Annotated[
        str | None, Env("ROBAUDIT_URL", default="unset", allowed="an `http(s)://` URL")
    ] = Field(
        None,
        pattern=r"^https?://",
        description="the client commands' server (`submit`, `status`, `report`, `gate`)",
    )
    api_key: Annotated[SecretStr | None, Env("ROBAUDIT_API_KEY", default="unset")] = Field(
        None, description="the client commands' API key"
    )
    secret_key: Annotated[
        SecretStr | None,
        Env(
            "ROBAUDIT_SECRET_KEY",
            default="generated once into `DATA_DIR/secret_key`",
            allowed="32 or more characters",
        ),
    ] = Field(
        None,
        min_length=32,
        description="signs the web UI's session cookie; set the same value on every API host",
    )
    session_cookie_secure: Annotated[
        bool, Env("ROBAUDIT_SESSION_COOKIE_SECURE", allowed="`true` or `false`")
    ] = Field(
        False,
        description="send the web UI's session cookie over HTTPS only; `true` wherever the UI "
        "is served behind TLS (`false` lets `make demo`'s plain-HTTP UI sign in)",
    )
    failpoint_dir: Annotated[Path | None, Env("ROBAUDIT_FAILPOINT_DIR", default="unset")] = Field(
        None,
        description="fault tests only: a marker file here kills the worker at that point "
        "(worker/execution.py)",
    )
    # webhooks (issue 9): delivery of audit events to tenants' URLs (infra/webhooks.py)
    webhook_block_private: Annotated[
        bool, Env("ROBAUDIT_WEBHOOK_BLOCK_PRIVATE", default="`true`", allowed="`true` or `false`")
    ] = Field(
        True,
        description="refuse to deliver webhooks to loopback, private, link-local and other "
        "non-public addresses (SSRF); `false` only where every tenant may reach the "
        "worker's network",
    )
    webhook_timeout_s: Annotated[float, Env("ROBAUDIT_WEBHOOK_TIMEOUT_S")] = Field(
        10.0, gt=0, le=60, description="one webhook attempt: connect, send and read the answer"
    )
    webhook_max_attempts: Annotated[int, Env("ROBAUDIT_WEBHOOK_MAX_ATTEMPTS")] = Field(
        8, ge=1, le=50, description="attempts of one webhook delivery before it is `failed`"
    )
    webhook_backoff_s: Annotated[float, Env("ROBAUDIT_WEBHOOK_BACKOFF_S")] = Field(
        30.0,
        gt=0,
        description="wait after a failed webhook attempt; doubles after each, at most 6 h",
    )
    # budgets (issue 10): caps per audit and per tenant, rate limits (service/limits.py)
    max_audit_passes: Annotated[int, Env("ROBAUDIT_MAX_AUDIT_PASSES", "budgets")] = Field(
        2_000_000_000,
        ge=1,
        description="forward + backward passes of one audit (the `202` estimate's); over: 422",
    )
    max_audit_seconds: Annotated[float, Env("ROBAUDIT_MAX_AUDIT_SECONDS", "budgets")] = Field(
        6 * 3600.0,
        gt=0,
        description="expected engine seconds of one audit on one worker; over: 422",
    )
    default_passes_per_s: Annotated[float, Env("ROBAUDIT_DEFAULT_PASSES_PER_S", "budgets")] = Field(
        2000.0, gt=0, description="throughput assumed for a model with no succeeded audit yet"
    )
    max_queued_audits: Annotated[int, Env("ROBAUDIT_MAX_QUEUED_AUDITS", "budgets")] = Field(
        20, ge=1, description="audits of one tenant waiting; over: 429 with `Retry-After`"
    )
    max_running_audits: Annotated[int, Env("ROBAUDIT_MAX_RUNNING_AUDITS", "budgets")] = Field(
        4,
        ge=1,
        description="audits of one tenant running; queued + running ≤ both caps together, else 429",
    )
    max_tenant_stored_bytes: Annotated[
        int, Env("ROBAUDIT_MAX_TENANT_STORED_MB", "budgets", MiB)
    ] = Field(
        10 * 1024 * MiB,
        ge=1,
        description="bytes of one tenant's models and datasets (deleted ones do not count); "
        "over: 413",
    )
    rate_limit: Annotated[
        str, Env("ROBAUDIT_RATE_LIMIT", "budgets", allowed="a rate, e.g. `10 per second`")
    ] = Field(
        "600 per minute",
        description="requests per API key (by its sha256), or per address without a key; over: 429",
    )
    bad_key_rate_limit: Annotated[
        str, Env("ROBAUDIT_BAD_KEY_RATE_LIMIT", "budgets", allowed="a rate, e.g. `10 per second`")
    ] = Field(
        "30 per minute",
        description="failed authentications per client address; over: 429 even for a new guess",
    )
    # hostile-upload and sandbox limits (issue 11); SECURITY.md explains each one
    max_model_bytes: Annotated[int, Env("ROBAUDIT_MAX_MODEL_MB", "limits", MiB)] = Field(
        1024 * MiB, ge=1, description="size of an uploaded ONNX file (413)"
    )
    max_dataset_bytes: Annotated[int, Env("ROBAUDIT_MAX_DATASET_MB", "limits", MiB)] = Field(
        1024 * MiB, ge=1, description="size of an uploaded `.npz` (413)"
    )
    max_json_bytes: Annotated[int, Env("ROBAUDIT_MAX_JSON_KB", "limits", KiB)] = Field(
        1 * MiB, ge=1, description="any non-upload request body (413)"
    )
    max_npz_total_bytes: Annotated[int, Env("ROBAUDIT_MAX_NPZ_TOTAL_MB", "limits", MiB)] = Field(
        4096 * MiB, ge=1, description="total inflated size of an `.npz`'s members (422)"
    )
    max_npz_member_bytes: int = Field(  # no variable: SECURITY.md says why it need not move
        4096 * MiB, ge=1, description="inflated size of one `.npz` member (422)"
    )
    intake_max_nodes: Annotated[int, Env("ROBAUDIT_INTAKE_MAX_NODES", "limits")] = Field(
        100_000, ge=1, description="nodes in all graphs and functions of one model (422)"
    )
    intake_max_depth: Annotated[int, Env("ROBAUDIT_INTAKE_MAX_DEPTH", "limits")] = Field(
        8, ge=0, description="nesting depth of subgraphs (422)"
    )
    intake_memory_bytes: Annotated[int, Env("ROBAUDIT_INTAKE_MEMORY_MB", "limits", MiB)] = Field(
        4096 * MiB, ge=1, description="the API's intake sandbox: memory (RLIMIT_AS and RSS)"
    )
    intake_cpu_s: Annotated[float, Env("ROBAUDIT_INTAKE_CPU_S", "limits")] = Field(
        60.0, gt=0, description="the API's intake sandbox: CPU seconds"
    )
    intake_wall_s: Annotated[float, Env("ROBAUDIT_INTAKE_WALL_S", "limits")] = Field(
        120.0, gt=0, description="the API's intake sandbox: wall-clock seconds"
    )
    audit_memory_bytes: Annotated[int, Env("ROBAUDIT_AUDIT_MEMORY_MB", "limits", MiB)] = Field(
        8192 * MiB,
        ge=1,
        description="the worker's sandbox (inspection and shards): memory "
        "(RLIMIT_AS on CPU, RSS always)",
    )
    sweep_grace_s: Annotated[float, Env("ROBAUDIT_SWEEP_GRACE_S", "limits")] = Field(
        3600.0,
        ge=0,
        description="age before the sweep may delete a temp file or an unreferenced artifact",
    )

    @model_validator(mode="before")
    @classmethod
    def _sqlite_in_the_data_dir(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("database_url"):
            data_dir = Path(values.get("data_dir") or cls.model_fields["data_dir"].default)
            data_dir = data_dir.resolve()
            values = {**values, "database_url": f"sqlite:///{data_dir / 'robaudit.db'}"}
        return values

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.resolve()  # a relative dir means the one where the process started

    @field_validator("rate_limit", "bad_key_rate_limit")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        from limits import parse_many  # flask-limiter's own parser: what it accepts, we accept

        parse_many(value)
        return value

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment only through from_env, never by surprise

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from `env` (default: os.environ); SettingsError names every bad one."""
        environ = os.environ if env is None else env
        try:
            return cls(**Environment(cls, environ)())
        except ValidationError as exc:
            raise SettingsError(_explain(exc, environ)) from None

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields changed, validated like the original."""
        return type(self).model_validate({**self.model_dump(), **overrides})

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.artifact_dir, self.broker_dir):
            d.mkdir(parents=True, exist_ok=True)


class Environment(PydanticBaseSettingsSource):
    """pydantic-settings source: each field's `Env` variable from a mapping, scaled to the
    field's unit. Empty counts as unset (compose files write `VAR: ""` to clear one)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = env_of(field)
        raw = self.environ.get(env.name, "").strip() if env else ""
        if not env or not raw:
            return None, field_name, False
        if env.unit != 1 and re.fullmatch(r"-?[0-9]+", raw):
            return int(raw) * env.unit, field_name, False
        return raw, field_name, False  # pydantic parses it (and says why it cannot)

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


def env_of(field: FieldInfo) -> Env | None:
    return next((m for m in field.metadata if isinstance(m, Env)), None)


def variables() -> dict[str, FieldInfo]:
    """Every variable `Settings` reads, with its field."""
    fields = Settings.model_fields.values()
    return {env.name: f for f in fields if (env := env_of(f))}


def allowed(field: FieldInfo) -> str:
    """What the field's variable accepts, in the variable's unit."""
    env = env_of(field)
    if env and env.allowed:
        return env.allowed
    unit = env.unit if env else 1
    kind = next(t for t in _types(field.annotation) if t is not type(None))
    words = {int: "an integer", float: "a number", Path: "a path"}.get(kind, "any text")
    bounds = []
    for m in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(m, getattr(at, attr.capitalize())):
                bounds.append(f"{sign} {math.ceil(getattr(m, attr) / unit)}")
    return " ".join([words, *bounds])


def _types(annotation: Any) -> tuple[Any, ...]:
    union = get_origin(annotation) in (Union, types.UnionType)
    return get_args(annotation) if union else (annotation,)


def _explain(exc: ValidationError, environ: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        field = Settings.model_fields.get(str(error["loc"][0])) if error["loc"] else None
        env = env_of(field) if field else None
        if field is None or env is None:
            lines.append(error["msg"])
            continue
        why = f" ({error['msg']})" if error["type"] == "value_error" else ""
        shown = _shown(field, environ.get(env.name, ""))
        lines.append(f"{env.name}={shown}: expected {allowed(field)}{why}")
    return "bad environment:\n" + "\n".join(f"  {line}" for line in lines)


def _shown(field: FieldInfo, raw: str) -> str:
    """A bad value as the error may print it: start-up errors reach logs and CI output, so a
    secret is never echoed, nor a URL's password."""
    if SecretStr in _types(field.annotation):
        return f"<hidden, {len(raw)} characters>"
    return repr(re.sub(r"([^/@:]*:)[^/@]*@", r"\1***@", raw))

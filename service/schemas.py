"""Request and response schemas (pydantic v2); flask-openapi3 builds /openapi.json from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask_openapi3 import FileStorage
from pydantic import AwareDatetime, ConfigDict, Field, PositiveFloat, field_validator
from pydantic import BaseModel as _PydanticModel


class BaseModel(_PydanticModel):
    """Every schema: finite numbers only, and text the database can store (issue 11).

    NaN and Infinity (JSON allows `Infinity`, and 1e400 parses to it) are refused in every
    float field; so are NUL characters and unpaired surrogates in every string, which
    PostgreSQL cannot store (a 500 before) and no real id or name contains.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        for text in _strings(value):
            if "\x00" in text:
                raise ValueError("must not contain a NUL character")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError("must be valid Unicode text (an unpaired surrogate)") from exc
        return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


class _Form(BaseModel):
    # flask-openapi3 json-decodes form values, so "1" arrives as 1: accept it as text.
    model_config = ConfigDict(coerce_numbers_to_str=True, extra="forbid")


class ModelForm(_Form):
    file: FileStorage = Field(description="The ONNX model, a single self-contained file")
    name: str | None = Field(None, max_length=200)
    version: str | None = Field(None, max_length=100)
    input_range: str | list[float] | None = Field(
        None, description="Input bounds 'lo,hi' (default 0,1)"
    )
    output: str | None = Field(None, max_length=200, description="The output name to audit")
    class_names: str | list[str] | None = Field(
        None, description="Comma-separated or JSON list of class names"
    )


class DatasetForm(_Form):
    file: FileStorage = Field(description=".npz with arrays x (float, N×…) and y (int, N)")
    name: str | None = Field(None, max_length=200)


class LandscapeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int = Field(4, ge=0, le=64)
    resolution: int = Field(21, ge=3, le=101)
    span: float = Field(2.0, gt=0, le=10)


class AuditConfig(BaseModel):
    """The audit settings of api-v1.md, with their defaults."""

    model_config = ConfigDict(extra="forbid")
    norm: Literal["linf", "l2"] = "linf"
    search: Literal["apgd-kl", "pgd-kl"] = Field(
        "apgd-kl", description="apgd-kl: APGD on the KL (default); pgd-kl: the plain PGD of before"
    )
    epsilons: list[PositiveFloat] = Field(
        default_factory=lambda: [0.03], min_length=1, max_length=16
    )
    steps: int = Field(20, ge=1, le=1000)
    step_size: PositiveFloat | None = None
    restarts: int = Field(1, ge=1, le=20)
    logit_normalization: Literal["l2", "none"] = "l2"
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    max_samples: int = Field(1000, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    baselines: list[Literal["clean", "fgsm", "pgd"]] = ["clean", "fgsm", "pgd"]
    landscape: LandscapeConfig = LandscapeConfig()


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: str
    dataset_id: str
    config: AuditConfig = AuditConfig()
    force: bool = Field(False, description="Run again even if an identical audit succeeded")


class IdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(None, alias="Idempotency-Key", max_length=200)


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None


class ModelListQuery(ListQuery):
    name: str | None = None


class AuditListQuery(ListQuery):
    model_id: str | None = None
    model_name: str | None = None
    status: (
        Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"] | None
    ) = None
    created_after: AwareDatetime | None = Field(None, description="With a timezone: …Z or +00:00")
    created_before: AwareDatetime | None = Field(None, description="With a timezone")


class CompareQuery(BaseModel):
    audits: str = Field(description="Comma-separated audit ids; the first is the baseline")
    max_increase: float = Field(0.10, ge=0, description="Relative divergence rise that regresses")


class ModelPath(BaseModel):
    model_id: str


class DatasetPath(BaseModel):
    dataset_id: str


class AuditPath(BaseModel):
    audit_id: str


class LandscapePath(BaseModel):
    audit_id: str
    k: int = Field(ge=0)


class TensorSpec(BaseModel):
    name: str
    shape: list[int | str | None]
    dtype: str


class OutputSpec(BaseModel):
    name: str
    num_classes: int | None
    kind: Literal["logits", "probabilities"]


class BackendState(BaseModel):
    ok: bool | None
    parity_max_abs_diff: float | None = None
    reason: str | None = None


class ModelOut(BaseModel):
    id: str
    name: str
    version: str | None
    sha256: str
    size_bytes: int
    opset: int
    input_range: list[float]
    input: TensorSpec
    output: OutputSpec
    backends: dict[str, BackendState]
    class_names: list[str] | None
    created_at: datetime


class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str
    size_bytes: int
    n: int
    shape: list[int]
    dtype: str
    num_classes: int
    value_range: list[float]
    created_at: datetime


class Progress(BaseModel):
    done: int
    total: int
    stage: str | None


class AuditOut(BaseModel):
    id: str
    model_id: str
    dataset_id: str
    config: dict[str, Any]
    status: str
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    backend: str | None
    error: str | None
    result: dict[str, Any] | None


class CostOut(BaseModel):
    samples: int
    forward_passes: int
    backward_passes: int
    forward_passes_per_sample: int
    backward_passes_per_sample: int
    expected_seconds: float = Field(
        description="Engine seconds of one worker: the passes over passes_per_second"
    )
    passes_per_second: float = Field(
        description="This model's measured throughput, or the operator's default"
    )
    basis: Literal["measured", "default"] = Field(
        description="measured: from this model's latest succeeded audits; default: "
        "ROBAUDIT_DEFAULT_PASSES_PER_S"
    )


class AuditCreated(BaseModel):
    id: str
    status: str
    links: dict[str, str]
    estimate: CostOut
    dispatched: bool


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    detail: str

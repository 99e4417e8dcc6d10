"""Request and response schemas (pydantic v2); flask-openapi3 builds /openapi.json from them.

The audit `config` is robustness.config.AuditConfig and the audit `result` is
robustness.results.AuditResult: defined once in the core, used here as they are. Response
models refuse unknown fields, and the app validates every JSON response against them, so a
response that drifts from its schema fails (a 500 in tests) instead of reaching clients.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from flask_openapi3 import FileStorage
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    WithJsonSchema,
    field_validator,
)
from pydantic import BaseModel as _PydanticModel

from robustness.compare import Comparison, parse_increase
from robustness.config import AuditConfig
from robustness.preprocessing import Preprocessing
from robustness.results import AuditResult, BackendState, EpsilonResult, ResultSummary

_SCHEMAS: dict[Any, dict[str, Any]] = {}  # BaseModel.model_json_schema's, per class and options


class BaseModel(_PydanticModel):
    """Every schema: finite numbers only, and text the database can store (issue 11).

    NaN and Infinity (JSON allows `Infinity`, and 1e400 parses to it) are refused in every
    float field; so are NUL characters and unpaired surrogates in every string, which
    PostgreSQL cannot store (a 500 before) and no real id or name contains.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # flask-openapi3 builds a query or form model's schema on every request, only to read
        # which fields are lists: 1.8 ms of a 10 ms audit list (benchmarks/README.md, API
        # load). Schemas are fixed once the class exists; callers get their own copy.
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMAS[key])

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
        None, description="Input bounds 'lo,hi' (default 0,1; with preprocessing: 0,scale)"
    )
    # A list is accepted here only to be refused with a clear detail (catalog.py).
    preprocessing: str | dict[str, Any] | list[Any] | None = Field(
        None,
        description='JSON object {"scale": 1|255, "mean": [...], "std": [...], "layout": '
        '"NCHW"|"NHWC"}: the audit runs in pixel space [0, scale] with (x − mean) / std '
        "prepended to the graph",
    )
    output: str | None = Field(None, max_length=200, description="The output name to audit")
    class_names: str | list[str] | None = Field(
        None, description="Comma-separated or JSON list of class names"
    )


class DatasetForm(_Form):
    file: FileStorage = Field(
        description=".npz with arrays x (float, N×…) and y (int, N) (np.savez, or x.npy and "
        "y.npy zipped), or a zip of images: class-named folders, or images with a labels.csv"
    )
    name: str | None = Field(None, max_length=200)
    crop_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Image zips: resize so the image covers H×W / crop_fraction, then "
        "center-crop H×W (default 1; 0.875 is the ImageNet 256→224)",
    )


AuditState = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class AuditCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_id: str
    dataset_id: str
    config: AuditConfig = Field(
        default_factory=AuditConfig, description="What to measure; every field has a default"
    )
    force: StrictBool = Field(False, description="Run again even if an identical audit succeeded")


class IdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(None, alias="Idempotency-Key", max_length=200)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso_text(value: Any) -> Any:
    """Only ISO 8601 text is a time here: pydantic would also read a number (or a query's
    "0.5") as Unix seconds, which the documented `date-time` format does not allow."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    raise ValueError("a time is ISO 8601 text, e.g. 2026-12-04T17:00:00Z")


# A time without a timezone is read as UTC, as every time this API writes is.
UtcDatetime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_as_utc)]


def _increase(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return parse_increase(value)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is not a fraction like 0.1 or a percentage like 10% (≥ 0)"
        ) from exc


# "10%" (what the CLI's gate takes) or 0.1: one parser, robustness.compare.parse_increase.
Increase = Annotated[
    float,
    BeforeValidator(_increase),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,6})?%$"},
            ]
        }
    ),
]


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None


class ModelListQuery(ListQuery):
    name: str | None = None


class AuditListQuery(ListQuery):
    model_id: str | None = None
    model_name: str | None = None
    status: AuditState | None = None
    created_after: UtcDatetime | None = Field(
        None, description="ISO 8601, e.g. 2026-01-31T12:00:00Z; without a timezone it is UTC"
    )
    created_before: UtcDatetime | None = Field(
        None, description="ISO 8601; without a timezone it is UTC"
    )


class CompareQuery(BaseModel):
    audits: str = Field(
        description="Comma-separated audit ids; the first is the baseline, or `latest:NAME`: "
        "the newest succeeded audit of models named NAME measured like the second"
    )
    max_increase: Increase = Field(
        0.10, ge=0, description="Relative rise of the mean divergence that regresses: 0.1 or 10%"
    )


class ModelPath(BaseModel):
    model_id: str


class DatasetPath(BaseModel):
    dataset_id: str


class AuditPath(BaseModel):
    audit_id: str


class LandscapePath(BaseModel):
    audit_id: str
    k: int = Field(ge=0)


class Out(_PydanticModel):
    """Every response: exactly its declared fields (an extra one fails validation)."""

    model_config = ConfigDict(extra="forbid")


# Written as datetime.isoformat() ("…+00:00"), as the API always has.
Timestamp = Annotated[datetime, PlainSerializer(lambda d: d.isoformat(), return_type=str)]


class TensorSpec(Out):
    name: str
    shape: list[int | str | None] = Field(description="Dimensions; a name or null is dynamic")
    dtype: str


class OutputSpec(Out):
    name: str
    num_classes: int | None
    kind: Literal["logits", "probabilities"]


class ModelOut(Out):
    """An uploaded classifier, its intake report and which backends can run it."""

    id: str
    name: str
    version: str | None
    sha256: str
    size_bytes: int
    opset: int
    input_range: list[float] = Field(description="Declared input bounds [lo, hi]")
    input: TensorSpec
    output: OutputSpec
    backends: dict[str, BackendState] = Field(description="torch and onnxruntime status")
    class_names: list[str] | None
    preprocessing: Preprocessing | None = Field(
        None, description="Declared preprocessing: pixel space [0, scale], mean/std, layout"
    )
    notes: list[str] = Field(description="What intake changed or noticed (e.g. Softmax stripped)")
    created_at: Timestamp


class DatasetOut(Out):
    """An uploaded evaluation set."""

    id: str
    name: str
    sha256: str
    size_bytes: int
    n: int = Field(description="Number of samples")
    shape: list[int] = Field(
        description="Shape of one sample; [] for images, decoded to the model's input shape"
    )
    dtype: str
    num_classes: int
    value_range: list[float] = Field(
        description="Smallest and largest value in x; images: [0, 1] times the model's scale"
    )
    format: Literal["arrays", "images"] = Field(description="An .npz, or a zip of images")
    class_names: list[str] | None = Field(description="Images: from the folders or labels.csv")
    crop_fraction: float | None = Field(description="Images: the resize and crop, see upload")
    created_at: Timestamp


class Progress(Out):
    done: int = Field(description="Units done: one per sample for the clean pass, and per ε")
    total: int
    stage: str | None
    eta_seconds: float | None = Field(description="Seconds left at the pace so far")


class _AuditFields(Out):
    id: str
    model_id: str
    dataset_id: str
    config: AuditConfig
    status: AuditState
    progress: Progress
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    backend: str | None = Field(description="The backend that ran: torch or onnxruntime")
    error: str | None


class AuditOut(_AuditFields):
    """An audit: its config, status and progress, and its result once it succeeded."""

    result: AuditResult | None


class AuditSummary(_AuditFields):
    """An audit in a list: as `GET /v1/audits/{id}` answers, with a summary of its result."""

    result: ResultSummary | None


class Passes(Out):
    """An audit's cost in forward and backward passes, counted before it runs."""

    samples: int
    forward_passes: int
    backward_passes: int
    forward_passes_per_sample: int
    backward_passes_per_sample: int


class CostOut(Passes):
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


class AuditLinks(Out):
    self: str
    report: str


class AuditCreated(Out):
    """A queued audit (202), or the existing one an idempotent replay or a match found (200)."""

    id: str
    status: AuditState
    links: AuditLinks
    estimate: CostOut
    dispatched: bool = Field(
        description="False: the broker was unreachable; the audit is kept and a worker sends it"
    )


class ModelPage(Out):
    items: list[ModelOut]
    next_cursor: str | None


class DatasetPage(Out):
    items: list[DatasetOut]
    next_cursor: str | None


class AuditPage(Out):
    items: list[AuditSummary]
    next_cursor: str | None


class ReportOut(Out):
    """Everything a report shows: the audit with its model, dataset and cost."""

    audit: AuditOut
    model: ModelOut
    dataset: DatasetOut
    estimate: Passes


class ModelRef(Out):
    id: str
    name: str
    version: str | None


class CompareItem(Out):
    """One audit of a comparison, its per-ε results without the per-sample values."""

    id: str
    model: ModelRef
    dataset_id: str
    created_at: Timestamp
    config: AuditConfig
    per_epsilon: list[EpsilonResult]


class AuditVerdict(Comparison):
    """One audit's verdict against the baseline."""

    audit_id: str
    same_dataset: bool


class CompareOut(Out):
    baseline: str = Field(description="The first audit's id (what `latest:NAME` resolved to)")
    max_increase: float
    items: list[CompareItem]
    verdicts: list[AuditVerdict] = Field(description="One per audit after the baseline")


class Health(Out):
    status: Literal["ok"]


class Readiness(Out):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="database and broker: ok, or why not")


class ProblemOut(Out):
    type: str
    title: str
    status: int
    detail: str

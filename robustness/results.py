"""The audit `result` of api-v1.md as typed models: what the engine returns, what a shard
stores, what merging shards yields and what the API answers (no torch; the API imports it).

Stored results are read back through these models, so they are tolerant: fields added after a
row was written take their defaults, and keys a later version dropped are ignored. Optional
parts a result did not record (per-sample values, convergence, search, manifest, timing) are
left out of the JSON rather than written as null, as they always were.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from robustness.config import BackendKind, Norm
from robustness.preprocessing import Preprocessing


class ResultModel(BaseModel):
    """Frozen, tolerant of stored rows, and silent about the unrecorded optional parts."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    # Fields left out of the JSON when None (a result that did not record them).
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The schema of the fields (the API documents it), not of the serializer below,
        whose return value is any object."""
        fields = {k: v for k, v in core_schema.items() if k != "serialization"}
        return handler(cast(CoreSchema, fields))

    @model_serializer(mode="wrap")
    def _omit_unrecorded(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in self.omit_if_none:
                if key in data and data[key] is None:
                    del data[key]
        return data


class DivergenceSummary(ResultModel):
    """ψ over the audited samples. Lower means more robust."""

    mean: float
    median: float
    p90: float
    max: float
    ci95: tuple[float, float] = Field(description="Percentile-bootstrap 95% CI of the mean")


class Convergence(ResultModel):
    """Did the search level off? Mean ψ after half of its steps against mean ψ at the end."""

    psi_mean_half: float
    psi_mean: float
    relative_gain: float
    converged: bool
    suggested_steps: int | None = Field(description="Steps likely to converge, if not converged")


class SearchInfo(ResultModel):
    """The search that produced ψ: its versioned algorithm and what it spent per sample."""

    algorithm: str = Field(description="Versioned algorithm, e.g. apgd-kl/1")
    steps: int
    restarts: int
    runs: int
    steps_per_run: int
    gradient_evaluations_per_sample: int


class ClassResult(ResultModel):
    """One true class at one ε: counts that add up across shards, and the class's mean ψ."""

    label: int
    samples: int
    divergence_mean: float
    clean_correct: int | None = Field(description="None: the baseline was not run")
    fgsm_correct: int | None
    pgd_correct: int | None


class EpsilonResult(ResultModel):
    """One ε of an audit: the metric and the conventional accuracies beside it."""

    omit_if_none = frozenset({"per_sample", "convergence", "per_class"})
    epsilon: float
    divergence: DivergenceSummary
    clean_accuracy: float | None
    fgsm_accuracy: float | None
    pgd_accuracy: float | None
    per_sample: tuple[float, ...] | None = Field(
        None, description="ψ of each audited sample, in dataset order (absent in summaries)"
    )
    convergence: Convergence | None = None
    per_class: tuple[ClassResult, ...] | None = Field(
        None, description="By true label, in label order (absent in summaries)"
    )


class DegeneracyKind(StrEnum):
    CONSTANT_OUTPUT = "constant_output"
    VANISHING_GRADIENT = "vanishing_gradient"


class Verdict(StrEnum):
    """The result's top-level verdict: whether ψ measures robustness at all."""

    MEASURED = "measured"
    DEGENERATE = "degenerate"


class Degeneracy(ResultModel):
    """Why an audit's ψ cannot be read as robustness."""

    kind: DegeneracyKind
    reason: str


def verdict_of(degeneracy: Degeneracy | None) -> Verdict:
    return Verdict.MEASURED if degeneracy is None else Verdict.DEGENERATE


class Diagnostics(ResultModel):
    """Evidence about whether the gradient search can be trusted."""

    gradient_masking_suspected: bool
    zero_gradient_fraction: float
    nonfinite_gradient_fraction: float
    random_search_wins: int = Field(description="Samples where random noise beat the search")
    parity_max_abs_diff: float | None = Field(
        description="Largest relative |Δ| between the torch conversion and onnxruntime"
    )
    evidence: tuple[str, ...] = ()
    degenerate: Degeneracy | None = Field(None, description="Set: ψ says nothing here")
    blackbox_note: str | None = Field(
        None, description="The finite-difference backend's shortfall against autograd"
    )


class LandscapeResult(ResultModel):
    """One sample's loss and margin surfaces; rows: a along d_adv, columns: b along d_rand."""

    omit_if_none = frozenset({"png_sha256"})
    sample_index: int
    label: int
    epsilon: float
    norm: Norm
    coords: list[float]
    loss: list[list[float]] = Field(description="Cross-entropy on the grid")
    margin: list[list[float]] = Field(description="z_y − max z_other; < 0: misclassified")
    misclassified_fraction_inside_eps: float
    crosses_boundary_within_eps: bool | None
    decision_boundary: list[list[tuple[float, float]]] = Field(
        description="The S = 0 contour as polylines of (a, b) points"
    )
    png_sha256: str | None = Field(None, description="The picture, once a worker drew it")

    def boundary_caption(self) -> str:
        """What the decision surface shows of the boundary S = 0 (drawn as a black line)."""
        lo = min(min(row) for row in self.margin)
        hi = max(max(row) for row in self.margin)
        span = max(abs(c) for c in self.coords)
        if lo < 0 < hi:
            return "black line: the decision boundary S = 0; dashed: the ε-box"
        if lo >= 0:
            return f"no boundary within ±{span:.3g}: margin ≥ {lo:.3g}"
        return f"no boundary within ±{span:.3g}: misclassified throughout, margin ≤ {hi:.3g}"


class VulnerableSample(ResultModel):
    """One of the samples with the largest ψ at the largest ε, as the search left it.

    The arrays are float16, little-endian, base64: `clean` is x, `perturbation` is x' − x
    (kept apart, since x' rounded to float16 would lose a small ε). Inputs larger than
    robustness.vulnerable.MAX_ELEMENTS are thinned (images: every `stride`-th pixel).
    """

    omit_if_none = frozenset({"png_sha256"})
    sample_index: int
    epsilon: float
    divergence: float
    label: int
    clean_prediction: int
    clean_probability: float = Field(description="softmax probability of clean_prediction")
    perturbed_prediction: int
    perturbed_probability: float = Field(description="at x', of perturbed_prediction")
    input_shape: list[int] = Field(description="The model's input shape of one sample")
    shape: list[int] = Field(description="The stored arrays' shape")
    stride: int = 1
    clean: str
    perturbation: str
    png_sha256: str | None = Field(None, description="The picture, once a worker drew it")


class ReportFigures(ResultModel):
    """The audit-wide pictures a worker drew when it merged the shards."""

    sweep_png_sha256: str | None = None
    histogram_png_sha256: str | None = None


class BackendState(ResultModel):
    """Whether a backend can run the model, and its parity with onnxruntime."""

    ok: bool | None
    parity_max_abs_diff: float | None = None
    reason: str | None = None


class Manifest(ResultModel):
    """What the numbers were measured on and with: model and dataset sha256, config hash,
    versions, device and backend."""

    # A shard records device, backends and notes; merging fills in the rest.

    omit_if_none = frozenset(
        {"model_sha256", "dataset_sha256", "config_hash", "versions", "device", "backend",
         "backends", "notes", "input_range", "shards", "preprocessing", "class_names"}
    )  # fmt: skip
    model_sha256: str | None = None
    dataset_sha256: str | None = None
    config_hash: str | None = None
    versions: dict[str, str] | None = None
    device: str | None = None
    backend: str | None = None
    backends: dict[str, BackendState] | None = None
    notes: list[str] | None = None
    input_range: list[float] | None = None
    shards: int | None = None
    preprocessing: Preprocessing | None = Field(
        None, description="The model's declared preprocessing: ε is in its pixel space"
    )
    class_names: list[str] | None = None  # the dataset's (image folders, labels.csv) or model's


class Timing(ResultModel):
    """Engine seconds per stage, summed over the workers that ran the audit."""

    # The CLI adds wall seconds.

    omit_if_none = frozenset({"seconds", "samples_per_second"})
    stages: dict[str, float] = Field(default_factory=dict)
    seconds: float | None = None
    samples_per_second: float | None = None


class EpsilonSummary(ResultModel):
    """One ε of a result summary: EpsilonResult without its per-sample values or convergence."""

    epsilon: float
    divergence: DivergenceSummary
    clean_accuracy: float | None
    fgsm_accuracy: float | None
    pgd_accuracy: float | None


class ResultSummary(ResultModel):
    """A result in a list: its per-ε figures and verdict, without per-sample values, landscape
    grids, evidence or manifest (those stay in the full result)."""

    samples: int
    backend: BackendKind
    verdict: Verdict
    gradient_masking_suspected: bool
    landscapes: int = Field(description="How many landscapes the full result holds")
    per_epsilon: tuple[EpsilonSummary, ...]


class AuditResult(ResultModel):
    """An audit's result: per-ε figures, diagnostics, landscapes and what it was measured on."""

    # Also what one engine call or one shard produces, before the shards merge.

    omit_if_none = frozenset({"search", "manifest", "timing", "figures"})
    per_epsilon: tuple[EpsilonResult, ...]
    samples: int
    backend: BackendKind = Field(description="The backend that ran: torch or onnxruntime")
    batch_size: int = 0
    diagnostics: Diagnostics
    verdict: Verdict = Field(
        Verdict.MEASURED, description="degenerate: ψ is no robustness measure for this model"
    )
    landscapes: tuple[LandscapeResult, ...] = ()
    vulnerable: tuple[VulnerableSample, ...] = Field(
        (), description="The largest-ψ samples at the largest ε, largest first"
    )
    figures: ReportFigures | None = None
    search: SearchInfo | None = None
    manifest: Manifest | None = None
    timing: Timing | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_older_rows(cls, data: Any) -> Any:
        """Shards stored before this model kept `stage_seconds` and `manifest_part`; results
        before the verdict derive it from their degeneracy record."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "stage_seconds" in data and "timing" not in data:
            data["timing"] = {"stages": data.pop("stage_seconds")}
        if "manifest_part" in data and "manifest" not in data:
            data["manifest"] = data.pop("manifest_part")
        if "verdict" not in data and (data.get("diagnostics") or {}).get("degenerate"):
            data["verdict"] = Verdict.DEGENERATE
        return data

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Engine seconds per stage (timing.stages)."""
        return dict(self.timing.stages) if self.timing else {}

    @property
    def degenerate(self) -> Degeneracy | None:
        """The degeneracy record, also for rows that kept only a degenerate verdict."""
        found = self.diagnostics.degenerate
        if found is None and self.verdict is Verdict.DEGENERATE:
            return Degeneracy(
                kind=DegeneracyKind.CONSTANT_OUTPUT, reason="the audit's verdict is degenerate"
            )
        return found

    def summary(self) -> ResultSummary:
        """What a list shows of this result."""
        keep = set(EpsilonSummary.model_fields)
        return ResultSummary(
            samples=self.samples,
            backend=self.backend,
            verdict=self.verdict,
            gradient_masking_suspected=self.diagnostics.gradient_masking_suspected,
            landscapes=len(self.landscapes),
            per_epsilon=tuple(
                EpsilonSummary(**{k: getattr(e, k) for k in keep}) for e in self.per_epsilon
            ),
        )

    def to_json(self, *, include_per_sample: bool = True) -> dict[str, Any]:
        """The JSON object, optionally without the per-sample values (lists, summaries)."""
        exclude: dict[str, Any] | None = None
        if not include_per_sample:
            exclude = {"per_epsilon": {"__all__": {"per_sample", "per_class"}}, "vulnerable": True}
        body: dict[str, Any] = self.model_dump(mode="json", exclude=exclude)
        return body

"""The threat model and audit settings, as enums and frozen dataclasses (RobustBench style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustness.degeneracy import Degeneracy
    from robustness.landscape import Landscape


class Norm(StrEnum):
    """The p of the ε-ball ‖x' − x‖_p ≤ ε."""

    LINF = "linf"
    L2 = "l2"


class LogitNormalization(StrEnum):
    """How logits are rescaled before the softmax (metric.md: l2 removes re-parameterization)."""

    L2 = "l2"
    NONE = "none"


class BackendKind(StrEnum):
    """Where gradients come from: torch autograd, onnxruntime finite differences, or pick."""

    AUTO = "auto"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class SearchAlgorithm(StrEnum):
    """How ψ is searched for: APGD on the KL (the default), or the plain PGD of before."""

    APGD_KL = "apgd-kl"
    PGD_KL = "pgd-kl"


class Baseline(StrEnum):
    """Conventional accuracies reported beside the metric."""

    CLEAN = "clean"
    FGSM = "fgsm"
    PGD = "pgd"


@dataclass(frozen=True)
class AuditSpec:
    """Everything that determines an audit's numbers; defaults follow api-v1.md."""

    norm: Norm = Norm.LINF
    epsilons: tuple[float, ...] = (0.03,)
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    logit_normalization: LogitNormalization = LogitNormalization.L2
    seed: int = 0
    baselines: tuple[Baseline, ...] = (Baseline.CLEAN, Baseline.FGSM, Baseline.PGD)
    input_range: tuple[float, float] = (0.0, 1.0)
    max_samples: int = 1000
    batch_size: int = 128
    random_probes: int = 8
    fd_directions: int = 64
    landscape_samples: int = 4
    landscape_resolution: int = 21
    landscape_span: float = 2.0
    search: SearchAlgorithm = SearchAlgorithm.APGD_KL

    def __post_init__(self) -> None:
        if not self.epsilons or any(e <= 0 for e in self.epsilons):
            raise ValueError("epsilons must be a non-empty list of positive numbers")
        if self.steps < 1 or self.restarts < 1:
            raise ValueError("steps and restarts must be at least 1")
        lo, hi = self.input_range
        if not lo < hi:
            raise ValueError("input_range must be lo < hi")

    def alpha(self, epsilon: float) -> float:
        """Step size: the configured one, else 2.5·ε/K (Madry et al.)."""
        return self.step_size if self.step_size is not None else 2.5 * epsilon / self.steps


@dataclass(frozen=True)
class DivergenceSummary:
    """ψ over the audited samples. Lower means more robust."""

    mean: float
    median: float
    p90: float
    max: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class Convergence:
    """Did the search level off? Mean ψ after half of its steps against mean ψ at the end."""

    psi_mean_half: float
    psi_mean: float
    relative_gain: float
    converged: bool
    suggested_steps: int | None


@dataclass(frozen=True)
class SearchInfo:
    """The search that produced ψ: its versioned algorithm and what it spent per sample."""

    algorithm: str
    steps: int
    restarts: int
    runs: int
    steps_per_run: int
    gradient_evaluations_per_sample: int


@dataclass(frozen=True)
class EpsilonResult:
    """One ε of an audit: the metric and the conventional accuracies beside it."""

    epsilon: float
    divergence: DivergenceSummary
    clean_accuracy: float | None
    fgsm_accuracy: float | None
    pgd_accuracy: float | None
    per_sample: tuple[float, ...] = field(repr=False)
    convergence: Convergence | None = None


@dataclass(frozen=True)
class Diagnostics:
    """Evidence about whether the gradient search can be trusted."""

    gradient_masking_suspected: bool
    zero_gradient_fraction: float
    nonfinite_gradient_fraction: float
    random_search_wins: int
    parity_max_abs_diff: float | None
    evidence: tuple[str, ...] = ()
    degenerate: Degeneracy | None = None  # set: ψ says nothing about robustness
    blackbox_note: str | None = None


@dataclass(frozen=True)
class AuditResult:
    """What an audit produces; JSON-ready through :func:`robustness.report.result_to_dict`."""

    per_epsilon: tuple[EpsilonResult, ...]
    samples: int
    backend: BackendKind
    device: str
    diagnostics: Diagnostics
    stage_seconds: dict[str, float]
    landscapes: tuple[Landscape, ...] = ()
    batch_size: int = 0
    search: SearchInfo | None = None


def spec_from_config(config: Mapping[str, Any], input_range: Sequence[float]) -> AuditSpec:
    """The spec of an audit `config` object (api-v1.md), for a model with this input range."""
    landscape = config.get("landscape", {})
    return AuditSpec(
        norm=Norm(config.get("norm", "linf")),
        epsilons=tuple(float(e) for e in config.get("epsilons", (0.03,))),
        steps=int(config.get("steps", 20)),
        step_size=config.get("step_size"),
        restarts=int(config.get("restarts", 1)),
        logit_normalization=LogitNormalization(config.get("logit_normalization", "l2")),
        seed=int(config.get("seed", 0)),
        baselines=tuple(Baseline(b) for b in config.get("baselines", ("clean", "fgsm", "pgd"))),
        input_range=(float(input_range[0]), float(input_range[1])),
        max_samples=int(config.get("max_samples", 1000)),
        fd_directions=int(config.get("fd_directions", 64)),
        landscape_samples=int(landscape.get("samples", 4)),
        landscape_resolution=int(landscape.get("resolution", 21)),
        landscape_span=float(landscape.get("span", 2.0)),
        search=SearchAlgorithm(config.get("search", SearchAlgorithm.APGD_KL.value)),
    )

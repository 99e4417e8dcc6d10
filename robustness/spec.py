"""The engine-ready audit: a config resolved against a model, plus the engine's own knobs.

:class:`robustness.config.AuditConfig` is what a user asks for (the API's `config`);
:class:`AuditSpec` is what :func:`robustness.engine.run_audit` runs: the same settings, flat
and in tuples, with the model's input range and two knobs no user sets (`batch_size`,
`random_probes`). Its defaults are the config's, read from the model, so no default is
written twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The enums are defined in robustness.config and re-exported here, beside AuditSpec, for the
# modules that import them with it (worker/model_cache.py, tests).
from robustness.config import (
    AuditConfig,
    BackendKind,
    Baseline,
    LandscapeConfig,
    LogitNormalization,
    Norm,
    SearchAlgorithm,
)

__all__ = [
    "AuditSpec",
    "BackendKind",
    "Baseline",
    "LogitNormalization",
    "Norm",
    "SearchAlgorithm",
    "spec_from_config",
]

_CONFIG = AuditConfig()
_LANDSCAPE = LandscapeConfig()


@dataclass(frozen=True)
class AuditSpec:
    """Everything that determines an audit's numbers; defaults are AuditConfig's."""

    norm: Norm = _CONFIG.norm
    epsilons: tuple[float, ...] = tuple(_CONFIG.epsilons)
    steps: int = _CONFIG.steps
    step_size: float | None = _CONFIG.step_size
    restarts: int = _CONFIG.restarts
    logit_normalization: LogitNormalization = _CONFIG.logit_normalization
    seed: int = _CONFIG.seed
    baselines: tuple[Baseline, ...] = tuple(_CONFIG.baselines)
    max_samples: int = _CONFIG.max_samples
    fd_directions: int = _CONFIG.fd_directions
    landscape_samples: int = _LANDSCAPE.samples
    landscape_resolution: int = _LANDSCAPE.resolution
    landscape_span: float = _LANDSCAPE.span
    search: SearchAlgorithm = _CONFIG.search
    # Not part of the config: the model's declared input range, and the engine's knobs.
    input_range: tuple[float, float] = (0.0, 1.0)
    batch_size: int = 128
    random_probes: int = 8

    def __post_init__(self) -> None:
        # AuditConfig bounds what users send; this guards specs built directly (tests, CLI).
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


def spec_from_config(config: AuditConfig, input_range: Sequence[float]) -> AuditSpec:
    """The spec of an audit config, for a model with this input range.

    The config stays typed from the request (or CLI flags) to here; a stored one (an audit
    row's JSON) is read with :meth:`AuditConfig.from_stored` first, where it is read.
    """
    return AuditSpec(
        norm=config.norm,
        epsilons=tuple(config.epsilons),
        steps=config.steps,
        step_size=config.step_size,
        restarts=config.restarts,
        logit_normalization=config.logit_normalization,
        seed=config.seed,
        baselines=tuple(config.baselines),
        max_samples=config.max_samples,
        fd_directions=config.fd_directions,
        landscape_samples=config.landscape.samples,
        landscape_resolution=config.landscape.resolution,
        landscape_span=config.landscape.span,
        search=config.search,
        input_range=(float(input_range[0]), float(input_range[1])),
    )

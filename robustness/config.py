"""The audit `config` of the API (`POST /v1/audits`), defined once: its enums, fields,
defaults and bounds.

The API request schema, the CLI flags, README's table of fields (robustness/config_docs.py)
and the worker all derive from :class:`AuditConfig`; the engine runs the resolved form,
:class:`robustness.spec.AuditSpec`, built from it by :func:`robustness.spec.spec_from_config`.
This module is a leaf (pydantic only), so the web layer can import it without torch, and every
other core module can import its enums without a cycle.

Walking the fields (for CLI flags or docs): ``AuditConfig.model_fields`` maps each name to a
FieldInfo with ``annotation``, ``default`` (or ``default_factory``), ``description`` and the
bounds in ``metadata`` (annotated_types Ge/Gt/Le/MinLen/MaxLen); ``landscape`` is the nested
:class:`LandscapeConfig`, walked the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat


class Norm(StrEnum):
    """The p of the ε-ball ‖x' − x‖_p ≤ ε."""

    LINF = "linf"
    L2 = "l2"


class LogitNormalization(StrEnum):
    """How logits are rescaled before the softmax. l2 divides them by their L2 norm, so the
    metric does not change when a model's logits are rescaled (a re-parameterization that
    leaves its predictions alone), and models of different architectures compare."""

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


class _Config(BaseModel):
    # Unknown keys are refused (a typo must not silently run the default); NaN and ∞ too.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LandscapeConfig(_Config):
    """The loss and decision surfaces drawn around the first audited samples, at every ε."""

    samples: int = Field(
        4, ge=0, le=64, description="How many samples (the first ones) get surfaces; 0: none"
    )
    resolution: int = Field(21, ge=3, le=101, description="Grid points along each axis")
    span: float = Field(
        2.0, gt=0, le=10, description="Half-width of the grid, in multiples of its ε"
    )


class AuditConfig(_Config):
    """What an audit measures and how hard it searches; every field has a default."""

    norm: Norm = Field(Norm.LINF, description="The ε-ball's norm: linf or l2")
    epsilons: list[PositiveFloat] = Field(
        default_factory=lambda: [0.03],
        min_length=1,
        max_length=16,
        description="Radii of the ε-ball, in the model's input units; one result per ε",
    )
    search: SearchAlgorithm = Field(
        SearchAlgorithm.APGD_KL,
        description="apgd-kl: APGD on the KL; pgd-kl: the plain PGD of earlier releases",
    )
    steps: int = Field(
        20, ge=1, le=1000, description="Step budget K of the search and of the PGD baseline"
    )
    step_size: PositiveFloat | None = Field(
        None,
        description="Step size; null: 2ε initial step for apgd-kl, 2.5·ε/steps for pgd-kl and "
        "the PGD baseline",
    )
    restarts: int = Field(1, ge=1, le=20, description="Independent restarts of the search")
    logit_normalization: LogitNormalization = Field(
        LogitNormalization.L2,
        description="l2: logits scaled to unit L2 norm before the softmax, so that rescaling "
        "a model's logits does not change the metric; none: the raw logits",
    )
    backend: BackendKind = Field(
        BackendKind.AUTO,
        description="auto: torch if the conversion matches onnxruntime, else onnxruntime "
        "(finite-difference gradients)",
    )
    max_samples: int = Field(
        1000, ge=1, le=100_000, description="Audit at most this many samples (the first ones)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random draw")
    baselines: list[Baseline] = Field(
        default_factory=lambda: [Baseline.CLEAN, Baseline.FGSM, Baseline.PGD],
        description="Conventional accuracies reported beside the metric",
    )
    fd_directions: int = Field(
        64,
        ge=1,
        le=4096,
        description="Query budget of the onnxruntime backend: random directions per "
        "finite-difference gradient",
    )
    landscape: LandscapeConfig = Field(
        default_factory=LandscapeConfig, description="Loss and decision surfaces"
    )

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> AuditConfig:
        """The config of a stored audit row: keys it predates take today's defaults.

        Every stored config was written through this model, so an unknown key can only be
        one a later version removed; it is dropped rather than making the row unreadable.
        """
        known = {k: v for k, v in stored.items() if k in cls.model_fields}
        return cls.model_validate(known)

"""Which search finds ψ for an audit: the configured algorithm, sized by attacks.budget."""

from __future__ import annotations

from typing import Protocol

import torch

from robustness.attacks.apgd_divergence import APGDDivergence
from robustness.attacks.budget import search_info
from robustness.attacks.divergence import DivergenceOutcome, DivergenceSearch
from robustness.backends.base import ScoreBackend
from robustness.config import SearchAlgorithm
from robustness.spec import AuditSpec


class Search(Protocol):
    """A search for ψ on one batch, with the random-noise probe beside it."""

    algorithm: str

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> DivergenceOutcome: ...

    def random_probe(self, x: torch.Tensor, gen: torch.Generator, probes: int) -> torch.Tensor: ...


def build_search(backend: ScoreBackend, spec: AuditSpec, eps: float) -> Search:
    """The configured search for one ε."""
    if spec.search is SearchAlgorithm.PGD_KL:
        return DivergenceSearch(
            backend, norm=spec.norm, eps=eps, steps=spec.steps, alpha=spec.alpha(eps),
            restarts=spec.restarts, normalization=spec.logit_normalization,
            bounds=spec.input_range,
        )  # fmt: skip
    info = search_info(spec)
    return APGDDivergence(
        backend, norm=spec.norm, eps=eps, steps=info.steps_per_run, runs=info.runs,
        initial_step=spec.step_size, normalization=spec.logit_normalization,
        bounds=spec.input_range,
    )  # fmt: skip

"""Degenerate models: ψ = 0 that says nothing about robustness (metric.md, "Honesty").

Two ways a model can score ψ ≈ 0 without being robust:

- **constant_output**: the probabilities the metric compares, p = softmax(ẑ), do not depend
  on the input. Checked on the audited samples and on the same samples under large noise; the
  `onnx` wheel's light-zoo graphs are such models (equal logits for every class).
- **vanishing_gradient**: the input gradient of the KL is exactly zero (or not finite) on
  most samples, so the gradient search cannot move and ψ is only what its random start found.

Pure except :func:`noise_log_probs`, which runs the backend. Shapes: log_probs [N, C].
"""

from __future__ import annotations

import numpy as np
import torch

from robustness.attacks.divergence import normalized_log_probs
from robustness.backends.base import ScoreBackend
from robustness.config import LogitNormalization
from robustness.cost import DEGENERACY_NOISE_SAMPLES
from robustness.results import Degeneracy, DegeneracyKind

# log p of a float32 softmax over ~1000 classes carries rounding of about 1e-6; a model whose
# log-probabilities move less than this across unrelated inputs and noise ignores its input.
CONSTANT_TOLERANCE = 1e-5
# "Most samples": above half, the search's mean is mostly the random start's value.
VANISHING_FRACTION = 0.5
NOISE_SAMPLES = DEGENERACY_NOISE_SAMPLES


def output_spread(log_probs: np.ndarray) -> float:
    """The largest change of any log-probability between the first row and any other."""
    if len(log_probs) < 2:
        return float("inf")
    lp = np.asarray(log_probs, dtype=np.float64)
    spread = np.abs(lp - lp[:1]).max()
    return float(spread) if np.isfinite(spread) else float("inf")


def detect(
    data_log_probs: np.ndarray,
    noise_log_probs: np.ndarray,
    *,
    dead_gradient_fraction: float,
) -> Degeneracy | None:
    """The degeneracy of a model, from its log-probabilities on the data and under noise.

    `dead_gradient_fraction`: the share of samples whose input gradient was all zero or not
    finite at the start of the search.
    """
    both = np.concatenate([data_log_probs, noise_log_probs])
    spread = output_spread(both)
    if spread <= CONSTANT_TOLERANCE:
        return Degeneracy(
            kind=DegeneracyKind.CONSTANT_OUTPUT,
            reason=f"the model's predicted probabilities do not depend on its input: across "
            f"{len(data_log_probs)} samples and {len(noise_log_probs)} noisy copies, no "
            f"log-probability moved more than {spread:.1e}; ψ = 0 here means nothing",
        )
    return vanishing(dead_gradient_fraction)


def vanishing(dead_gradient_fraction: float) -> Degeneracy | None:
    """Degenerate when the gradient is zero or not finite on most samples."""
    if dead_gradient_fraction <= VANISHING_FRACTION:
        return None
    share = f"{dead_gradient_fraction:.0%}"
    return Degeneracy(
        kind=DegeneracyKind.VANISHING_GRADIENT,
        reason=f"the input gradient vanished (all zero or not finite) on {share} "
        "of samples: the gradient search cannot move, so ψ is a random-start value, not a "
        "maximum",
    )


def merged(parts: list[Degeneracy | None], dead_gradient_fraction: float) -> Degeneracy | None:
    """The degeneracy of a sharded audit: constant only if every shard found it constant."""
    kinds = {p.kind if p is not None else None for p in parts}
    if parts and kinds == {DegeneracyKind.CONSTANT_OUTPUT}:
        return parts[0]
    return vanishing(dead_gradient_fraction)


def noise_log_probs(
    backend: ScoreBackend,
    x: torch.Tensor,
    *,
    bounds: tuple[float, float],
    normalization: LogitNormalization,
    gen: torch.Generator,
    samples: int = NOISE_SAMPLES,
) -> np.ndarray:
    """log p on copies of the first samples under Gaussian noise of half the input range."""
    lo, hi = bounds
    xs = x[:samples]
    noise = torch.randn(xs.shape, generator=gen, device=xs.device, dtype=xs.dtype)
    with torch.inference_mode():
        z = backend.scores((xs + noise * (hi - lo) / 2).clamp(lo, hi))
        return normalized_log_probs(z, normalization).double().cpu().numpy()

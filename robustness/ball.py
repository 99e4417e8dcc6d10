"""Geometry of the perturbation domain B = {x' : ‖x' − x‖_p ≤ ε} ∩ [lo, hi]^d.

Every attack steps the adversarial point itself and projects it back, without gradient.
Differentiating through clamp(x + δ) instead silently zeroes the gradient of pixels on a
bound (metric.md: about 17 points of PGD strength lost on the digits CNN).
"""

from __future__ import annotations

import torch

from robustness.config import Norm


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def random_start(
    x: torch.Tensor, eps: float, norm: Norm, bounds: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """A uniformly random point of B (L∞: per coordinate; L2: uniform in the ball)."""
    if norm is Norm.LINF:
        noise = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    else:
        direction = torch.randn(x.shape, generator=gen, device=x.device)
        direction = direction / _per_sample_norm(direction)
        d = x[0].numel()
        radius = torch.rand((x.shape[0],), generator=gen, device=x.device) ** (1.0 / d) * eps
        noise = direction * radius.view(-1, *([1] * (x.ndim - 1)))
    return (x + noise).clamp(*bounds)


def random_corner(
    x: torch.Tensor, eps: float, norm: Norm, bounds: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Random noise of the full budget: a Rademacher vector scaled to ε in the given norm."""
    signs = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
    if norm is Norm.L2:
        signs = signs / _per_sample_norm(signs)
    return (x + eps * signs).clamp(*bounds)


def unit_step(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-ascent direction of unit size in the given norm (L∞: sign; L2: ĝ)."""
    if norm is Norm.LINF:
        return grad.sign()
    return grad / _per_sample_norm(grad)


def ascend(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: Norm) -> torch.Tensor:
    """One steepest-ascent step of size α in the given norm."""
    return x_adv + alpha * unit_step(grad, norm)


def project(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm, bounds: tuple[float, float]
) -> torch.Tensor:
    """Back onto B: into the ε-ball around x, then into the input bounds."""
    delta = x_adv - x
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(*bounds)

"""Input-space loss and decision surfaces around a sample (Yu et al., IJCAI 2019, §3).

Directions: d_adv = sign(∇ₓ CE(x, y)) and a Rademacher d_rand; under L2 both are scaled to
unit L2 norm, under L∞ they are used as they are. Grid: x(a, b) = x + a·d_adv + b·d_rand
for a, b in [−span·ε, span·ε], exactly as defined (no clamping to the input bounds, so the
picture is not flattened where pixels saturate). Surfaces:

- the cross-entropy loss CE(x(a, b), y);
- the decision margin S = z_y − max over i ≠ y of z_i; S = 0 is the decision boundary
  (returned as polylines too) and the sample is misclassified where S < 0.

The whole grid is evaluated in batched forward passes. Shapes: x [1, *input_shape];
surfaces [resolution, resolution], indexed [a, b].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from robustness.backends.base import ScoreBackend
from robustness.config import Norm
from robustness.results import LandscapeResult


@dataclass(frozen=True)
class Landscape:
    """One sample's surfaces, ready for plotting (rows: a along d_adv, columns: b along d_rand)."""

    sample_index: int
    label: int
    epsilon: float
    norm: Norm
    coords: tuple[float, ...]
    loss: np.ndarray
    margin: np.ndarray

    @property
    def misclassified_fraction_inside_eps(self) -> float:
        """Share of grid points with |a|, |b| ≤ ε on the wrong side of S = 0."""
        c = np.abs(np.asarray(self.coords)) <= self.epsilon * (1 + 1e-5)  # float32 grid
        inside = self.margin[np.ix_(c, c)]
        return float((inside < 0).mean())

    @property
    def crosses_boundary_within_eps(self) -> bool | None:
        """Whether S = 0 is crossed along d_adv with 0 < a ≤ ε (None if x is misclassified)."""
        c = np.asarray(self.coords)
        centre = int(np.argmin(np.abs(c)))
        if self.margin[centre, centre] <= 0:
            return None
        ray = (c > self.epsilon * 1e-5) & (c <= self.epsilon * (1 + 1e-5))  # float32 grid
        return bool((self.margin[ray, centre] < 0).any())

    def decision_boundary(self) -> list[list[tuple[float, float]]]:
        """The S = 0 contour as polylines of (a, b) points (marching squares, contourpy)."""
        import contourpy

        c = np.asarray(self.coords)
        a, b = np.meshgrid(c, c, indexing="ij")
        # The default line type ("Separate") is a list of (k, 2) point arrays.
        lines = cast(list[np.ndarray], contourpy.contour_generator(a, b, self.margin).lines(0.0))
        return [[(float(p[0]), float(p[1])) for p in line] for line in lines]

    def to_result(self) -> LandscapeResult:
        """The JSON-ready form stored with the audit (grids rounded to 6 decimals)."""
        return LandscapeResult(
            sample_index=self.sample_index,
            label=self.label,
            epsilon=self.epsilon,
            norm=self.norm,
            coords=list(self.coords),
            loss=self.loss.round(6).tolist(),
            margin=self.margin.round(6).tolist(),
            misclassified_fraction_inside_eps=self.misclassified_fraction_inside_eps,
            crosses_boundary_within_eps=self.crosses_boundary_within_eps,
            decision_boundary=self.decision_boundary(),
        )


def _unit(d: torch.Tensor, norm: Norm) -> torch.Tensor:
    return d / d.flatten().norm().clamp_min(1e-12) if norm is Norm.L2 else d


def directions(
    backend: ScoreBackend, x: torch.Tensor, y: torch.Tensor, norm: Norm, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_adv, d_rand) for a single sample x [1, ...]."""
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(backend.scores(x_req), y), x_req)
    d_adv = grad.sign()
    d_rand = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
    return _unit(d_adv, norm), _unit(d_rand, norm)


def loss_landscape(
    backend: ScoreBackend,
    x: torch.Tensor,
    y: int,
    *,
    epsilon: float,
    norm: Norm,
    gen: torch.Generator,
    span: float = 2.0,
    resolution: int = 21,
    batch_size: int = 256,
    sample_index: int = 0,
) -> Landscape:
    """CE and margin surfaces on a resolution×resolution grid around x."""
    label = torch.tensor([y], device=x.device)
    d_adv, d_rand = directions(backend, x, label, norm, gen)
    coords = torch.linspace(-span * epsilon, span * epsilon, resolution, device=x.device)
    a, b = torch.meshgrid(coords, coords, indexing="ij")
    shape = (-1, *([1] * (x.ndim - 1)))
    points = x + a.reshape(shape) * d_adv + b.reshape(shape) * d_rand  # [R*R, ...]
    losses, margins = [], []
    with torch.inference_mode():
        for start in range(0, points.shape[0], batch_size):
            z = backend.scores(points[start : start + batch_size])
            target = label.expand(z.shape[0])
            losses.append(F.cross_entropy(z, target, reduction="none"))
            others = z.clone()
            others[:, y] = float("-inf")
            margins.append(z[:, y] - others.max(dim=1).values)
    grid = (resolution, resolution)
    return Landscape(
        sample_index=sample_index,
        label=y,
        epsilon=epsilon,
        norm=norm,
        coords=tuple(float(c) for c in coords.cpu()),
        loss=torch.cat(losses).reshape(grid).double().cpu().numpy(),
        margin=torch.cat(margins).reshape(grid).double().cpu().numpy(),
    )

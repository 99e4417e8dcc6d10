"""FGSM: one step of size ε along the sign (L∞) or direction (L2) of the CE gradient.

Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples",
ICLR 2015 (arXiv 1412.6572).

Shapes: x [N, *input_shape] in [lo, hi], y [N] int64; returns a bool tensor [N], True where
the perturbed sample is still classified correctly.

Example::

    robust = FGSM(backend, norm=Norm.LINF, eps=0.1)(x, y)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustness.backends.base import ScoreBackend
from robustness.ball import ascend, project
from robustness.config import Norm


class FGSM:
    """Single-step attack; robust accuracy is the mean of the returned mask."""

    def __init__(
        self,
        backend: ScoreBackend,
        *,
        norm: Norm,
        eps: float,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.backend, self.norm, self.eps, self.bounds = backend, norm, eps, bounds

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_req = x.clone().requires_grad_(True)
        scores = self.backend.scores(x_req)
        (grad,) = torch.autograd.grad(F.cross_entropy(scores, y, reduction="sum"), x_req)
        with torch.inference_mode():
            x_adv = project(
                ascend(x, grad, self.eps, self.norm), x, self.eps, self.norm, self.bounds
            )
            return (self.backend.scores(x_adv).argmax(dim=1) == y).cpu()

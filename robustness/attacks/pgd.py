"""PGD: projected gradient descent on the cross-entropy, with a random start.

Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (arXiv 1706.06083). Norms: L∞ and L2.

Shapes: x [N, *input_shape] in [lo, hi], y [N] int64; returns a bool tensor [N] that is True
where the model classifies the sample correctly at every iterate (so the robust accuracy is
its mean). Counting any misclassified iterate, not just the last one, matches AutoAttack's
bookkeeping and makes the number an honest upper bound on robust accuracy.

Example::

    robust = PGD(backend, norm=Norm.LINF, eps=8/255, steps=20, alpha=2/255)(x, y, gen)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustness.backends.base import ScoreBackend
from robustness.ball import ascend, project, random_start
from robustness.config import Norm


class PGD:
    """Cross-entropy PGD; robust accuracy is the mean of the returned mask."""

    def __init__(
        self,
        backend: ScoreBackend,
        *,
        norm: Norm,
        eps: float,
        steps: int,
        alpha: float,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.backend = backend
        self.norm, self.eps, self.steps, self.alpha, self.bounds = norm, eps, steps, alpha, bounds

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        x_adv = random_start(x, self.eps, self.norm, self.bounds, gen)
        for k in range(self.steps + 1):
            last = k == self.steps
            x_adv.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                scores = self.backend.scores(x_adv)
            robust &= scores.detach().argmax(dim=1) == y
            if last:
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(scores, y, reduction="sum"), x_adv)
            with torch.no_grad():
                x_adv = project(
                    ascend(x_adv, grad, self.alpha, self.norm), x, self.eps, self.norm, self.bounds
                )
        return robust.cpu()

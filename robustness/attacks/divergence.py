"""The robustness metric: the upper bound of prediction divergence inside the ε-ball.

Paper: Yu, Qin, Liu, Zhao, Wang, Chen, "Interpreting and Evaluating Neural Network
Robustness", IJCAI 2019 (arXiv 1905.04270).

ψ_ε(x) = max over x' ∈ B of KL( p(x) ‖ p(x') ),  p = softmax(ẑ),  ẑ = z / ‖z‖₂ (or z).

Found by projected gradient ascent on the KL from a random start (the gradient is exactly
zero at x' = x), R restarts of K steps of size α, keeping per sample the best value over all
iterates and restarts. Norms: L∞ and L2.

Shapes: x [N, *input_shape] in [lo, hi]; returns ψ [N] (float64 on CPU).

Example::

    search = DivergenceSearch(backend, norm=Norm.LINF, eps=0.03, steps=20, alpha=0.00375)
    outcome = search(x, generator)
    outcome.psi.mean()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustness.attacks.budget import PGD_KL
from robustness.backends.base import ScoreBackend
from robustness.ball import ascend, project, random_corner, random_start
from robustness.config import LogitNormalization, Norm


def normalized_log_probs(z: torch.Tensor, mode: LogitNormalization) -> torch.Tensor:
    """log softmax(ẑ): ẑ = z/‖z‖₂ per sample under l2 normalization, else z itself."""
    if mode is LogitNormalization.L2:
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return F.log_softmax(z, dim=1)


def kl_from(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from log-probabilities; ≥ 0 up to rounding."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).clamp_min(0.0)


@dataclass(frozen=True)
class DivergenceOutcome:
    """ψ per sample plus the gradient health seen on the way.

    `psi_half` is the best value had every run (restart) of the search stopped at half its
    steps: the convergence diagnostic compares it with ψ. `x_best` is the input that reached ψ
    (x itself where nothing beat 0), on the search's device: the report shows the worst ones.
    """

    psi: torch.Tensor
    zero_gradient: torch.Tensor
    nonfinite_gradient: torch.Tensor
    psi_half: torch.Tensor
    x_best: torch.Tensor | None = None


class DivergenceSearch:
    """Projected gradient ascent on KL(p(x) ‖ p(x')) with best-over-iterates.

    The default search until Nov 2026; now the strong reference's building block and an
    explicit choice (`search="pgd-kl"`).
    """

    algorithm = PGD_KL

    def __init__(
        self,
        backend: ScoreBackend,
        *,
        norm: Norm,
        eps: float,
        steps: int,
        alpha: float,
        restarts: int = 1,
        normalization: LogitNormalization = LogitNormalization.L2,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.backend = backend
        self.norm, self.eps, self.steps, self.alpha = norm, eps, steps, alpha
        self.restarts, self.normalization, self.bounds = restarts, normalization, bounds

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return normalized_log_probs(self.backend.scores(x), self.normalization)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> DivergenceOutcome:
        with torch.no_grad():
            log_p = self.log_probs(x)
            p = log_p.exp()
            # KL(p‖q) = Σ p log p − Σ p log q; the first sum is fixed for the whole search.
            neg_entropy = (p * log_p).sum(dim=1)
        best = torch.zeros(x.shape[0], device=x.device)
        zero = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        nonfinite = torch.zeros_like(zero)
        half = torch.zeros_like(best)
        top, x_best = torch.zeros_like(best), x.detach().clone()
        for restart in range(self.restarts):
            x_adv = random_start(x, self.eps, self.norm, self.bounds, gen)
            run_best = torch.zeros_like(best)
            for k in range(self.steps + 1):
                last = k == self.steps
                x_adv.requires_grad_(not last)
                with torch.set_grad_enabled(not last):
                    kl = neg_entropy - (p * self.log_probs(x_adv)).sum(dim=1)
                run_best = torch.fmax(run_best, kl.detach())  # fmax: a NaN never wins
                gain = kl.detach() > top  # the input behind ψ, for the report
                top = torch.where(gain, kl.detach(), top)
                x_best[gain] = x_adv.detach()[gain]
                if k == self.steps // 2:  # ψ had every restart stopped at half its steps
                    half = torch.fmax(half, run_best)
                if last:
                    best = torch.fmax(best, run_best)
                    break
                (grad,) = torch.autograd.grad(kl.sum(), x_adv)
                if restart == 0 and k == 0:
                    flat = grad.flatten(1)
                    zero = flat.abs().amax(dim=1) == 0
                    nonfinite = ~torch.isfinite(flat).all(dim=1)
                with torch.no_grad():
                    grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                    x_adv = project(
                        ascend(x_adv, grad, self.alpha, self.norm),
                        x,
                        self.eps,
                        self.norm,
                        self.bounds,
                    )
        best = best.clamp_min(0.0).double()  # rounding can leave KL a hair below 0
        return DivergenceOutcome(
            psi=best.cpu(),
            zero_gradient=zero.cpu(),
            nonfinite_gradient=nonfinite.cpu(),
            psi_half=half.clamp_min(0.0).double().cpu(),
            x_best=x_best,
        )

    def random_probe(self, x: torch.Tensor, gen: torch.Generator, probes: int) -> torch.Tensor:
        return random_probe(self.log_probs, x, gen, probes, self.eps, self.norm, self.bounds)


def random_probe(
    log_probs: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    gen: torch.Generator,
    probes: int,
    eps: float,
    norm: Norm,
    bounds: tuple[float, float],
) -> torch.Tensor:
    """The largest KL that `probes` random full-budget noise vectors reach, per sample."""
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.inference_mode():
        log_p = log_probs(x)
        for _ in range(probes):
            x_noise = random_corner(x, eps, norm, bounds, gen)
            kl = kl_from(log_p, log_probs(x_noise)).double().cpu()
            best = torch.maximum(best, torch.nan_to_num(kl, nan=0.0))
    return best

"""The pure entry point: run_audit(backend, x, y, spec, *, device) -> AuditResult."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise, product

import numpy as np
import torch

from robustness import degeneracy
from robustness.attacks.divergence import normalized_log_probs
from robustness.attacks.fgsm import FGSM
from robustness.attacks.pgd import PGD
from robustness.attacks.search import build_search, search_info
from robustness.backends.base import ScoreBackend
from robustness.batching import choose_batch_size
from robustness.config import Baseline
from robustness.errors import AuditInputError
from robustness.landscape import loss_landscape
from robustness.results import (
    AuditResult,
    Diagnostics,
    EpsilonResult,
    LandscapeResult,
    Manifest,
    Timing,
    VulnerableSample,
    verdict_of,
)
from robustness.spec import AuditSpec
from robustness.stats import convergence, per_class, summarize
from robustness.vulnerable import Prediction, TopK, softmax_rows

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]
STAGES = ("divergence", "random_probe", "clean", "fgsm", "pgd", "landscape")


class AuditCancelled(Exception):
    """The cancel check answered True between two batches."""


def check_inputs(x: np.ndarray, y: np.ndarray, spec: AuditSpec) -> None:
    """Refuse data the audit cannot be honest about, naming the problem."""
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise AuditInputError(f"x {list(x.shape)} and y {list(y.shape)} do not pair up")
    if not np.isfinite(x).all():
        raise AuditInputError("x contains NaN or inf values")
    lo, hi = spec.input_range
    if x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
        raise AuditInputError(
            f"x spans [{x.min():.4g}, {x.max():.4g}], outside the model's declared input range "
            f"[{lo}, {hi}]; rescale the data or declare the model's input_range (or its "
            "preprocessing scale, for pixels in [0, 255])"
        )


def run_audit(
    backend: ScoreBackend,
    x: np.ndarray,
    y: np.ndarray,
    spec: AuditSpec,
    *,
    device: torch.device,
    parity_max_abs_diff: float | None = None,
    progress: ProgressFn | None = None,
    cancelled: CancelFn | None = None,
    sample_offset: int = 0,
) -> AuditResult:
    """ψ for each ε plus the conventional accuracies; deterministic for a seed on CPU.

    `sample_offset` is the index of x[0] in the whole audit when this call is one shard.
    The steps: a clean pass, one search pass per ε, the landscapes, then the diagnostics.
    """
    check_inputs(x, y, spec)
    run = _Run.start(backend, x, y, spec, device, sample_offset, progress, cancelled)
    clean, data_log_probs, predicted = _clean_pass(run)
    worst = TopK()
    largest = max(range(len(spec.epsilons)), key=lambda k: spec.epsilons[k])
    per_eps = tuple(
        _epsilon_pass(run, k, eps, clean, worst if k == largest else None)
        for k, eps in enumerate(spec.epsilons)
    )
    with run.timed("divergence"):
        vulnerable = _vulnerable(run, worst, predicted, spec.epsilons[largest])
    with run.timed("landscape"):
        landscapes = _landscapes(run)
    with run.timed("clean"):
        diagnostics = _diagnostics(run, data_log_probs, parity_max_abs_diff)
    return AuditResult(
        per_epsilon=per_eps,
        samples=run.n,
        backend=backend.kind,
        batch_size=run.batch_size,
        diagnostics=diagnostics,
        verdict=verdict_of(diagnostics.degenerate),
        landscapes=landscapes,
        vulnerable=vulnerable,
        search=search_info(spec),
        manifest=Manifest(device=str(device), backend=backend.kind.value),
        timing=Timing(stages=run.stages),
    )


@dataclass
class _Run:
    """One engine call: its inputs, its batches, and the tallies its steps add to."""

    backend: ScoreBackend
    spec: AuditSpec
    device: torch.device
    xt: torch.Tensor
    yt: torch.Tensor
    batch_size: int
    batches: list[tuple[int, int]]
    sample_offset: int
    progress: ProgressFn | None
    cancelled: CancelFn | None
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    done: int = 0
    zero: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    nonfinite: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    random_wins: int = 0
    evidence: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        backend: ScoreBackend,
        x: np.ndarray,
        y: np.ndarray,
        spec: AuditSpec,
        device: torch.device,
        sample_offset: int,
        progress: ProgressFn | None,
        cancelled: CancelFn | None,
    ) -> _Run:
        n = min(len(x), spec.max_samples)
        xt = torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y[:n], dtype=np.int64))
        size = choose_batch_size(
            getattr(backend, "module", None), xt[:1], requested=spec.batch_size, device=device
        )
        run = cls(backend, spec, device, xt, yt, size, _batch_grid(sample_offset, n, size),
                  sample_offset, progress, cancelled)  # fmt: skip
        run.zero = torch.zeros(n, dtype=torch.bool)
        run.nonfinite = torch.zeros(n, dtype=torch.bool)
        return run

    @property
    def n(self) -> int:
        return len(self.xt)

    def batch(self, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.xt[i:j].to(self.device), self.yt[i:j].to(self.device)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def tick(self, stage: str, samples: int) -> None:
        """Report progress (samples done: the clean pass, then per ε); stop if cancelled."""
        self.done += samples
        if self.progress is not None:
            self.progress(self.done, self.n * (len(self.spec.epsilons) + 1), stage)
        if self.cancelled is not None and self.cancelled():
            raise AuditCancelled

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start


def _clean_pass(run: _Run) -> tuple[torch.Tensor, np.ndarray, Prediction]:
    """Which samples the model gets right, its normalized log-probabilities on them, and its
    predictions with their softmax probabilities."""
    clean = torch.zeros(run.n, dtype=torch.bool)
    log_probs, predicted = [], []
    for i, j in run.batches:
        xb, yb = run.batch(i, j)
        with torch.inference_mode(), run.timed("clean"):
            scores = run.backend.scores(xb)
            clean[i:j] = (scores.argmax(1) == yb).cpu()
            lp = normalized_log_probs(scores, run.spec.logit_normalization)
            log_probs.append(lp.double().cpu().numpy())
            predicted.append(Prediction.of(scores))
        run.tick("clean", j - i)
    prediction = Prediction(
        np.concatenate([p.label for p in predicted]),
        np.concatenate([p.probability for p in predicted]),
    )
    return clean, np.concatenate(log_probs), prediction


def _epsilon_pass(
    run: _Run, e_index: int, eps: float, clean: torch.Tensor, worst: TopK | None
) -> EpsilonResult:
    """ψ of every sample at this ε, and the FGSM and PGD accuracies if asked for; `worst`
    (at the largest ε) keeps the largest ψ with their inputs."""
    spec, n = run.spec, run.n
    psi = torch.zeros(n, dtype=torch.float64)
    psi_half = torch.zeros(n, dtype=torch.float64)
    fgsm = torch.zeros(n, dtype=torch.bool)
    pgd = torch.zeros(n, dtype=torch.bool)
    search = build_search(run.backend, spec, eps)
    for i, j in run.batches:
        # Seeded by the global index of the batch's first sample, so a shard of samples
        # [offset, offset+n) reproduces the same batches of an unsharded run.
        gen = run.generator(spec.seed * 1_000_003 + e_index * 7919 + run.sample_offset + i)
        xb, yb = run.batch(i, j)
        with run.timed("divergence"):
            outcome = search(xb, gen)
        psi[i:j], psi_half[i:j] = outcome.psi, outcome.psi_half
        if worst is not None and outcome.x_best is not None:
            worst.offer(outcome.psi, xb, outcome.x_best, yb, run.sample_offset + i)
        run.zero[i:j] |= outcome.zero_gradient
        run.nonfinite[i:j] |= outcome.nonfinite_gradient
        with run.timed("random_probe"):
            probe = search.random_probe(xb, gen, spec.random_probes)
        _record_random_wins(run, eps, i, probe, outcome.psi)
        norm, bounds = spec.norm, spec.input_range
        if Baseline.FGSM in spec.baselines:
            with run.timed("fgsm"):
                fgsm[i:j] = FGSM(run.backend, norm=norm, eps=eps, bounds=bounds)(xb, yb)
        if Baseline.PGD in spec.baselines:
            with run.timed("pgd"):
                steps, alpha = spec.steps, spec.alpha(eps)
                attack = PGD(
                    run.backend, norm=norm, eps=eps, steps=steps, alpha=alpha, bounds=bounds
                )
                pgd[i:j] = attack(xb, yb, gen)
        run.tick(f"epsilon {eps:g}", j - i)
    return EpsilonResult(
        epsilon=eps,
        divergence=summarize(psi.numpy(), seed=spec.seed),
        clean_accuracy=_mean(clean) if Baseline.CLEAN in spec.baselines else None,
        fgsm_accuracy=_mean(fgsm) if Baseline.FGSM in spec.baselines else None,
        pgd_accuracy=_mean(pgd) if Baseline.PGD in spec.baselines else None,
        per_sample=tuple(float(v) for v in psi),
        convergence=convergence(float(psi.mean()), float(psi_half.mean()), spec.steps),
        per_class=per_class(
            run.yt.numpy(),
            psi.numpy(),
            clean.numpy() if Baseline.CLEAN in spec.baselines else None,
            fgsm.numpy() if Baseline.FGSM in spec.baselines else None,
            pgd.numpy() if Baseline.PGD in spec.baselines else None,
        ),
    )


def _vulnerable(
    run: _Run, worst: TopK, predicted: Prediction, epsilon: float
) -> tuple[VulnerableSample, ...]:
    """The kept samples, with the model's prediction at their worst perturbed inputs."""
    if not worst.rows:
        return ()
    # One row at a time: a row's scores then do not depend on which rows share its batch,
    # so a shard finds exactly the probabilities of an unsharded run.
    with torch.inference_mode():
        after = np.concatenate(
            [softmax_rows(run.backend.scores(row[3][None].to(run.device))) for row in worst.rows]
        )
    return worst.results(predicted, after, epsilon, run.sample_offset)


def _record_random_wins(
    run: _Run, eps: float, i: int, probe: torch.Tensor, psi: torch.Tensor
) -> None:
    """Count the samples where random noise beat the gradient search, with a few examples."""
    wins = probe > psi * (1 + 1e-3) + 1e-7
    run.random_wins += int(wins.sum())
    for index in wins.nonzero().flatten()[:3].tolist():
        run.evidence.append(
            f"ε={eps:g}: random noise reached KL {float(probe[index]):.4g} on sample "
            f"{run.sample_offset + i + index}, the gradient search only {float(psi[index]):.4g}"
        )


def _landscapes(run: _Run) -> tuple[LandscapeResult, ...]:
    """Surfaces around the first samples, at every ε (the first ε's seeds as they were)."""
    spec = run.spec
    found = []
    for e_index, k in product(range(len(spec.epsilons)), range(min(spec.landscape_samples, run.n))):
        landscape = loss_landscape(
            run.backend,
            run.xt[k : k + 1].to(run.device),
            int(run.yt[k]),
            epsilon=spec.epsilons[e_index],
            norm=spec.norm,
            gen=run.generator(spec.seed * 1_000_003 + 104729 + k + 15_485_863 * e_index),
            span=spec.landscape_span,
            resolution=spec.landscape_resolution,
            sample_index=run.sample_offset + k,
        )
        found.append(landscape.to_result())
    return tuple(found)


def _diagnostics(
    run: _Run, data_log_probs: np.ndarray, parity_max_abs_diff: float | None
) -> Diagnostics:
    """Gradient-masking evidence, and whether the model is degenerate."""
    zero_frac, nonfinite_frac = _mean(run.zero), _mean(run.nonfinite)
    evidence = list(run.evidence)
    if zero_frac > 0.05:
        evidence.insert(
            0, f"{zero_frac:.0%} of samples had an all-zero input gradient at the start"
        )
    if nonfinite_frac > 0:
        evidence.insert(0, f"{nonfinite_frac:.0%} of samples had NaN or inf input gradients")
    spec = run.spec
    noise = degeneracy.noise_log_probs(
        run.backend,
        run.xt[: degeneracy.NOISE_SAMPLES].to(run.device),
        bounds=spec.input_range,
        normalization=spec.logit_normalization,
        gen=run.generator(spec.seed * 1_000_003 + run.sample_offset),
    )
    degenerate = degeneracy.detect(
        data_log_probs, noise, dead_gradient_fraction=zero_frac + nonfinite_frac
    )
    return Diagnostics(
        gradient_masking_suspected=bool(
            zero_frac > 0.05 or nonfinite_frac > 0 or run.random_wins > 0
        ),
        zero_gradient_fraction=zero_frac,
        nonfinite_gradient_fraction=nonfinite_frac,
        random_search_wins=run.random_wins,
        parity_max_abs_diff=parity_max_abs_diff,
        evidence=tuple(evidence[:10]),
        degenerate=degenerate,
        blackbox_note=_blackbox_note(run.backend, int(run.xt[0].numel()), spec),
    )


def _batch_grid(offset: int, n: int, size: int) -> list[tuple[int, int]]:
    """Batches of samples [offset, offset+n) cut at the global multiples of `size`.

    A shard that starts on the grid gets exactly the batches (and, seeded by their global
    start, the random streams) of an unsharded run; one that does not gets one short batch.
    """
    edges = [0, *(g - offset for g in range((offset // size + 1) * size, offset + n, size)), n]
    return list(pairwise(edges))


def _blackbox_note(backend: ScoreBackend, features: int, spec: AuditSpec) -> str | None:
    """The finite-difference backend's measured shortfall against autograd, if material."""
    note = getattr(backend, "gradient_note", None)
    return note(features, spec.norm) if note is not None else None


def _mean(mask: torch.Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else 0.0

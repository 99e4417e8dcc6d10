"""The pure entry point: run_audit(backend, x, y, spec, *, device) -> AuditResult."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise

import numpy as np
import torch

from robustness import degeneracy
from robustness.attacks.divergence import normalized_log_probs
from robustness.attacks.fgsm import FGSM
from robustness.attacks.pgd import PGD
from robustness.attacks.search import build_search, search_info
from robustness.backends.base import ScoreBackend
from robustness.batching import choose_batch_size
from robustness.errors import AuditInputError
from robustness.landscape import loss_landscape
from robustness.spec import AuditResult, AuditSpec, Baseline, Diagnostics, EpsilonResult
from robustness.stats import convergence, summarize

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]


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
            f"[{lo}, {hi}]; rescale the data or declare the model's input_range"
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
    """
    check_inputs(x, y, spec)
    n = min(len(x), spec.max_samples)
    xt = torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y[:n], dtype=np.int64))
    size = choose_batch_size(
        getattr(backend, "module", None), xt[:1], requested=spec.batch_size, device=device
    )
    batches = _batch_grid(sample_offset, n, size)
    bounds = spec.input_range
    stages = dict.fromkeys(("divergence", "random_probe", "clean", "fgsm", "pgd", "landscape"), 0.0)
    total = n * (len(spec.epsilons) + 1)  # progress counts samples done: clean, then per ε
    done = 0

    def tick(stage: str, samples: int) -> None:
        nonlocal done
        done += samples
        if progress is not None:
            progress(done, total, stage)
        if cancelled is not None and cancelled():
            raise AuditCancelled

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start

    clean = torch.zeros(n, dtype=torch.bool)
    data_log_probs = []
    for i, j in batches:
        xb, yb = xt[i:j].to(device), yt[i:j].to(device)
        with torch.inference_mode(), timed("clean"):
            scores = backend.scores(xb)
            clean[i:j] = (scores.argmax(1) == yb).cpu()
            lp = normalized_log_probs(scores, spec.logit_normalization)
            data_log_probs.append(lp.double().cpu().numpy())
        tick("clean", j - i)

    per_eps: list[EpsilonResult] = []
    zero = torch.zeros(n, dtype=torch.bool)
    nonfinite = torch.zeros(n, dtype=torch.bool)
    random_wins = 0
    evidence: list[str] = []
    for e_index, eps in enumerate(spec.epsilons):
        psi = torch.zeros(n, dtype=torch.float64)
        psi_half = torch.zeros(n, dtype=torch.float64)
        fgsm = torch.zeros(n, dtype=torch.bool)
        pgd = torch.zeros(n, dtype=torch.bool)
        alpha = spec.alpha(eps)
        search = build_search(backend, spec, eps)
        for i, j in batches:
            # Seeded by the global index of the batch's first sample, so a shard of samples
            # [offset, offset+n) reproduces the same batches of an unsharded run.
            gen = torch.Generator(device=device).manual_seed(
                spec.seed * 1_000_003 + e_index * 7919 + sample_offset + i
            )
            xb, yb = xt[i:j].to(device), yt[i:j].to(device)
            with timed("divergence"):
                outcome = search(xb, gen)
            psi[i:j] = outcome.psi
            psi_half[i:j] = outcome.psi_half
            zero[i:j] |= outcome.zero_gradient
            nonfinite[i:j] |= outcome.nonfinite_gradient
            with timed("random_probe"):
                probe = search.random_probe(xb, gen, spec.random_probes)
            wins = probe > outcome.psi * (1 + 1e-3) + 1e-7
            random_wins += int(wins.sum())
            for index in (wins.nonzero().flatten()[:3] + i).tolist():
                evidence.append(
                    f"ε={eps:g}: random noise reached KL {float(probe[index - i]):.4g} on sample "
                    f"{sample_offset + index}, the gradient search only "
                    f"{float(outcome.psi[index - i]):.4g}"
                )
            if Baseline.FGSM in spec.baselines:
                with timed("fgsm"):
                    fgsm[i:j] = FGSM(backend, norm=spec.norm, eps=eps, bounds=bounds)(xb, yb)
            if Baseline.PGD in spec.baselines:
                with timed("pgd"):
                    pgd[i:j] = PGD(
                        backend,
                        norm=spec.norm,
                        eps=eps,
                        steps=spec.steps,
                        alpha=alpha,
                        bounds=bounds,
                    )(xb, yb, gen)
            tick(f"epsilon {eps:g}", j - i)
        per_eps.append(
            EpsilonResult(
                epsilon=eps,
                divergence=summarize(psi.numpy(), seed=spec.seed),
                clean_accuracy=_mean(clean) if Baseline.CLEAN in spec.baselines else None,
                fgsm_accuracy=_mean(fgsm) if Baseline.FGSM in spec.baselines else None,
                pgd_accuracy=_mean(pgd) if Baseline.PGD in spec.baselines else None,
                per_sample=tuple(float(v) for v in psi),
                convergence=convergence(float(psi.mean()), float(psi_half.mean()), spec.steps),
            )
        )
    landscapes = []
    with timed("landscape"):
        for k in range(min(spec.landscape_samples, n)):
            gen = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + 104729 + k)
            landscapes.append(
                loss_landscape(
                    backend,
                    xt[k : k + 1].to(device),
                    int(yt[k]),
                    epsilon=spec.epsilons[0],
                    norm=spec.norm,
                    gen=gen,
                    span=spec.landscape_span,
                    resolution=spec.landscape_resolution,
                    sample_index=sample_offset + k,
                )
            )
    zero_frac, nonfinite_frac = _mean(zero), _mean(nonfinite)
    if zero_frac > 0.05:
        evidence.insert(
            0, f"{zero_frac:.0%} of samples had an all-zero input gradient at the start"
        )
    if nonfinite_frac > 0:
        evidence.insert(0, f"{nonfinite_frac:.0%} of samples had NaN or inf input gradients")
    with timed("clean"):
        noise_gen = torch.Generator(device=device).manual_seed(
            spec.seed * 1_000_003 + sample_offset
        )
        degenerate = degeneracy.detect(
            np.concatenate(data_log_probs),
            degeneracy.noise_log_probs(
                backend,
                xt[: degeneracy.NOISE_SAMPLES].to(device),
                bounds=bounds,
                normalization=spec.logit_normalization,
                gen=noise_gen,
            ),
            dead_gradient_fraction=_mean(zero) + _mean(nonfinite),
        )
    diagnostics = Diagnostics(
        gradient_masking_suspected=bool(zero_frac > 0.05 or nonfinite_frac > 0 or random_wins > 0),
        zero_gradient_fraction=zero_frac,
        nonfinite_gradient_fraction=nonfinite_frac,
        random_search_wins=random_wins,
        parity_max_abs_diff=parity_max_abs_diff,
        evidence=tuple(evidence[:10]),
        degenerate=degenerate,
        blackbox_note=_blackbox_note(backend, int(xt[0].numel()), spec),
    )
    return AuditResult(
        per_epsilon=tuple(per_eps),
        samples=n,
        backend=backend.kind,
        device=str(device),
        diagnostics=diagnostics,
        stage_seconds=stages,
        landscapes=tuple(landscapes),
        batch_size=size,
        search=search_info(spec),
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

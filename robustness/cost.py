"""What an audit will cost, in forward and backward passes, before it runs (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass

from robustness.attacks.budget import search_info
from robustness.config import Baseline
from robustness.spec import AuditSpec

# Samples the degeneracy check re-scores under noise, once per engine call; defined here so
# that robustness/degeneracy.py and this estimate count the same rows.
DEGENERACY_NOISE_SAMPLES = 16
# Samples with the largest ψ kept for the report (robustness/vulnerable.py), re-scored once
# at their worst input, per engine call.
VULNERABLE_SAMPLES = 6


@dataclass(frozen=True)
class CostEstimate:
    """Passes per sample and in total (the onnxruntime backend adds finite-difference queries)."""

    samples: int
    forward_passes_per_sample: int
    backward_passes_per_sample: int
    landscapes: int
    landscape_resolution: int
    noise_probe_rows: int = 0
    vulnerable_rows: int = 0

    @property
    def forward_passes(self) -> int:
        grid = self.landscapes * (1 + self.landscape_resolution**2)
        extra = self.noise_probe_rows + self.vulnerable_rows
        return self.samples * self.forward_passes_per_sample + grid + extra

    @property
    def backward_passes(self) -> int:
        return self.samples * self.backward_passes_per_sample + self.landscapes

    def finite_difference_queries(self, queries_per_gradient: int) -> int:
        """Extra forward evaluations when every backward pass is a finite-difference estimate."""
        return self.backward_passes * queries_per_gradient

    def to_dict(self) -> dict[str, int]:
        return {
            "samples": self.samples,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "forward_passes_per_sample": self.forward_passes_per_sample,
            "backward_passes_per_sample": self.backward_passes_per_sample,
        }


def estimate_cost(spec: AuditSpec, n: int) -> CostEstimate:
    """Count the passes of run_audit for n samples under `spec`."""
    samples = min(n, spec.max_samples)
    # metric: clean reference + the search's passes; random probes (+ their own reference);
    # FGSM 2/1; PGD K+1/K. Counted against run_audit in tests/unit/test_search_strength.py.
    search = search_info(spec)
    bwd = search.gradient_evaluations_per_sample
    # Every gradient is taken at an evaluated point; each run's last iterate is only
    # evaluated (both searches), so forwards = gradients + runs, + the clean reference.
    fwd = 1 + bwd + search.runs + 1 + spec.random_probes
    if Baseline.FGSM in spec.baselines:
        fwd, bwd = fwd + 2, bwd + 1
    if Baseline.PGD in spec.baselines:
        fwd, bwd = fwd + spec.steps + 1, bwd + spec.steps
    per_eps = len(spec.epsilons)
    clean = 1 if Baseline.CLEAN in spec.baselines else 0
    return CostEstimate(
        samples=samples,
        forward_passes_per_sample=per_eps * fwd + clean,
        backward_passes_per_sample=per_eps * bwd,
        landscapes=min(spec.landscape_samples, samples) * per_eps,
        landscape_resolution=spec.landscape_resolution,
        noise_probe_rows=min(DEGENERACY_NOISE_SAMPLES, samples),
        vulnerable_rows=min(VULNERABLE_SAMPLES, samples),
    )

"""The audit settings' flags of `run` and `submit`, derived from the one audit config model."""

from __future__ import annotations

from robaudit.cli.model_flags import ModelFlags
from service.schemas import AuditConfig

AUDIT_OPTIONS = ModelFlags(
    AuditConfig,
    # The names the README's recipes and users' scripts already type.
    aliases={"epsilons": "--eps", "landscape.samples": "--landscapes"},
    # Until every field of the model carries its own description.
    help={
        "norm": "the threat model's norm",
        "epsilons": "perturbation radii ε, in input units",
        "steps": "search iterations per restart; more is stronger and slower",
        "step_size": "the search's step (apgd-kl: the initial one, 2ε; pgd-kl: 2.5·ε/steps)",
        "restarts": "random restarts of the search; the worst case over them counts",
        "logit_normalization": "l2: logits scaled to unit norm first, so scale changes nothing",
        "backend": "the inference backend; auto picks torch when it matches onnxruntime",
        "max_samples": "audit at most this many samples of the dataset",
        "seed": "the random seed; an audit is reproducible for a seed on CPU",
        "baselines": "the conventional accuracies reported next to the divergence",
        "landscape.samples": "samples to draw loss and decision surfaces for",
        "landscape.resolution": "grid points per side of each surface",
        "landscape.span": "a surface's half-width, in multiples of ε",
    },
)

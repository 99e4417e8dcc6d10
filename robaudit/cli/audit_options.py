"""The audit settings' flags of `run` and `submit`, derived from the one audit config model."""

from __future__ import annotations

from robaudit.cli.model_flags import ModelFlags
from robustness.config import AuditConfig

AUDIT_OPTIONS = ModelFlags(
    AuditConfig,
    # The names the README's recipes and users' scripts already type.
    aliases={"epsilons": "--eps", "landscape.samples": "--landscapes"},
)

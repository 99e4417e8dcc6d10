"""The flags of `run`, `submit` and `check`, derived from the core's models: the audit
config (`--eps`, `--steps`, …) and the model's preprocessing (`--scale`, `--mean`, …)."""

from __future__ import annotations

import argparse

from robaudit.cli.model_flags import ModelFlags
from robustness.config import AuditConfig
from robustness.preprocessing import Preprocessing, resolve_range

AUDIT_OPTIONS = ModelFlags(
    AuditConfig,
    # The names the README's recipes and users' scripts already type.
    aliases={"epsilons": "--eps", "landscape.samples": "--landscapes"},
)
PREPROCESSING_OPTIONS = ModelFlags(Preprocessing, config_file=False)
PREPROCESSING_HELP = (
    "Declared, the audit runs in pixel space [0, scale] with (x − mean) / std prepended to the "
    "graph; the data holds pixels, laid out as the graph takes them. Unset: none."
)


def add_preprocessing(parser: argparse.ArgumentParser) -> None:
    PREPROCESSING_OPTIONS.add_to(parser, "model preprocessing", PREPROCESSING_HELP)


def preprocessing(args: argparse.Namespace) -> Preprocessing | None:
    """The declared preprocessing, None if no flag was given; ValueError names the flag."""
    if not PREPROCESSING_OPTIONS.given(args):
        return None
    return PREPROCESSING_OPTIONS.build(args)


def input_range(args: argparse.Namespace, pre: Preprocessing | None) -> tuple[float, float]:
    """`--input-range`, or [0, scale] with preprocessing; a contradiction is a ValueError."""
    from robaudit.cli.common import parse_range

    declared = None if args.input_range is None else parse_range(args.input_range)
    lo, hi = resolve_range(pre, declared) or (0.0, 1.0)
    return lo, hi

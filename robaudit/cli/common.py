"""What every command shares: exit codes, error lines, stdout that tolerates `| head`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

EXIT_INPUT = 2  # bad input, or a question the service cannot answer (gate: cannot judge)

Handler = Callable[[argparse.Namespace], int]
Subparsers = argparse._SubParsersAction


def fail(message: str) -> int:
    print(f"robaudit: error: {message}", file=sys.stderr)
    return EXIT_INPUT


def emit(text: str) -> None:
    """Print a line to stdout; a reader that left early (`| head -1`) is not an error.

    The command still finishes and exits with its own status: under `set -o pipefail` a
    pipeline then fails only when the command did, not because `head` stopped reading.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        discard_stdout()


def discard_stdout() -> None:
    """Later writes, and the interpreter's final flush, go nowhere instead of failing."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def parse_range(text: str) -> tuple[float, float]:
    """`--input-range lo,hi`: finite, lo < hi, as the API requires of `input_range`."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input-range takes two numbers 'lo,hi', not {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"--input-range {text!r}: give the finite range the model's inputs lie in, "
            "low before high (e.g. 0,1 or 0,255); ε is measured against it"
        )
    return lo, hi

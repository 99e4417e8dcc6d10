"""Human output: per-ε result lines, an audit summary, a gate verdict, a progress line.

Machines read `--json`; these are for people and CI logs, and stay a screen long.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}%"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def epsilon_lines(
    per_epsilon: list[dict[str, Any]], manifest: dict[str, Any] | None = None
) -> list[str]:
    """One line per ε (divergence with its CI, the accuracies), ε in the units it was measured
    in (pixels if the model declared its preprocessing), and whether the search converged."""
    from robustness.preprocessing import Preprocessing, epsilon_label

    manifest = manifest or {}
    stored = manifest.get("preprocessing")
    pre = None if stored is None else Preprocessing.model_validate(stored)
    lines = []
    for item in per_epsilon:
        d = item["divergence"]
        lines.append(
            f"eps {item['epsilon']:<8g} divergence {d['mean']:.5f} "
            f"[{d['ci95'][0]:.5f}, {d['ci95'][1]:.5f}]  clean {pct(item.get('clean_accuracy'))}  "
            f"fgsm {pct(item.get('fgsm_accuracy'))}  pgd {pct(item.get('pgd_accuracy'))}"
        )
        if manifest:
            lines.append(f"  {epsilon_label(item['epsilon'], manifest.get('input_range'), pre)}")
        c = item.get("convergence")
        if c is not None:
            verdict = (
                "converged" if c["converged"]
                else f"NOT converged: try --steps {c['suggested_steps']}"
            )  # fmt: skip
            lines.append(
                f"  search: psi grew {100 * c['relative_gain']:+.1f}% over the last half; {verdict}"
            )
    return lines


def audit_summary(audit: dict[str, Any]) -> list[str]:
    """An audit as a few lines: what, its state, and per ε the numbers (`--json` has all)."""
    progress = audit.get("progress") or {}
    lines = [
        f"audit   {audit['id']}  {audit['status']}"
        + (f"  backend {audit['backend']}" if audit.get("backend") else ""),
        f"model   {audit.get('model_id')}  dataset {audit.get('dataset_id')}",
    ]
    if audit["status"] not in ("succeeded", "failed", "cancelled"):
        lines.append(f"progress {progress.get('done', 0)}/{progress.get('total', 0)} "
                     f"{progress.get('stage') or ''}".rstrip())  # fmt: skip
    if audit.get("error"):
        lines.append(f"error   {audit['error']}")
    result = audit.get("result") or {}
    if result:
        lines.append(f"samples {result.get('samples')}  verdict {result.get('verdict', 'n/a')}")
        lines.extend(epsilon_lines(result.get("per_epsilon", []), result.get("manifest")))
        diagnostics = result.get("diagnostics") or {}
        if diagnostics.get("gradient_masking_suspected"):
            lines.append("warning: gradient masking suspected; see diagnostics in --json")
    return lines


def verdict_lines(verdict: dict[str, Any], baseline: str) -> list[str]:
    """A gate verdict: the overall word, why, and per ε the relative change."""
    lines = [f"verdict {verdict['verdict']} against {baseline}: {verdict['reason']}"]
    lines.extend(
        f"eps {item['epsilon']:<8g} divergence {item['baseline_divergence']:.5f} -> "
        f"{item['candidate_divergence']:.5f} ({item['relative_change']:+.1%})  {item['verdict']}"
        for item in verdict["per_epsilon"]
    )
    return lines


class ProgressLine:
    """Bar, done/total, stage, elapsed time and ETA on stderr.

    On a terminal the line is redrawn in place; in a log (CI) a new line is written at each
    stage and each further tenth of the work, so the log stays short.
    """

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.clock = clock
        self.start = clock()
        self._first: tuple[float, int] | None = None  # when work was first seen moving
        self._last_key: tuple[str, int] | None = None
        self._drawn = False

    def update(self, done: int, total: int, stage: str, eta: float | None = None) -> None:
        """`eta`: the server's estimate in seconds; without one, the rate seen so far."""
        now = self.clock()
        total = max(total, 1)
        if self._first is None and done > 0:
            self._first = (now, done)
        line = self._format(done, total, stage, now, eta)
        if self.stream.isatty():
            print(f"\r{line}", end="", file=self.stream, flush=True)
            self._drawn = True
            return
        key = (stage, 10 * done // total)
        if key != self._last_key:
            self._last_key = key
            print(line, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A step before the counted work starts (loading a model), so no silent minute."""
        line = f"{text} (elapsed {duration(self.clock() - self.start)})"
        if self.stream.isatty():
            print(f"\r{line}", end="", file=self.stream, flush=True)
            self._drawn = True
        else:
            print(line, file=self.stream, flush=True)

    def finish(self) -> None:
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = False

    def _format(self, done: int, total: int, stage: str, now: float, eta: float | None) -> str:
        filled = int(30 * min(done, total) / total)
        bar = "#" * filled + "-" * (30 - filled)
        text = f"[{bar}] {done}/{total} {stage:<12s} elapsed {duration(now - self.start)}"
        if eta is None and self._first is not None and self._first[1] < done < total:
            eta = (total - done) * (now - self._first[0]) / (done - self._first[1])
        if eta is not None and done < total:
            text += f"  eta {duration(eta)}"
        return text

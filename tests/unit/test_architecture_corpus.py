"""Issue 8, req. 3: every real architecture of the corpus is audited on a gradient backend.

Each case goes the worker's way: the intake check (`intake_file` runs `load_model_bytes` and
`inspect`), `loading.load` with its parity check against onnxruntime, then a short
`engine.run_audit` (two samples, two steps). The table in docs/coverage.md is this module's
output (`python -m tests.unit.test_architecture_corpus`), and a test holds it to the outcomes.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch

from robustness.config import AuditConfig, BackendKind, Baseline
from robustness.engine import run_audit
from robustness.loading import PARITY_RTOL, load
from robustness.onnx_graph import inspect, load_model_bytes
from robustness.spec import spec_from_config
from tests.factories.architectures import ARCHITECTURES, CORE, ArchCase

CPU = torch.device("cpu")
FULL = os.environ.get("ROBAUDIT_CORPUS") == "full"
ACTIVE = tuple(c for c in ARCHITECTURES if FULL or c.name in CORE)
DOC = Path(__file__).parents[2] / "docs" / "coverage.md"
# Ops whose support differs between converters or opsets; the table names them per model.
NOTABLE = {
    "BatchNormalization", "Clip", "Erf", "Gelu", "HardSigmoid", "HardSwish",
    "LayerNormalization", "ReduceMean", "Softmax", "Split", "Where",
}  # fmt: skip
AUDIT = AuditConfig(
    epsilons=[4 / 255], steps=2, max_samples=2, baselines=[Baseline.CLEAN],
    landscape={"samples": 0},
)  # fmt: skip


@dataclass(frozen=True)
class ArchOutcome:
    """What the tests assert about one case, and what the coverage table shows."""

    opset: int
    ops_of_note: tuple[str, ...]
    kind: BackendKind
    converter: str | None
    parity_relative: float | None
    notes: tuple[str, ...]
    psi: tuple[float, ...]

    def row(self, case: ArchCase) -> list[str]:
        """The table's columns; parity is shown but not compared (it varies with the CPU)."""
        rewrites = [n for n in self.notes if not n.startswith(("batch independence", "converted"))]
        converted = next((n for n in self.notes if n.startswith("converted to torch by")), "")
        first_failed = "(onnx2torch:" in converted
        return [
            case.name,
            case.family,
            f"{case.source} `{case.model}`",
            case.exporter,
            str(self.opset),
            f"{case.size}×{case.size}",
            ", ".join(self.ops_of_note) or "-",
            self.kind.value,
            (self.converter or "-") + (" (onnx2torch refused)" if first_failed else ""),
            "; ".join(_short(n) for n in rewrites) or "-",
        ]


_OUTCOMES: dict[str, ArchOutcome] = {}


def _short(note: str) -> str:
    """A rewrite note without its measured numbers, which vary with the CPU."""
    return re.sub(r" \((checked: )?(relative |batch dependence )[^)]*\)", " (checked)", note)


def outcome(case: ArchCase, directory: Path) -> ArchOutcome:
    """Export, intake, load and audit one case, once per session whichever test asks first."""
    if case.name in _OUTCOMES:
        return _OUTCOMES[case.name]
    data = case.export(directory)
    info = inspect(load_model_bytes(data))  # what the sandboxed intake does at upload
    probe = case.probe(4)
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = load(data, probe, device=CPU)
    labels = loaded.backend.raw_outputs(torch.from_numpy(probe)).argmax(dim=1).numpy()
    result = run_audit(loaded.backend, probe, labels, spec_from_config(AUDIT, (0, 1)), device=CPU)
    graph = onnx.load_from_string(data)
    ops = {n.op_type for n in graph.graph.node if n.domain in ("", "ai.onnx")} & NOTABLE
    ops |= {f"{n.domain}.{n.op_type}" for n in graph.graph.node if n.domain not in ("", "ai.onnx")}
    result_outcome = ArchOutcome(
        opset=info.opset,
        ops_of_note=tuple(sorted(ops)),
        kind=loaded.backend.kind,
        converter=getattr(loaded.backend, "converter", None),
        parity_relative=loaded.statuses[BackendKind.TORCH].parity_relative,
        notes=loaded.notes,
        psi=tuple(result.per_epsilon[0].per_sample or ()),
    )
    _OUTCOMES[case.name] = result_outcome
    return result_outcome


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("architectures")


@pytest.mark.slow
@pytest.mark.parametrize("case", ARCHITECTURES, ids=[c.name for c in ARCHITECTURES])
def test_each_architecture_is_audited_on_a_gradient_backend(
    case: ArchCase, export_dir: Path
) -> None:
    if case not in ACTIVE:
        pytest.skip("outside the core corpus; ROBAUDIT_CORPUS=full runs it")
    result = outcome(case, export_dir)
    assert result.opset == case.opset
    assert result.kind is BackendKind.TORCH, result.notes
    assert result.parity_relative is not None
    assert result.parity_relative <= PARITY_RTOL
    assert len(result.psi) == 2
    assert all(math.isfinite(p) and p >= 0 for p in result.psi)
    notes = " | ".join(result.notes)
    if case.variant == "float16":
        assert "float16 graph computed in float32 (checked" in notes
    if case.variant == "ort-extended":
        assert any(op.startswith("com.microsoft.") for op in result.ops_of_note)  # the premise
        assert "rewritten to standard ops (checked)" in notes
    if case.variant == "train-bn":
        assert "training-mode BatchNormalization node(s) set to inference mode" in notes


def test_the_corpus_spans_families_exporters_and_opsets_13_to_20() -> None:
    assert len({c.family for c in ARCHITECTURES}) >= 12
    assert {c.exporter for c in ARCHITECTURES} == {"torchscript", "dynamo"}
    assert {c.opset for c in ARCHITECTURES} == set(range(13, 21))
    assert {c.variant for c in ARCHITECTURES} == {"", "float16", "ort-extended", "train-bn"}


def _doc_rows() -> list[list[str]]:
    text = DOC.read_text().split("<!-- architectures -->")[1]
    rows = [line.strip().strip("|").split(" | ") for line in text.splitlines()]
    return [[c.strip() for c in r] for r in rows[2:] if len(r) > 2]


def test_the_coverage_doc_lists_every_case_of_the_corpus() -> None:
    assert [row[0] for row in _doc_rows()] == [c.name for c in ARCHITECTURES]


@pytest.mark.slow
def test_the_coverage_doc_shows_the_outcome_of_every_case_run(export_dir: Path) -> None:
    """The doc's rows, parity aside, are the outcomes; regenerate with this module's main."""
    documented = {row[0]: row[:-2] + row[-1:] for row in _doc_rows()}
    for case in ACTIVE:
        assert documented[case.name] == outcome(case, export_dir).row(case)


def _markdown(directory: Path) -> str:
    head = [
        "model", "family", "source", "exporter", "opset", "input", "ops of note", "backend",
        "converter", "parity rel", "rewrites (each checked against onnxruntime)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in ARCHITECTURES:
        found = outcome(case, directory)
        row = found.row(case)
        parity = f"{found.parity_relative:.1e}" if found.parity_relative is not None else "-"
        lines.append("| " + " | ".join([*row[:-1], parity, row[-1]]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tests.unit.test_architecture_corpus [export directory]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(_markdown(Path(sys.argv[1] if len(sys.argv) > 1 else tmp)))

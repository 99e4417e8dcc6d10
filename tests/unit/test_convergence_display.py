"""Issue 6, req. 2: the convergence diagnostic reaches `robaudit run` and the HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infra.storage import ArtifactStore
from robaudit.cli import main
from robustness.config import Baseline
from robustness.report import result_to_dict
from service.reports import report_html
from tests.factories.models import cnn_onnx, digits_split, natural_cnn
from tests.unit.engine_helpers import audit


def test_run_says_whether_the_search_converged(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["run", *map(str, files), "--eps", "0.1", "--landscapes", "0"]
    assert main([*common, "--steps", "2"]) == 0
    short = capsys.readouterr().out
    assert "NOT converged: try --steps" in short
    assert main([*common, "--steps", "40"]) == 0
    long = capsys.readouterr().out
    assert "; converged" in long
    assert "NOT converged" not in long


def test_html_report_shows_convergence_and_the_search(tmp_path: Path) -> None:
    split = digits_split()
    x, y = split.x_test[:32], split.y_test[:32]
    result = audit(
        cnn_onnx(natural_cnn()), x, y, epsilons=(0.05, 0.1), steps=2,
        baselines=(Baseline.CLEAN,), landscape_samples=0,
    )  # fmt: skip
    body = result_to_dict(result, include_per_sample=False)
    data = {
        "audit": {
            "id": "a1", "status": "succeeded", "result": body, "backend": "torch",
            "config": {"norm": "linf", "steps": 2, "restarts": 1, "logit_normalization": "l2"},
        },
        "model": {"name": "digits", "version": "1"},
        "dataset": {"name": "test", "n": 32},
    }  # fmt: skip
    page = report_html(data, ArtifactStore(tmp_path))
    assert "Search: apgd-kl/1" in page
    shown = [e["convergence"] for e in body["per_epsilon"]]
    assert not all(c["converged"] for c in shown)
    for c in shown:
        assert f"{100 * c['relative_gain']:+.1f}%" in page
        if not c["converged"]:
            assert f"try {c['suggested_steps']} steps" in page
    legacy = {**body, "per_epsilon": [dict(body["per_epsilon"][0])]}
    del legacy["search"], legacy["per_epsilon"][0]["convergence"]
    data["audit"]["result"] = legacy
    old_page = report_html(data, ArtifactStore(tmp_path))
    assert "recorded before versioning" in old_page
    assert "not recorded" in old_page
    assert np.isfinite([c["relative_gain"] for c in shown]).all()

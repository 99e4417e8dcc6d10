"""`robaudit check` and `robaudit run`: the offline commands, good and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robaudit.cli import main
from tests.factories import hostile


def test_check_json_matches_the_upload_report(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(files[0]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"] == {"name": "input", "shape": ["N", 1, 8, 8], "dtype": "float32"}
    assert report["output"]["num_classes"] == 10
    assert report["backends"]["torch"]["ok"] is True
    assert report["backends"]["torch"]["parity_max_abs_diff"] < 1e-4
    assert report["backend"] == "torch"


def test_run_prints_the_result_object(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "plots"
    argv = [
        "run",
        *map(str, files),
        "--eps",
        "0.05",
        "0.1",
        "--steps",
        "5",
        "--json",
        "--landscapes",
        "1",
    ]
    assert main([*argv, "--plots", str(plots)]) == 0
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert "96/96 epsilon 0.1" in captured.err  # progress goes to stderr, stdout stays JSON
    assert [e["epsilon"] for e in body["per_epsilon"]] == [0.05, 0.1]
    assert body["samples"] == 32
    assert body["timing"]["samples_per_second"] > 0
    assert set(body["timing"]["stages"]) >= {"divergence", "pgd", "fgsm", "clean", "landscape"}
    assert (plots / "landscape-0.png").read_bytes().startswith(b"\x89PNG")
    assert main(["run", *map(str, files), "--eps", "0.1", "--steps", "3"]) == 0
    assert "divergence" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model_bytes", "data", "message"),
    [
        (b"garbage", None, "not a valid ONNX file"),
        (
            None,
            hostile.npz_bytes(x=np.full((4, 1, 8, 8), np.nan, np.float32), y=np.zeros(4, int)),
            "NaN",
        ),
        (
            None,
            hostile.npz_bytes(x=np.full((4, 1, 8, 8), 9.0, np.float32), y=np.zeros(4, int)),
            "input range",
        ),
        (None, hostile.pickled_npz(), "without unpickling"),
    ],
    ids=["bad-model", "nan-data", "out-of-range", "pickle"],
)
def test_bad_input_is_a_clear_cli_error(
    files: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model_bytes: bytes | None,
    data: bytes | None,
    message: str,
) -> None:
    model, npz = files
    if model_bytes is not None:
        model.write_bytes(model_bytes)
    if data is not None:
        npz.write_bytes(data)
    assert main(["run", str(model), str(npz), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("robaudit: error:")  # after the progress lines
    assert message in err.splitlines()[-1]
    assert "Traceback" not in err


def test_missing_file_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path / "nope.onnx")]) == 2
    assert "No such file" in capsys.readouterr().err

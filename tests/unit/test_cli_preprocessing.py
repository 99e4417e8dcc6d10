"""Issue 8, req. 1: `check` and `run` take the model's preprocessing as flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robaudit.cli import main
from tests.factories import hostile
from tests.factories.models import MEAN, STD, pixels, twins

FLAGS = ["--mean", *map(str, MEAN), "--std", *map(str, STD)]


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, Path]:
    model, data = tmp_path / "outside.onnx", tmp_path / "pixels.npz"
    model.write_bytes(twins()[1])
    x, y = pixels(n=4)
    data.write_bytes(hostile.npz_bytes(x=x, y=y))
    return model, data


def test_check_and_run_take_preprocessing_flags_and_state_eps_in_pixels(
    outside: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = outside
    assert main(["check", str(model), *FLAGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preprocessing"] == {
        "scale": 1, "mean": list(MEAN), "std": list(STD), "layout": "NCHW"
    }  # fmt: skip
    assert report["input_range"] == [0.0, 1.0]
    assert report["backend"] == "torch"
    assert any("prepended" in n for n in report["notes"])
    argv = ["run", str(model), str(data), *FLAGS, "--eps", str(8 / 255), "--steps", "2"]
    assert main([*argv, "--baselines", "clean", "--landscapes", "0"]) == 0
    out = capsys.readouterr().out
    assert "ε = 8/255 (0.03137) in pixel space [0, 1]" in out


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--mean", "0.5", "--std", "0.2"], "has 3 channels on axis 1"),
        (["--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0", "0.2"], "--std: Value error"),
        (["--mean", "0.5", "0.5", "0.5"], "give mean and std together"),
        (["--scale", "255", "--input-range", "0,1"], "contradicts preprocessing scale 255"),
        (["--mean", "nan", "0", "0", "--std", "1", "1", "1"], "--mean"),
        (["--input-range", "0,inf"], "give the finite range"),
        (["--input-range", "1,0"], "low before high"),
    ],
)
def test_bad_preprocessing_flags_exit_2_saying_what_to_fix(
    outside: tuple[Path, Path], capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    assert main(["check", str(outside[0]), *flags]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags", [["--scale", "100"], ["--layout", "NCWH"]])
def test_flag_choices_are_the_model_fields(
    outside: tuple[Path, Path], capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", str(outside[0]), *flags])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_submit_refuses_bad_preprocessing_before_uploading(
    outside: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", *map(str, outside), "--mean", "0.5", "--std", "-1"]
    assert main(argv) == 2  # no server is running: nothing was sent
    assert "--std: Value error, std [-1.0] must be > 0" in capsys.readouterr().err

"""Options derived from a pydantic model (robaudit/cli/model_flags.py), help on every option,
and stdout that a reader may close early."""

from __future__ import annotations

import argparse
import enum
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, PositiveFloat

from robaudit.cli import build_parser
from robaudit.cli.audit_options import AUDIT_OPTIONS
from robaudit.cli.model_flags import ConfigError, ModelFlags

ROOT = Path(__file__).resolve().parents[2]


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    size: int = Field(3, ge=1, description="how big")


class Settings(BaseModel):
    model_config = {"extra": "forbid"}
    radii: list[PositiveFloat] = Field(default_factory=lambda: [0.5], description="radii")
    mode: Literal["fast", "slow"] = Field("fast", description="speed, 100% or less")
    colour: Colour = Colour.RED
    step: PositiveFloat | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    verbose: bool = False
    inner: Inner = Inner()
    extra: dict[str, int] = {}


def parse(flags: ModelFlags[Settings], *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    flags.add_to(parser)
    return parser.parse_args(argv)


def test_fields_become_typed_flags_and_the_model_comes_back() -> None:
    flags = ModelFlags(Settings, aliases={"radii": "--r"}, help={"colour": "a colour"})
    args = parse(flags, "--r", "0.1", "0.2", "--mode", "slow", "--colour", "blue", "--step", "2",
                 "--verbose", "--inner-size", "7", "--bounds", "-1", "1")  # fmt: skip
    built = flags.build(args)
    assert built == Settings(
        radii=[0.1, 0.2], mode="slow", colour=Colour.BLUE, step=2.0, verbose=True,
        inner=Inner(size=7), bounds=(-1.0, 1.0),
    )  # fmt: skip
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parse(flags, "--mode", "medium")
    with pytest.raises(SystemExit):  # "unrecognized arguments": a dict is left to --config
        parse(flags, "--extra", "1")


def test_unset_flags_leave_the_models_defaults_and_send_nothing() -> None:
    flags = ModelFlags(Settings)
    args = parse(flags, "--inner-size", "5")
    assert flags.given(args) == {"inner": {"size": 5}}
    built = flags.build(args)
    assert built.radii == [0.5]
    assert built.model_dump(exclude_unset=True) == {"inner": {"size": 5}}


def test_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    flags = ModelFlags(Settings)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"mode": "slow", "extra": {"a": 1}, "inner": {"size": 2}}))
    built = flags.build(parse(flags, "--config", str(path), "--inner-size", "9"))
    assert (built.mode, built.extra, built.inner.size) == ("slow", {"a": 1}, 9)


@pytest.mark.parametrize(
    ("argv", "content", "where", "what"),
    [
        (["--r", "-1"], None, "--r:", "Input should be greater than 0"),
        (["--inner-size", "0"], None, "--inner-size:", "greater than or equal to 1"),
        ([], {"nope": 1}, "--config nope:", "Extra inputs are not permitted"),
        ([], [1, 2], "--config:", "must hold a JSON object, not list"),
        ([], "{", "--config:", "is not JSON"),
    ],
    ids=["flag", "nested-flag", "extra-key", "not-an-object", "not-json"],
)
def test_refused_settings_name_what_to_fix(
    tmp_path: Path, argv: list[str], content: object, where: str, what: str
) -> None:
    flags = ModelFlags(Settings, aliases={"radii": "--r"})
    if content is not None:
        path = tmp_path / "c.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ConfigError) as caught:
        flags.build(parse(flags, *argv))
    assert str(caught.value).startswith(where)
    assert what in str(caught.value)


def test_help_shows_descriptions_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="x")
    ModelFlags(Settings).add_to(parser)
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--mode {fast,slow} speed, 100% or less (default: fast)" in text
    assert "--colour {red,blue}" in text
    assert "--radii FLOAT [FLOAT ...] radii (default: 0.5)" in text


def _actions(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_actions(sub, f"{prefix} {name}"))
        elif not isinstance(action, argparse._HelpAction):
            found.append((prefix, action))
    return found


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{command} {action.option_strings or action.dest}"
        for command, action in _actions(build_parser(), "robaudit")
        if not action.help
    ]
    assert missing == []


def test_the_audit_flags_users_type_still_exist() -> None:
    args = build_parser().parse_args(
        ["run", "m.onnx", "d.npz", "--eps", "0.03", "0.06", "--norm", "l2", "--steps", "5",
         "--landscapes", "0", "--logit-normalization", "none", "--step-size", "0.01"]
    )  # fmt: skip
    config = AUDIT_OPTIONS.build(args)
    assert config.epsilons == [0.03, 0.06]
    assert (config.norm, config.steps, config.landscape.samples) == ("l2", 5, 0)
    assert (config.logit_normalization, config.step_size) == ("none", 0.01)


def test_a_reader_that_leaves_early_is_not_a_broken_pipe() -> None:
    code = (
        "import sys; from robaudit.cli.common import emit\n"
        "emit('first')\n"
        "for _ in range(64): emit('x' * 4096)\n"  # more than a pipe holds
        "print('finished', file=sys.stderr)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline() == b"first\n"
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        assert proc.wait() == 0, err
    assert "finished" in err
    assert "Broken pipe" not in err
    assert "BrokenPipeError" not in err

"""Command-line options derived from a pydantic model, and the model built back from them.

The audit settings are defined once, as a pydantic model; the CLI must not copy them. Each
field becomes `--field-name` (a nested model's fields become `--outer-inner`), with the
field's type, its `Literal`/`Enum` values as choices, its description and default as help.
What no flag can express (a dict, say) still comes in through `--config FILE.json`, the
API's `config` object; flags given on the command line override the file.

Options default to "not given" (argparse.SUPPRESS): the model's defaults apply when it is
validated, so they live in one place, and a client can send only what the user chose.
"""

from __future__ import annotations

import argparse
import enum
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)
_DEST = "model_flags."  # namespace attribute prefix, apart from the command's own options
_CONFIG_DEST = "model_flags:config-file"


class ConfigError(ValueError):
    """Settings that do not validate; the message names the flag to fix."""


@dataclass(frozen=True)
class _Option:
    path: tuple[str, ...]  # ("landscape", "samples")
    flag: str  # "--landscapes"

    @property
    def dest(self) -> str:
        return _DEST + ".".join(self.path)


class ModelFlags(Generic[M]):
    """The options of one pydantic model on an argparse parser.

    `aliases` keeps flag names users already type (`{"epsilons": "--eps"}`, dotted for nested
    fields); `exclude` leaves fields to `--config` only; `help` fills in fields that carry
    no `description`; `config_file=False` leaves out `--config` (a second model on the same
    parser, whose flags alone say everything).
    """

    def __init__(
        self,
        model: type[M],
        *,
        aliases: Mapping[str, str] | None = None,
        exclude: frozenset[str] = frozenset(),
        help: Mapping[str, str] | None = None,  # argparse's own word for it
        config_file: bool = True,
    ) -> None:
        self.model = model
        self._config_file = config_file
        self._aliases = dict(aliases or {})
        self._exclude = exclude
        self._help = dict(help or {})
        self._options: list[tuple[_Option, dict[str, Any]]] = []
        self._collect(model, ())

    def _collect(self, model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            path = (*prefix, name)
            key = ".".join(path)
            if key in self._exclude:
                continue
            annotation = _strip_optional(info.annotation)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                self._collect(annotation, path)
                continue
            kwargs = _argparse_kwargs(annotation)
            if kwargs is None:
                continue  # not expressible as a flag: --config only
            flag = self._aliases.get(key, "--" + "-".join(path).replace("_", "-"))
            kwargs["help"] = _help_text(info, self._help.get(key))
            self._options.append((_Option(path, flag), kwargs))

    def add_to(
        self,
        parser: argparse.ArgumentParser,
        title: str = "audit settings",
        description: str = "Unset, each takes the service's default. Any may come from "
        "--config instead.",
    ) -> None:
        group = parser.add_argument_group(title, description)
        if self._config_file:
            group.add_argument(
                "--config",
                type=Path,
                metavar="FILE.json",
                dest=_CONFIG_DEST,
                default=None,
                help="the settings as a JSON object (the API's `config`); flags given here win",
            )
        for option, kwargs in self._options:
            group.add_argument(option.flag, dest=option.dest, default=argparse.SUPPRESS, **kwargs)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings the user chose: the --config file, overridden by the flags given."""
        data = _read_config(getattr(args, _CONFIG_DEST, None)) if self._config_file else {}
        for option, _ in self._options:
            if hasattr(args, option.dest):
                node = data
                for part in option.path[:-1]:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise ConfigError(f"--config: {part!r} must be an object")
                node[option.path[-1]] = getattr(args, option.dest)
        return data

    def build(self, args: argparse.Namespace) -> M:
        """The validated model; `ConfigError` names the flag when a value is refused."""
        try:
            return self.model.model_validate(self.given(args))
        except ValidationError as exc:
            raise ConfigError(self._explain(exc)) from None

    def _explain(self, exc: ValidationError) -> str:
        flags = {option.path: option.flag for option, _ in self._options}
        problems = []
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            if not loc:  # a rule across fields: its message names them
                problems.append(str(error["msg"]))
                continue
            where = next(
                (flags[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in flags),
                "--config " + ".".join(loc),
            )
            problems.append(f"{where}: {error['msg']}")
        return "; ".join(problems)


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--config: {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _strip_optional(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, …]` (pydantic's PositiveFloat, say) as plain X."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _argparse_kwargs(annotation: Any) -> dict[str, Any] | None:
    """type/choices/nargs/action for one field, or None if a flag cannot express it."""
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) in (list, tuple, set, frozenset):
        args = get_args(annotation)
        if get_origin(annotation) is tuple and Ellipsis not in args and len(set(args)) == 1:
            nargs: int | str = len(args)  # tuple[float, float]: exactly two values
        elif len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
            nargs = "+"
        else:
            return None
        element = _scalar_kwargs(_strip_optional(args[0]))
        return None if element is None else {**element, "nargs": nargs}
    return _scalar_kwargs(annotation)


def _scalar_kwargs(annotation: Any) -> dict[str, Any] | None:
    if get_origin(annotation) is Literal:
        values = list(get_args(annotation))
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
    else:
        values = []
    if values:
        return {"type": type(values[0]), "choices": values}
    if annotation in (int, float, str):
        return {"type": annotation, "metavar": annotation.__name__.upper()}
    return None


def _help_text(info: FieldInfo, fallback: str | None) -> str:
    # argparse formats help with %: a literal one (a "10%" in a description) is doubled.
    text = (info.description or fallback or "see the API's audit config").replace("%", "%%")
    default = info.get_default(call_default_factory=True)
    if isinstance(default, BaseModel | dict) or default is None:
        return text
    if isinstance(default, list | tuple):
        default = " ".join(str(getattr(v, "value", v)) for v in default)
    return f"{text} (default: {getattr(default, 'value', default)})"

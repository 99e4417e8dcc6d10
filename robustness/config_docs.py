"""README's table of the audit `config` fields, generated from :class:`AuditConfig` so that no
field, default or bound is written twice: `python -m robustness.config_docs --update README.md`
rewrites the `<!-- audit-config -->` block, `--markdown` prints it; tests/unit/test_readme.py
fails when README differs. (The environment's tables are infra/config_docs.py's.)"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from robustness.config import AuditConfig

BLOCK = re.compile(r"(<!-- audit-config -->\n).*?(<!-- /audit-config -->)", re.S)


def fields(
    model: type[BaseModel] = AuditConfig, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf field, nested ones dotted (`landscape.samples`), in declaration order."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _default(path: str) -> Any:
    value: Any = AuditConfig().model_dump(mode="json")  # default_factory included
    for part in path.split("."):
        value = value[part]
    return value


def _bounds(metadata: list[Any], integer: bool) -> str:
    ge = next((m.ge for m in metadata if isinstance(m, at.Ge)), None)
    le = next((m.le for m in metadata if isinstance(m, at.Le)), None)
    if integer and ge is not None and le is not None and len(metadata) == 2:
        return f" from {ge} to {le}"
    signs = {at.Ge: "≥", at.Gt: ">", at.Le: "≤", at.Lt: "<"}
    parts = []
    for m in metadata:
        for kind, sign in signs.items():
            if isinstance(m, kind):
                parts.append(f"{sign} {getattr(m, kind.__name__.lower())}")
    return (" " + " and ".join(parts)) if parts else ""


def _choices(enum: type[Enum]) -> list[str]:
    return [f'`"{member.value}"`' for member in enum]


def allowed(annotation: Any, metadata: list[Any]) -> str:
    """What the field accepts, in words; a type this does not know is a TypeError, so that a
    new kind of field cannot be documented wrongly."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *more = get_args(annotation)
        return allowed(inner, [*metadata, *more])
    if origin in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) == 1 and len(kinds) < len(get_args(annotation)):
            return f"{allowed(kinds[0], metadata)}, or `null`"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        *head, last = _choices(annotation)
        return f"{', '.join(head)} or {last}" if head else last
    if annotation is int:
        return "an integer" + _bounds(metadata, integer=True)
    if annotation is float:
        return "a number" + _bounds(metadata, integer=False)
    if origin is list:
        [item] = get_args(annotation)
        lo = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), None)
        hi = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
        count = f"{lo} to {hi}" if lo is not None and hi is not None else None
        if isinstance(item, type) and issubclass(item, Enum):
            return f"{count or 'a list'} of {', '.join(_choices(item))}"
        if get_origin(item) is Annotated and get_args(item)[0] is float:
            numbers = f"numbers{_bounds(list(get_args(item)[1:]), integer=False)}"
            return f"{count} {numbers}" if count else f"a list of {numbers}"
    raise TypeError(f"no words for a field of type {annotation!r}: teach robustness.config_docs")


def markdown() -> str:
    """README's table of the audit `config` fields."""
    rows = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for path, info in fields():
        default = json.dumps(_default(path), ensure_ascii=False)
        cells = (
            f"`{path}`",
            f"`{default}`",
            allowed(info.annotation, list(info.metadata)),
            (info.description or "").replace("|", "\\|"),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def update_readme(text: str) -> str:
    """`text` with its `<!-- audit-config -->` … `<!-- /audit-config -->` block regenerated."""
    if not BLOCK.search(text):
        raise ValueError("no <!-- audit-config --> block")
    return BLOCK.sub(lambda m: m[1] + markdown() + m[2], text)


if __name__ == "__main__":  # python -m robustness.config_docs --markdown | --update README.md
    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        path = Path(sys.argv[2])
        path.write_text(update_readme(path.read_text()))
    elif sys.argv[1:] == ["--markdown"]:
        print(markdown(), end="")
    else:
        sys.exit("usage: python -m robustness.config_docs --markdown | --update README.md")

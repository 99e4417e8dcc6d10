"""README's configuration tables, generated from `Settings` so that no variable goes
undocumented: `python -m infra.config_docs --update README.md` rewrites them,
`--markdown` prints them; tests/unit/test_settings.py fails when README differs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from infra.config import GROUPS, allowed, env_of, variables


def default_text(field: FieldInfo) -> str:
    env = env_of(field)
    if env and env.default:
        return env.default
    value = field.default
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, int) and env:
        return str(value // env.unit)  # every default is a whole number of its unit
    return f"{value:g}"


def markdown(group: str) -> str:
    """README's table of one group of variables."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for name, field in variables().items():
        env = env_of(field)
        if env and env.group == group:
            cells = (f"`{name}`", default_text(field), allowed(field), field.description or "")
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def update_readme(text: str) -> str:
    """`text` with each `<!-- settings:GROUP -->` … `<!-- /settings:GROUP -->` block regenerated."""
    for group in GROUPS:
        block = re.compile(rf"(<!-- settings:({group}) -->\n).*?(<!-- /settings:{group} -->)", re.S)
        if not block.search(text):
            raise ValueError(f"no <!-- settings:{group} --> block")
        text = block.sub(lambda m: m[1] + markdown(m[2]) + m[3], text)
    return text


if __name__ == "__main__":  # python -m infra.config_docs --markdown | --update README.md
    if sys.argv[1:2] == ["--update"] and len(sys.argv) == 3:
        path = Path(sys.argv[2])
        path.write_text(update_readme(path.read_text()))
    elif sys.argv[1:] == ["--markdown"]:
        print("\n".join(f"{group}:\n{markdown(group)}" for group in GROUPS))
    else:
        sys.exit("usage: python -m infra.config_docs --markdown | --update README.md")

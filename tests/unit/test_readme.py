"""README.md's code is checked, not trusted: every shell block parses under
`set -euo pipefail` and holds no placeholder, every `robaudit` command line in one parses
with the real CLI, every Python block defines what it uses (the webhook receiver runs), the
audit `config` table is the generated one, and every flag of `run` and `check` is
documented. The recipes that can run against a live server run in
tests/integration/test_ci_recipes.py."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import re
import shlex
import subprocess
import symtable
import time
from pathlib import Path
from typing import Any

import pytest

from infra.signing import signature_header
from robaudit.cli import build_parser
from robustness.config_docs import allowed, fields, update_readme

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHELLS = ("sh", "bash", "shell")
PIPEFAIL = "set -euo pipefail\n"
# `robaudit ARGS` up to the end of its command: a newline, `)`, a pipe, `;`, `&` or a comment.
ROBAUDIT = re.compile(r"(?<![\w./-])(?:\.venv/bin/)?robaudit[ \t]+([^\n)|;&#]*)")
REDIRECTION = re.compile(r"(?:^|(?<=\s))\d*(?:>>?|<)&?\s*\S*")  # `2>/dev/null`, `> out`
# What a reader must replace: `…`, or `<id>` (which bash reads as redirections).
PLACEHOLDER = re.compile(r"…|<[A-Za-z_ -]+>")


def code_blocks(text: str, *languages: str) -> list[str]:
    """The fenced blocks of `text` in these languages, in order."""
    fences = re.finditer(r"^```([\w-]*)\n(.*?)^```[ \t]*$", text, re.S | re.M)
    return [m[2] for m in fences if m[1] in languages]


def shell_blocks(text: str | None = None) -> list[str]:
    return code_blocks(README.read_text() if text is None else text, *SHELLS)


def recipes(text: str | None = None) -> list[str]:
    """The shell blocks that are whole scripts: they start with `set -euo pipefail`, and
    test_ci_recipes.py runs each one."""
    return [b for b in shell_blocks(text) if b.startswith(PIPEFAIL)]


def shell_problems(block: str) -> list[str]:
    """Why `block` would not run as written under `set -euo pipefail`, as far as can be told
    without running it: bash's syntax errors, placeholders, and `robaudit` command lines
    that the CLI's parser refuses."""
    problems = []
    script = block if block.startswith(PIPEFAIL) else PIPEFAIL + block
    done = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    if done.returncode:
        problems.append(f"bash -n: {done.stderr.strip()}")
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
        code = re.sub(r"(^|\s)#.*", "", line)  # a comment may say `…`
        if PLACEHOLDER.search(code):
            problems.append(f"placeholder in {line.strip()!r}: use a variable set above")
    for match in ROBAUDIT.finditer(re.sub(r"(^|\s)#.*", "", joined, flags=re.M)):
        argv = shlex.split(REDIRECTION.sub(" ", match[1]))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                build_parser().parse_args(argv)
            except SystemExit as stopped:
                if stopped.code:
                    problems.append(f"robaudit {match[1].strip()}: {err.getvalue().strip()}")
    return problems


def undefined_names(source: str) -> set[str]:
    """Names a Python snippet uses but neither defines, imports nor gets from builtins."""
    top = symtable.symtable(source, "<README>", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    known = defined | set(dir(builtins))
    used: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                used.add(symbol.get_name())
    return used - known


def test_the_readme_has_shell_blocks_and_recipes() -> None:
    assert len(shell_blocks()) >= 8
    assert len(recipes()) >= 2


@pytest.mark.parametrize(
    "block", shell_blocks(), ids=lambda b: b.split("#")[0].splitlines()[0][:40].strip()
)
def test_every_shell_block_would_run_under_pipefail(block: str) -> None:
    assert shell_problems(block) == [], block


@pytest.mark.parametrize(
    ("block", "found"),
    [
        ('curl -H "$H" localhost:8000/v1/audits/<id>   # status\n', "bash -n"),
        ("curl localhost:8000/v1/audits/<id>\n", "bash -n"),
        ('curl -d \'{"model_id": "…"}\' localhost:8000/v1/audits\n', "placeholder"),
        ('curl "localhost:8000/v1/audits/<audit id>"\n', "placeholder"),
        ("robaudit run model.onnx data.npz --steps 20 [--json]\n", "unrecognized arguments"),
        ("ID=$(robaudit submit m.onnx d.npz --wait --no-such-flag)\n", "unrecognized arguments"),
        ("docker compose run --rm api robaudit keys create\n", "--tenant"),
        ("robaudit run m.onnx d.npz \\\n  --norm l3\n", "invalid choice"),
        ('if true; then\n  robaudit status "$ID"\n', "bash -n"),
    ],
)
def test_the_check_finds_what_the_reviewer_found(block: str, found: str) -> None:
    problems = shell_problems(block)
    assert any(found in p for p in problems), problems


def test_the_check_passes_what_is_fine() -> None:
    block = (
        "ID=$(robaudit submit model.onnx holdout.npz --eps 0.03 --wait)  # … a comment\n"
        'robaudit report "$ID" --output robustness.html 2>/dev/null | head -1\n'
    )
    assert shell_problems(block) == []


def test_every_python_block_defines_what_it_uses() -> None:
    blocks = code_blocks(README.read_text(), "python")
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "<README>", "exec")
        assert undefined_names(block) == set(), block


def test_the_check_finds_an_undefined_name() -> None:
    snippet = "from x import Client\nwith Client(url, key) as api:\n    api.compare([b, 1])\n"
    assert undefined_names(snippet) == {"url", "key", "b"}
    inside = "import os\ndef f():\n    return os.environ[NAME], len([])\n"
    assert undefined_names(inside) == {"NAME"}


def test_the_webhook_receiver_accepts_signed_events_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    [block] = [b for b in code_blocks(README.read_text(), "python") if "verify_signature" in b]
    secret = "s" * 32
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    namespace: dict[str, Any] = {"__name__": "readme_webhook"}
    exec(compile(block, "<README>", "exec"), namespace)  # noqa: S102 (README's own code)
    client = namespace["app"].test_client()
    event = {"event": "audit.succeeded", "audit": {"id": "a1", "verdict": "measured"}}
    body = json.dumps(event).encode()

    def deliver(data: bytes, signed_at: float | None) -> int:
        headers = {"Content-Type": "application/json"}  # as every delivery is sent
        if signed_at is not None:
            headers["Robaudit-Signature"] = signature_header(secret, body, int(signed_at))
        return int(client.post("/robaudit", data=data, headers=headers).status_code)

    assert deliver(body, time.time()) == 204
    assert "audit.succeeded a1 measured" in capsys.readouterr().out
    assert deliver(body + b" ", time.time()) == 401  # not the bytes that were signed
    assert deliver(body, None) == 401
    assert deliver(body, time.time() - 3600) == 401  # a replay


def test_the_audit_config_table_is_the_generated_one() -> None:
    readme = README.read_text()
    assert update_readme(readme) == readme, (
        "run: python -m robustness.config_docs --update README.md"
    )
    for path, _ in fields():
        assert f"| `{path}` |" in readme
    assert "| `fd_directions` | `64` |" in readme
    assert "| `landscape.span` | `2.0` |" in readme


def test_the_audit_config_table_refuses_a_field_it_cannot_describe() -> None:
    with pytest.raises(TypeError, match="no words"):
        allowed(dict[str, int], [])
    with pytest.raises(ValueError, match="audit-config"):
        update_readme("no markers here")


@pytest.mark.parametrize("command", ["run", "check"])
def test_every_flag_of_the_offline_commands_is_in_the_readme(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    assert "--fd-directions" in flags or command != "run"
    readme = README.read_text()
    assert sorted(f for f in flags if f"`{f}" not in readme) == []


def test_every_link_inside_the_readme_has_its_heading() -> None:
    readme = README.read_text()
    outside_code = re.sub(r"^```.*?^```", "", readme, flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", outside_code, re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    links = set(re.findall(r"\]\(#([^)]+)\)", readme))
    assert {"the-audit-config", "the-api-at-a-glance"} <= links
    assert links - anchors == set()

"""The `robaudit` command: embedded service, production halves, admin, offline engine, client.

One module per concern: `processes` (up, serve, worker), `admin` (db, keys), `offline`
(check, run), `remote` (submit, status, report, gate), `mlflow_log` (mlflow-log). This
one only assembles the parser.
"""

from __future__ import annotations

import argparse

from robaudit.cli import admin, mlflow_log, offline, processes, remote
from robaudit.cli.common import EXIT_INPUT, discard_stdout

__all__ = ["EXIT_INPUT", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robaudit",
        description="Audit the adversarial robustness of ONNX classifiers: run the service, "
        "or audit offline, or talk to a server (ROBAUDIT_URL, ROBAUDIT_API_KEY).",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in (processes, admin, offline, remote, mlflow_log):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_INPUT
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader left during a write that bypassed `emit`
        discard_stdout()
        return 1  # the command did not finish: its outcome is unknown
    return code

"""The client commands: `submit`, `status`, `report` and `gate` against a robaudit server.

stdout carries what a script captures (an id, a path, or `--json`); people read stderr for
progress. So `ID=$(robaudit submit … --wait)` needs no `head`, and its exit status is the
audit's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robaudit.cli.audit_options import AUDIT_OPTIONS, add_preprocessing, preprocessing
from robaudit.cli.common import Subparsers, emit, fail
from robaudit.cli.display import ProgressLine, audit_summary, verdict_lines
from robaudit.cli.junit import junit_error, junit_xml
from robaudit.client import ApiError, Client


def register(sub: Subparsers) -> None:
    submit = sub.add_parser("submit", help="upload a model and data, start an audit (client)")
    submit.add_argument("model", type=Path, help="the ONNX file (streamed, not read into memory)")
    submit.add_argument("data", type=Path, help=".npz with arrays x (float) and y (int labels)")
    submit.add_argument("--name", help="the model's name, which its history is kept under")
    submit.add_argument("--version", help="the model's version label")
    submit.add_argument(
        "--input-range", metavar="LO,HI", help="the model's input bounds (default: 0,1)"
    )
    submit.add_argument(
        "--force", action="store_true", help="run even if an identical audit succeeded"
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the end, with progress and a summary on stderr; exit 1 unless succeeded",
    )
    submit.add_argument(
        "--json", action="store_true", help="print the audit as JSON instead of its id"
    )
    AUDIT_OPTIONS.add_to(submit)
    add_preprocessing(submit)
    submit.set_defaults(handler=cmd_submit)

    status = sub.add_parser("status", help="an audit's status and result (client)")
    status.add_argument("audit_id", help="the audit's id")
    status.add_argument("--json", action="store_true", help="the whole audit as JSON")
    status.set_defaults(handler=cmd_status)

    report = sub.add_parser("report", help="download an audit's HTML report (client)")
    report.add_argument("audit_id", help="the audit's id")
    report.add_argument("--output", type=Path, help="where to write it (default: report-ID.html)")
    report.add_argument("--open", action="store_true", help="open it in a browser")
    report.set_defaults(handler=cmd_report)

    gate = sub.add_parser("gate", help="exit 1 if an audit regresses against a baseline (client)")
    gate.add_argument("audit_id", help="the candidate audit's id")
    gate.add_argument(
        "--baseline",
        required=True,
        metavar="ID|latest:NAME",
        help="the baseline audit's id, or latest:NAME for the newest succeeded audit of models "
        "named NAME measured like the candidate (norm, eps, search, backend, normalization, "
        "dataset, preprocessing)",
    )
    gate.add_argument(
        "--max-increase",
        default="10%",
        help="the relative divergence rise that regresses, e.g. 10%% or 0.1 (default: 10%%)",
    )
    gate.add_argument("--junit", type=Path, help="also write a JUnit XML report here")
    gate.add_argument("--json", action="store_true", help="the verdict as JSON")
    gate.set_defaults(handler=cmd_gate)


def _client_call(run: Callable[[Client], int]) -> int:
    """The command with a client; API and input errors become one line and exit 2."""
    try:
        with Client.from_env() as client:
            return run(client)
    except (ApiError, OSError, ValueError) as exc:
        return fail(str(exc))


def cmd_submit(args: argparse.Namespace) -> int:
    try:  # refused settings fail before anything is uploaded
        config = AUDIT_OPTIONS.build(args).model_dump(mode="json", exclude_unset=True)
        pre = preprocessing(args)
    except ValueError as exc:
        return fail(str(exc))

    def run(client: Client) -> int:
        model = client.upload_model(
            args.model, name=args.name, version=args.version, input_range=args.input_range,
            preprocessing=None if pre is None else pre.model_dump(mode="json"),
        )  # fmt: skip
        dataset = client.upload_dataset(args.data)
        created = client.create_audit(model["id"], dataset["id"], config, force=args.force)
        if not args.wait:
            emit(json.dumps(created, indent=2) if args.json else created["id"])
            return 0
        if not args.json:
            emit(created["id"])  # at once: a script has the id even if it stops waiting
        audit = _wait(client, created["id"])
        if args.json:
            emit(json.dumps(audit, indent=2))
        return 0 if audit["status"] == "succeeded" else 1

    return _client_call(run)


def _wait(client: Client, audit_id: str) -> dict[str, Any]:
    progress = ProgressLine(sys.stderr)

    def show(audit: dict[str, Any]) -> None:
        p = audit["progress"]
        progress.update(p["done"], p["total"], p["stage"] or audit["status"], p.get("eta_seconds"))

    try:
        audit = client.wait(audit_id, show)
    finally:
        progress.finish()
    for line in audit_summary(audit):
        print(line, file=sys.stderr)
    return audit


def cmd_status(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        audit = client.audit(args.audit_id)
        emit(json.dumps(audit, indent=2) if args.json else "\n".join(audit_summary(audit)))
        return 0

    return _client_call(run)


def cmd_report(args: argparse.Namespace) -> int:
    def run(client: Client) -> int:
        out = args.output or Path(f"report-{args.audit_id}.html")
        out.write_bytes(client.report(args.audit_id))
        emit(str(out))
        if args.open:
            import webbrowser

            webbrowser.open(out.resolve().as_uri())
        return 0

    return _client_call(run)


def cmd_gate(args: argparse.Namespace) -> int:
    """0: no regression; 1: regressed; 2: cannot judge (incomparable, degenerate, baseline
    missing or unfinished, bad input). `--junit` is written in every case."""
    from robustness.compare import parse_increase

    if args.junit:  # replaced below; if the gate stops before judging, CI still sees why
        args.junit.write_text(junit_error(args.baseline, "the gate stopped before judging"))

    def run(client: Client) -> int:
        try:
            limit = parse_increase(args.max_increase)
            found = client.compare([args.baseline, args.audit_id], limit)
        except (ApiError, ValueError) as exc:
            if args.junit:
                args.junit.write_text(junit_error(args.baseline, str(exc)))
            raise
        verdict, baseline = found["verdicts"][0], found["baseline"]
        emit(json.dumps(verdict, indent=2) if args.json
             else "\n".join(verdict_lines(verdict, baseline)))  # fmt: skip
        if args.junit:
            args.junit.write_text(junit_xml(verdict, baseline))
        if verdict["verdict"] == "incomparable":
            return fail(f"cannot compare: {verdict['reason']}")
        return 1 if verdict["regressed"] else 0

    return _client_call(run)

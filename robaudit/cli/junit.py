"""A gate verdict as JUnit XML, the format every CI system shows as tests.

Whenever the gate cannot judge (the audits are incomparable, a model is degenerate, the
baseline is missing or unfinished, the server cannot be asked), the file holds an `<error>`
case: CI must never show `tests="0"` as a pass.
"""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

CLASSNAME = "robaudit.gate"


def junit_xml(verdict: dict[str, Any], baseline: str) -> str:
    """One test case per ε; an `<error>` case when the gate cannot judge, so CI never sees 0."""
    cases = []
    for item in verdict["per_epsilon"]:
        name = quoteattr(f"divergence at eps={item['epsilon']:g} vs {baseline}")
        body = ""
        if item["verdict"] == "regressed":
            message = quoteattr(f"relative change {item['relative_change']:+.1%}")
            body = f"<failure message={message}>{escape(json.dumps(item))}</failure>"
        cases.append(f"  <testcase classname={quoteattr(CLASSNAME)} name={name}>{body}</testcase>")
    failures = sum(item["verdict"] == "regressed" for item in verdict["per_epsilon"])
    errors = 0
    if verdict["verdict"] == "incomparable" or not cases:  # a pipeline must see why
        cases.append(_error_case(baseline, verdict["reason"]))
        errors = 1
    return _suite(cases, failures, errors)


def junit_error(baseline: str, message: str) -> str:
    """The gate could not ask or could not be answered: one `<error>` case saying why."""
    return _suite([_error_case(baseline, message)], failures=0, errors=1)


def _error_case(baseline: str, message: str) -> str:
    name = quoteattr(f"comparable with {baseline}")
    body = f"<error message={quoteattr(message)}>{escape(message)}</error>"
    return f"  <testcase classname={quoteattr(CLASSNAME)} name={name}>{body}</testcase>"


def _suite(cases: list[str], failures: int, errors: int) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="robaudit-gate" tests="{len(cases)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )

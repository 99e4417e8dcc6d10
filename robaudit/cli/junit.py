"""A gate verdict as JUnit XML, the format every CI system shows as tests."""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr


def junit_xml(verdict: dict[str, Any], baseline: str) -> str:
    """One test case per ε; an `<error>` case when the gate cannot judge, so CI never sees 0."""
    cases = []
    for item in verdict["per_epsilon"]:
        name = quoteattr(f"divergence at eps={item['epsilon']:g} vs {baseline}")
        body = ""
        if item["verdict"] == "regressed":
            message = quoteattr(f"relative change {item['relative_change']:+.1%}")
            body = f"<failure message={message}>{escape(json.dumps(item))}</failure>"
        cases.append(f'  <testcase classname="robaudit.gate" name={name}>{body}</testcase>')
    failures = sum(item["verdict"] == "regressed" for item in verdict["per_epsilon"])
    errors = int(verdict["verdict"] == "incomparable")
    if errors:  # a pipeline must see why nothing was judged
        name = quoteattr(f"comparable with {baseline}")
        body = f"<error message={quoteattr(verdict['reason'])}></error>"
        cases.append(f'  <testcase classname="robaudit.gate" name={name}>{body}</testcase>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="robaudit-gate" tests="{len(cases)}" failures="{failures}" '
        f'errors="{errors}">\n' + "\n".join(cases) + "\n</testsuite>\n"
    )

"""/v1/compare and /metrics: verdicts between audits, and counts for monitoring."""

from __future__ import annotations

from flask import Response

from service import reports, telemetry
from service.api.common import blueprint, json_response, problem
from service.auth import tenant_id
from service.db import db
from service.schemas import CompareOut, CompareQuery

bp = blueprint(
    "compare",
    "",
    "Compare audits against a baseline, for release gates; and this tenant's counts.",
)
METRICS = {
    "description": "Prometheus text exposition",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@bp.get(
    "/v1/compare",
    responses={
        200: CompareOut,
        400: problem("Fewer than 2 or more than 20 audit ids"),
        409: problem("An audit has not succeeded; only succeeded audits compare"),
    },
    description=(
        "An audit has `regressed` only when its mean divergence rose by more than "
        "`max_increase` and beyond noise: on the same dataset a paired bootstrap of the "
        "per-sample differences, otherwise non-overlapping 95% intervals.\n\n"
        "The verdict is `incomparable`, with `reasons`, when the audits measured differently "
        "(backend, search, normalization, norm, ε, dataset, pixel space) or either model is "
        "degenerate. The pixel space is [0, scale] of a model's declared preprocessing, else its "
        "input_range: a model normalizing inside its graph compares with its twin declaring the "
        "same normalization."
    ),
)
def compare_audits(query: CompareQuery) -> Response:
    """Compare audits with the first one, the baseline."""
    ids = [i.strip() for i in query.audits.split(",") if i.strip()]
    body = reports.compare_audits(
        session=db.session, tenant_id=tenant_id(), audit_ids=ids, max_increase=query.max_increase
    )
    return json_response(body)


@bp.get("/metrics", responses={200: METRICS})
def metrics() -> Response:
    """Prometheus metrics for monitoring.

    This tenant's audits by status, and its live models and datasets;
    the service's queue depth and worker throughput;
    this API process's request latency.
    """
    return telemetry.metrics_response(session=db.session, tenant_id=tenant_id())

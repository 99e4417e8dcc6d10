"""/v1/compare and /metrics"""

from __future__ import annotations

from flask import Response

from service import reports, telemetry
from service.api.common import blueprint, json_response
from service.auth import tenant_id
from service.db import db
from service.schemas import CompareQuery

bp = blueprint("compare", "")


@bp.get("/v1/compare", responses={200: None})
def compare_audits(query: CompareQuery) -> Response:
    """Audits side by side, with each one's verdict against the first (the baseline).

    A verdict is `incomparable`, with `reasons`, when the two audits measured differently
    (backend, search, normalization, norm, ε, dataset, preprocessing) or either model is
    degenerate; on the same dataset it rests on a paired test of the per-sample values.
    """
    ids = [i.strip() for i in query.audits.split(",") if i.strip()]
    body = reports.compare_audits(
        session=db.session, tenant_id=tenant_id(), audit_ids=ids, max_increase=query.max_increase
    )
    return json_response(body)


@bp.get("/metrics", responses={200: None})
def metrics() -> Response:
    """Prometheus text format: this tenant's audits by status, models and datasets; the
    service's queue depth and worker throughput; this API process's request latency."""
    return telemetry.metrics_response(session=db.session, tenant_id=tenant_id())

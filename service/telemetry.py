"""What the web process tells operators: a request id on every log line and response, request
latency, and the /metrics scrape.

Metrics use prometheus_client with one registry per app, so several apps in one process (the
tests) do not clash. The figures that the database holds are read at scrape time by a
collector, so they are true after a restart and the same from every API process; only the
request-latency histogram lives in the process.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta

import structlog
from celery import Celery
from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from infra.config import Settings
from infra.dispatch import queue_depth, shown_status
from infra.persistence.models import (
    Audit,
    AuditShard,
    AuditStatus,
    Dataset,
    Model,
    ShardStatus,
    utcnow,
)
from infra.queue import QUEUE_KINDS, broker_reachable, queue_names

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it looks like an id; anything else gets a fresh one.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Any other method is one label value, so odd requests cannot grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Worker throughput: the samples of the shards finished over this window, per second.
THROUGHPUT_WINDOW_S = 300
log = structlog.get_logger("robaudit.web")


def init_app(app: Flask) -> None:
    """Give each request an id and time it; register this first, so it times the others."""
    registry = CollectorRegistry()
    latency = Histogram(
        "robaudit_request_duration_seconds",
        "Seconds to answer an HTTP request of this process, by route, method and status.",
        ["endpoint", "method", "status"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    app.extensions["robaudit.metrics"] = registry

    @app.before_request
    def start() -> None:
        g.request_started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _GOOD_ID.fullmatch(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def finish(response: Response) -> Response:
        seconds = time.perf_counter() - g.request_started
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        latency.labels(rule, method, str(response.status_code)).observe(seconds)
        response.headers[REQUEST_ID_HEADER] = g.request_id
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            ms=round(1000 * seconds, 1),
        )
        return response


def metrics_response(*, session: Session, tenant_id: str) -> Response:
    """The Prometheus text exposition: this process's latency and the collector's figures."""
    settings: Settings = current_app.config["ROBAUDIT_SETTINGS"]
    celery: Celery = current_app.extensions["robaudit.celery"]
    scrape = _Both(
        current_app.extensions["robaudit.metrics"],
        StateCollector(session=session, tenant_id=tenant_id, settings=settings, celery=celery),
    )
    return Response(generate_latest(scrape), content_type=CONTENT_TYPE_PLAIN_0_0_4)


class _Both(Collector):
    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class StateCollector(Collector):
    """The state in the database (and the broker), read when scraped.

    Audits, models and datasets are the tenant's own; queue depth and worker throughput are
    the service's, since every tenant's audits share the queues and the workers.
    """

    def __init__(
        self, *, session: Session, tenant_id: str, settings: Settings, celery: Celery
    ) -> None:
        self.session, self.tenant_id = session, tenant_id
        self.settings, self.celery = settings, celery

    def collect(self) -> Iterable[Metric]:
        audits = GaugeMetricFamily(
            "robaudit_audits", "Audits of this tenant by status.", labels=["status"]
        )
        counts = audit_counts(self.session, self.tenant_id)
        # Every status the rows hold, so a state added later is never hidden.
        for status in [s.value for s in AuditStatus] + sorted(set(counts) - set(AuditStatus)):
            audits.add_metric([status], counts.get(status, 0))
        yield audits
        for name, entity in (("models", Model), ("datasets", Dataset)):
            live = self.session.scalar(
                select(func.count())
                .select_from(entity)
                .where(entity.tenant_id == self.tenant_id, entity.deleted_at.is_(None))
            )
            yield GaugeMetricFamily(
                f"robaudit_{name}", f"Live (not deleted) {name} of this tenant.", value=live or 0
            )
        yield self.queue_depth()
        yield self.throughput()

    def queue_depth(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "robaudit_queue_depth",
            "Tasks waiting for a worker, service-wide, by queue (control: audits to plan; "
            "compute: shards). source=database when the broker did not answer: then the "
            "database's queued audits and pending shards stand in for it.",
            labels=["queue", "source"],
        )
        # A quick ping first: a broker that is down would hold queue_depth for seconds.
        reachable, _ = broker_reachable(self.settings)
        names = queue_names(self.settings)
        for kind in QUEUE_KINDS:
            depth = queue_depth(self.celery, names[kind]) if reachable else None
            if depth is None:
                family.add_metric([kind, "database"], self.waiting_in_database(kind))
            else:
                family.add_metric([kind, "broker"], depth)
        return family

    def waiting_in_database(self, kind: str) -> int:
        if kind == "control":
            stmt = select(func.count()).where(Audit.status == AuditStatus.QUEUED.value)
        else:
            stmt = (
                select(func.count())
                .select_from(AuditShard)
                .join(Audit, Audit.id == AuditShard.audit_id)
                .where(
                    AuditShard.status == ShardStatus.PENDING.value,
                    Audit.status == AuditStatus.RUNNING.value,
                )
            )
        return self.session.scalar(stmt) or 0

    def throughput(self) -> GaugeMetricFamily:
        since = utcnow() - timedelta(seconds=THROUGHPUT_WINDOW_S)
        samples = self.session.scalar(
            select(func.sum(AuditShard.stop - AuditShard.start)).where(
                AuditShard.status == ShardStatus.DONE.value, AuditShard.finished_at >= since
            )
        )
        return GaugeMetricFamily(
            "robaudit_worker_throughput_samples_per_second",
            f"Samples audited per second by all workers: the samples of the shards finished "
            f"in the last {THROUGHPUT_WINDOW_S} s, divided by {THROUGHPUT_WINDOW_S}.",
            value=(samples or 0) / THROUGHPUT_WINDOW_S,
        )


def audit_counts(session: Session, tenant_id: str) -> dict[str, int]:
    """Audits by the status the API shows: `running` only while one of its shards is leased
    (issue 10: /metrics said running 12 while 11 of them waited).

    The audits GET /v1/audits lists: one deleted through DELETE /v1/audits/{id} is not
    counted, while an audit of a deleted model stays in the history and is."""
    status = shown_status()
    live = (Audit.tenant_id == tenant_id, Audit.deleted_at.is_(None))
    return {
        str(k): int(v)
        for k, v in session.execute(select(status, func.count()).where(*live).group_by(status))
    }

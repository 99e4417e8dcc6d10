"""What the pages show, computed from rows and typed results: table rows, charts, trends."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.persistence.models import TERMINAL, Audit, AuditStatus, Model
from robustness.results import AuditResult, EpsilonResult
from service.audits import audit_out, stored_result
from service.schemas import CompareOut
from service.ui.charts import Axes, Point, Series, line_chart

TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M")


def model_label(model: Model) -> str:
    return f"{model.name} {model.version}" if model.version else model.name


def audit_row(row: Audit) -> dict[str, Any]:
    """One audit as the tables show it; its headline is the largest ε it measured."""
    out = audit_out(row)
    result = out.result
    top = max(result.per_epsilon, key=lambda e: e.epsilon) if result else None
    return {
        "id": row.id,
        "short": row.id[:8],
        "model": row.model,
        "model_label": model_label(row.model),
        "dataset": row.dataset,
        "status": out.status,
        "terminal": out.status in TERMINAL_VALUES,
        "done": out.progress.done,
        "total": out.progress.total,
        "stage": out.progress.stage,
        "eta": out.progress.eta_seconds,
        "created": when(row.created_at),
        "finished": when(row.finished_at),
        "epsilon": top.epsilon if top else None,
        "divergence": top.divergence.mean if top else None,
        "pgd": top.pgd_accuracy if top else None,
        "degenerate": bool(result and result.diagnostics.degenerate),
        "succeeded": out.status == AuditStatus.SUCCEEDED.value,
        "error": out.error,
    }


def epsilon_charts(result: AuditResult) -> tuple[Markup, Markup]:
    """ψ against ε with its 95% CI; clean, FGSM and PGD accuracy against ε."""
    eps = sorted(result.per_epsilon, key=lambda e: e.epsilon)
    divergence = Series(
        "mean divergence (95% CI)",
        tuple(
            Point(e.epsilon, e.divergence.mean, *e.divergence.ci95, note=_psi_note(e)) for e in eps
        ),
    )
    accuracies = [
        Series(name, tuple(Point(e.epsilon, v) for e in eps if (v := getattr(e, attr)) is not None))
        for name, attr in (
            ("clean", "clean_accuracy"),
            ("FGSM", "fgsm_accuracy"),
            ("PGD", "pgd_accuracy"),
        )
    ]
    return (
        line_chart([divergence], Axes("Divergence ψ by ε (lower is more robust)", "ε", "ψ")),
        line_chart(
            [s for s in accuracies if s.points],
            Axes("Accuracy by ε", "ε", "accuracy", y_format=pct, y_min=0.0, y_max=1.0),
        ),
    )


def _psi_note(e: EpsilonResult) -> str:
    lo, hi = e.divergence.ci95
    return f"ε {e.epsilon:g}: ψ {e.divergence.mean:.4g} [{lo:.4g}, {hi:.4g}]"


def baseline_choices(session: Session, row: Audit) -> list[dict[str, Any]]:
    """Other live succeeded audits of this model's name (any version), newest first:
    baselines. A deleted one would only answer 404 on the compare page."""
    if row.status != AuditStatus.SUCCEEDED.value:
        return []
    rows = session.scalars(
        select(Audit)
        .join(Model, Model.id == Audit.model_id)
        .where(
            Audit.tenant_id == row.tenant_id,
            Model.name == row.model.name,
            Audit.status == AuditStatus.SUCCEEDED.value,
            Audit.deleted_at.is_(None),
            Audit.id != row.id,
        )
        .order_by(Audit.created_at.desc())
        .limit(50)
    )
    return [
        {"id": a.id, "label": f"{model_label(a.model)} · {when(a.created_at)} · {a.id[:8]}"}
        for a in rows
    ]


def audits_by_id(session: Session, ids: list[str]) -> list[Audit]:
    return list(session.scalars(select(Audit).where(Audit.id.in_(ids))))


@dataclass(frozen=True)
class Trend:
    """A model's succeeded audits at one ε, by version and over time."""

    epsilon: float | None
    epsilons: list[float]
    by_version: tuple[Markup, Markup] | None
    over_time: tuple[Markup, Markup] | None

    @classmethod
    def of(cls, versions: list[Model], history: list[Audit], wanted: str) -> Trend:
        measured = [
            (a, r)
            for a in history
            if a.status == AuditStatus.SUCCEEDED.value and (r := stored_result(a)) is not None
        ]
        counts = Counter(e.epsilon for _, r in measured for e in r.per_epsilon)
        epsilons = sorted(counts)
        if not epsilons:
            return cls(None, [], None, None)
        # the ε most audits measured (the largest of those), unless the page asks for another
        epsilon = max(epsilons, key=lambda e: (counts[e], e))
        try:
            if wanted and float(wanted) in counts:
                epsilon = float(wanted)
        except ValueError:
            pass
        at = [(a, e) for a, r in measured for e in r.per_epsilon if e.epsilon == epsilon]
        at.sort(key=lambda pair: pair[0].created_at)
        return cls(epsilon, epsilons, _by_version(versions, at), _over_time(at))


def _by_version(
    versions: list[Model], at: list[tuple[Audit, EpsilonResult]]
) -> tuple[Markup, Markup]:
    index = {v.id: i for i, v in enumerate(versions)}
    ticks = tuple((float(i), v.version or v.id[:8]) for i, v in enumerate(versions))
    psi = Series("mean ψ (95% CI)", tuple(_psi_point(index[a.model_id], a, e) for a, e in at))
    pgd = Series(
        "PGD accuracy",
        tuple(
            Point(
                index[a.model_id],
                e.pgd_accuracy,
                note=f"{model_label(a.model)}: {pct(e.pgd_accuracy)}",
            )
            for a, e in at
            if e.pgd_accuracy is not None
        ),
    )
    return (
        line_chart([psi], Axes("Divergence ψ by version", "model version", "ψ", x_ticks=ticks)),
        line_chart(
            [pgd],
            Axes(
                "PGD accuracy by version",
                "model version",
                "accuracy",
                x_ticks=ticks,
                y_format=pct,
                y_min=0.0,
                y_max=1.0,
            ),
        ),
    )


def _over_time(at: list[tuple[Audit, EpsilonResult]]) -> tuple[Markup, Markup]:
    stamps = [_utc(a.finished_at or a.created_at).timestamp() for a, _ in at]
    ticks = _time_ticks(min(stamps), max(stamps))
    psi = Series(
        "mean ψ (95% CI)",
        tuple(_psi_point(t, a, e) for t, (a, e) in zip(stamps, at, strict=True)),
    )
    pgd = Series(
        "PGD accuracy",
        tuple(
            Point(t, e.pgd_accuracy, note=f"{model_label(a.model)}: {pct(e.pgd_accuracy)}")
            for t, (a, e) in zip(stamps, at, strict=True)
            if e.pgd_accuracy is not None
        ),
    )
    return (
        line_chart([psi], Axes("Divergence ψ over time", "audit finished", "ψ", x_ticks=ticks)),
        line_chart(
            [pgd],
            Axes(
                "PGD accuracy over time",
                "audit finished",
                "accuracy",
                x_ticks=ticks,
                y_format=pct,
                y_min=0.0,
                y_max=1.0,
            ),
        ),
    )


def _psi_point(x: float, audit: Audit, e: EpsilonResult) -> Point:
    lo, hi = e.divergence.ci95
    note = (
        f"{model_label(audit.model)} ({audit.id[:8]}): {e.divergence.mean:.4g} [{lo:.4g}, {hi:.4g}]"
    )
    return Point(x, e.divergence.mean, lo, hi, note=note)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite reads naive UTC


def _time_ticks(lo: float, hi: float, count: int = 5) -> tuple[tuple[float, str], ...]:
    """Evenly spaced ticks labelled as dates (or times, within one day)."""
    if hi - lo < 1:
        lo, hi = lo - 60, hi + 60
    fmt = "%H:%M" if hi - lo < 86400 else "%Y-%m-%d"
    step = (hi - lo) / (count - 1)
    return tuple(
        (lo + i * step, datetime.fromtimestamp(lo + i * step, UTC).strftime(fmt))
        for i in range(count)
    )


def compare_chart(out: CompareOut, rows: dict[str, dict[str, Any]]) -> Markup:
    """Each compared audit's ψ against ε, the baseline first."""
    series = []
    for item in out.items:
        label = rows[item.id]["model_label"] if item.id in rows else item.id[:8]
        prefix = "baseline " if item.id == out.baseline else ""
        eps = sorted(item.per_epsilon, key=lambda e: e.epsilon)
        series.append(
            Series(
                f"{prefix}{label} ({item.id[:6]})",
                tuple(Point(e.epsilon, e.divergence.mean, *e.divergence.ci95) for e in eps),
            )
        )
    return line_chart(series, Axes("Divergence ψ by ε", "ε", "ψ"))

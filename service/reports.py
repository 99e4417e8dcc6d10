"""Reports and comparisons: read-only views over the audit history (metrics: telemetry.py)."""

from __future__ import annotations

import json
from typing import Any

import jinja2
from pydantic import ValidationError
from sqlalchemy.orm import Session

from infra.persistence.models import Audit, AuditStatus
from infra.storage import ArtifactStore
from robustness.compare import compare
from robustness.config import AuditConfig
from robustness.preprocessing import Preprocessing, epsilon_label
from robustness.results import AuditResult
from service import baselines
from service import report_view as view
from service.audits import audit_out, estimate, get_audit, stored_result
from service.catalog import dataset_json, model_json
from service.errors import Problem
from service.schemas import (
    AuditVerdict,
    CompareItem,
    CompareOut,
    DatasetOut,
    ModelOut,
    ModelRef,
    ReportOut,
)

MAX_COMPARE = 20


def report_data(*, session: Session, tenant_id: str, audit_id: str) -> ReportOut:
    """The audit with its model, dataset and cost: everything a report shows."""
    audit = get_audit(session=session, tenant_id=tenant_id, audit_id=audit_id)
    return ReportOut(
        audit=audit_out(audit),
        model=ModelOut.model_validate(model_json(audit.model)),
        dataset=DatasetOut.model_validate(dataset_json(audit.dataset)),
        estimate=estimate(audit),
    )


def compare_audits(
    *, session: Session, tenant_id: str, audit_ids: list[str], max_increase: float
) -> CompareOut:
    """The audits side by side, and each one's verdict against the first as the baseline."""
    if not 2 <= len(audit_ids) <= MAX_COMPARE:
        raise Problem(
            400, "Bad Request", f"name 2 to {MAX_COMPARE} audits: ?audits=BASELINE,ID,..."
        )
    # `latest:NAME` first: the newest audit of that name measured like the first candidate
    audit_ids = [baselines.resolve(session, tenant_id, audit_ids[0], audit_ids[1]), *audit_ids[1:]]
    audits = [get_audit(session=session, tenant_id=tenant_id, audit_id=i) for i in audit_ids]
    results = []
    for audit in audits:
        result = stored_result(audit)
        if audit.status != AuditStatus.SUCCEEDED.value or result is None:
            raise Problem(
                409,
                "Conflict",
                f"audit {audit.id} is {audit.status}; only succeeded audits compare",
            )
        results.append((audit, AuditConfig.from_stored(audit.config), result))
    baseline, base_config, base_result = results[0]
    return CompareOut(
        baseline=baseline.id,
        max_increase=max_increase,
        items=[_compare_item(a, config, result) for a, config, result in results],
        verdicts=[
            AuditVerdict(
                audit_id=audit.id,
                same_dataset=audit.dataset_id == baseline.dataset_id,
                **compare(
                    base_result,
                    result,
                    max_increase=max_increase,
                    baseline_config=base_config,
                    candidate_config=config,
                ).model_dump(),
            )
            for audit, config, result in results[1:]
        ],
    )


def _typed(stored: dict[str, Any] | None) -> AuditResult | None:
    """The stored result as the typed model; None (the report's raw parts only) if a row
    is too partial to read."""
    try:
        return AuditResult.model_validate(stored) if stored else None
    except ValidationError:
        return None


def _compare_item(audit: Audit, config: AuditConfig, result: AuditResult) -> CompareItem:
    """One audit of a comparison, without its per-sample values."""
    return CompareItem(
        id=audit.id,
        model=ModelRef(id=audit.model_id, name=audit.model.name, version=audit.model.version),
        dataset_id=audit.dataset_id,
        created_at=audit.created_at,
        config=config,
        per_epsilon=[e.model_copy(update={"per_sample": None}) for e in result.per_epsilon],
    )


def report_html(data: dict[str, Any], store: ArtifactStore) -> str:
    """A self-contained, printable HTML report: the verdict, the ε-sweep, the ψ histogram,
    per-class results, the most vulnerable samples and the landscapes, inlined as PNG.

    Rendered by service/templates/report.html with autoescaping on: a model, dataset or class
    name, an error or a note is always shown as text, whatever it holds.
    """
    audit = data["audit"]
    stored = audit.get("result")
    typed = _typed(stored)
    result = stored or {}
    diag = result.get("diagnostics", {})
    per_epsilon = result.get("per_epsilon", [])
    labels, space = _epsilon_units(result.get("manifest") or {}, data["model"], per_epsilon)
    config = audit["config"]
    manifest = typed.manifest if typed is not None else None
    names = (
        (manifest.class_names if manifest else None)
        or data["model"].get("class_names")
        or data["dataset"].get("class_names")
    )
    figures = typed.figures if typed is not None else None
    has_eps = typed is not None and bool(typed.per_epsilon)
    return _TEMPLATES.get_template("report.html").render(
        eps_labels=labels,
        space=space,
        audit=audit,
        model=data["model"],
        dataset=data["dataset"],
        config=config,
        result=result,
        per_epsilon=per_epsilon,
        diag=diag,
        warn=bool(diag.get("gradient_masking_suspected") or diag.get("degenerate")),
        degenerate_reason=(diag.get("degenerate") or {}).get("reason", ""),
        search=result.get("search") or {"algorithm": "pgd-kl/1 (recorded before versioning)"},
        notes=[*diag.get("evidence", []), *filter(None, [diag.get("blackbox_note")])],
        verdict=view.verdict(audit, typed, str(config.get("norm", ""))),
        succeeded=audit.get("status") == AuditStatus.SUCCEEDED.value and has_eps,
        sweep=view.data_uri(store, figures.sweep_png_sha256) if figures else None,
        histogram=view.data_uri(store, figures.histogram_png_sha256) if figures else None,
        classes=view.class_rows(typed, names) if typed is not None and has_eps else [],
        largest_eps=f"{view.largest(typed).epsilon:g}" if typed is not None and has_eps else "",
        vulnerable=view.vulnerable_rows(typed.vulnerable, names, store) if typed else [],
        landscapes=view.landscape_groups(typed.landscapes, names, store) if typed else [],
        identity=view.identity_rows(data, typed),
        manifest=json.dumps(result.get("manifest", {}), indent=2, sort_keys=True),
    )


def _epsilon_units(
    manifest: dict[str, Any], model: dict[str, Any], per_epsilon: list[dict[str, Any]]
) -> tuple[list[str], str]:
    """Each ε in the units it was measured in, and a sentence naming that space."""
    stored = manifest.get("preprocessing", model.get("preprocessing"))
    pre = None if stored is None else Preprocessing.model_validate(stored)
    value_range = manifest.get("input_range") or model.get("input_range")
    labels = [epsilon_label(p["epsilon"], value_range, pre) for p in per_epsilon]
    if pre is None:
        units = "units" if value_range is None else f"units, range {value_range}"
        space = (
            f"ε is in the model's input {units}: no preprocessing was declared, so the ball "
            "is in whatever space the graph takes."
        )
    else:
        space = f"ε is in pixel space: {pre.describe()}."
    return labels, space


# Autoescape everything: the templates are HTML, and every value in them is data.
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("service", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)
_TEMPLATES.filters["fmt"] = format
_TEMPLATES.filters["pct"] = view.pct
_TEMPLATES.filters["shown"] = view.shown

"""Reports, comparisons and metrics: read-only views over the audit history."""

from __future__ import annotations

import base64
import html
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from infra.dispatch import shown_status
from infra.persistence.models import Audit, AuditStatus, Dataset, Model
from infra.storage import ArtifactStore
from robustness.compare import compare
from service.audits import audit_json, estimate, get_audit
from service.catalog import dataset_json, model_json
from service.errors import Problem

MAX_COMPARE = 20


def report_data(*, session: Session, tenant_id: str, audit_id: str) -> dict[str, Any]:
    """The audit with its model, dataset and cost: everything a report shows."""
    audit = get_audit(session=session, tenant_id=tenant_id, audit_id=audit_id)
    return {
        "audit": audit_json(audit),
        "model": model_json(audit.model),
        "dataset": dataset_json(audit.dataset),
        "estimate": estimate(audit),
    }


def compare_audits(
    *, session: Session, tenant_id: str, audit_ids: list[str], max_increase: float
) -> dict[str, Any]:
    """The audits side by side, and each one's verdict against the first as the baseline."""
    if not 2 <= len(audit_ids) <= MAX_COMPARE:
        raise Problem(
            400, "Bad Request", f"name 2 to {MAX_COMPARE} audits: ?audits=BASELINE,ID,..."
        )
    audits = [get_audit(session=session, tenant_id=tenant_id, audit_id=i) for i in audit_ids]
    for audit in audits:
        if audit.status != AuditStatus.SUCCEEDED.value or audit.result is None:
            raise Problem(
                409,
                "Conflict",
                f"audit {audit.id} is {audit.status}; only succeeded audits compare",
            )
    baseline = audits[0]
    items = [
        {
            "id": a.id,
            "model": {"id": a.model_id, "name": a.model.name, "version": a.model.version},
            "dataset_id": a.dataset_id,
            "created_at": a.created_at.isoformat(),
            "config": a.config,
            "per_epsilon": [
                {k: v for k, v in e.items() if k != "per_sample"}
                for e in (a.result or {})["per_epsilon"]
            ],
        }
        for a in audits
    ]
    verdicts = []
    for audit in audits[1:]:
        outcome = compare(
            baseline.result or {},
            audit.result or {},
            max_increase=max_increase,
            baseline_config=baseline.config,
            candidate_config=audit.config,
        )
        same_data = audit.dataset_id == baseline.dataset_id
        verdicts.append({"audit_id": audit.id, "same_dataset": same_data, **outcome.to_dict()})
    return {
        "baseline": baseline.id,
        "max_increase": max_increase,
        "items": items,
        "verdicts": verdicts,
    }


def _audit_counts(session: Session, tenant_id: str) -> dict[str, int]:
    """Audits by the status the API shows: `running` only while one of its shards is
    leased (issue 10: /metrics said running 12 while 11 of them waited)."""
    status = shown_status()
    return {
        str(k): int(v)
        for k, v in session.execute(
            select(status, func.count()).where(Audit.tenant_id == tenant_id).group_by(status)
        ).all()
    }


def metrics_text(*, session: Session, tenant_id: str) -> str:
    """Prometheus text exposition of this tenant's audit counts, and its live models and
    datasets (soft-deleted ones are gone for the tenant, so they are not counted)."""
    lines = [
        "# HELP robaudit_audits Audits of this tenant by status.",
        "# TYPE robaudit_audits gauge",
    ]
    counts = _audit_counts(session, tenant_id)
    # Every status the rows hold, so a state added later (cancelling) is never hidden.
    statuses = [s.value for s in AuditStatus] + sorted(set(counts) - set(AuditStatus))
    for status in statuses:
        lines.append(f'robaudit_audits{{status="{status}"}} {counts.get(status, 0)}')
    for name, entity in (("models", Model), ("datasets", Dataset)):
        total = session.scalar(
            select(func.count())
            .select_from(entity)
            .where(entity.tenant_id == tenant_id, entity.deleted_at.is_(None))
        )
        lines += [f"# TYPE robaudit_{name} gauge", f"robaudit_{name} {total or 0}"]
    return "\n".join(lines) + "\n"


def report_html(data: dict[str, Any], store: ArtifactStore) -> str:
    """A self-contained HTML report: summary table, diagnostics, landscapes inlined as PNG."""
    audit, model, dataset = data["audit"], data["model"], data["dataset"]
    e = html.escape
    result = audit["result"] or {}
    rows = "".join(
        f"<tr><td>{p['epsilon']:g}</td><td>{p['divergence']['mean']:.5f}</td>"
        f"<td>[{p['divergence']['ci95'][0]:.5f}, {p['divergence']['ci95'][1]:.5f}]</td>"
        f"<td>{p['divergence']['median']:.5f}</td><td>{p['divergence']['p90']:.5f}</td>"
        f"<td>{p['divergence']['max']:.5f}</td><td>{_pct(p.get('clean_accuracy'))}</td>"
        f"<td>{_pct(p.get('fgsm_accuracy'))}</td><td>{_pct(p.get('pgd_accuracy'))}</td></tr>"
        for p in result.get("per_epsilon", [])
    )
    diag = result.get("diagnostics", {})
    convergence = _convergence_html(result)
    notes = [
        *diag.get("evidence", []),
        *([diag["blackbox_note"]] if diag.get("blackbox_note") else []),
    ]
    evidence = "".join(f"<li>{e(str(x))}</li>" for x in notes)
    pictures = "".join(
        f'<figure><img alt="landscape {k}" src="data:image/png;base64,'
        f'{base64.b64encode(store.path(ls["png_sha256"]).read_bytes()).decode()}">'
        f"<figcaption>sample {ls['sample_index']} (label {ls['label']})</figcaption></figure>"
        for k, ls in enumerate(result.get("landscapes", []))
        if ls.get("png_sha256") and store.path(ls["png_sha256"]).exists()
    )
    status = e(audit["status"]) + (f" — {e(audit['error'])}" if audit.get("error") else "")
    cfg = audit["config"]
    setting = (
        f"Dataset {e(dataset['name'])} ({dataset['n']} samples, "
        f"{result.get('samples', '—')} audited). Norm {e(cfg['norm'])}, {cfg['steps']} steps, "
        f"{cfg['restarts']} restart(s), logit normalization {e(cfg['logit_normalization'])}, "
        f"backend {e(str(audit.get('backend')))}."
    )
    warn = "warn" if diag.get("gradient_masking_suspected") or diag.get("degenerate") else ""
    masking = (
        f"Verdict: {e(str(result.get('verdict', 'measured')))}. "
        f"{e((diag.get('degenerate') or {}).get('reason', ''))} "
        f"Gradient masking suspected: {diag.get('gradient_masking_suspected')}. "
        f"Converter parity max |Δ|: {diag.get('parity_max_abs_diff')}."
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>robaudit report {e(audit["id"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
th{{background:#f4f4f4}}figure{{display:inline-block;margin:0 1rem 1rem 0}}img{{max-width:100%}}
.warn{{color:#a40}}</style></head><body>
<h1>Robustness audit of {e(model["name"])} {e(model.get("version") or "")}</h1>
<p>Status: <b>{status}</b>. {setting}</p>
<p>The metric is the upper bound of the prediction divergence KL(p(x)‖p(x')) inside the ε-ball
(Yu et al., IJCAI 2019). <b>Lower means more robust.</b></p>
<table><tr><th>ε</th><th>divergence mean</th><th>95% CI</th><th>median</th><th>p90</th><th>max</th>
<th>clean</th><th>FGSM</th><th>PGD</th></tr>{rows}</table>
<h2>Diagnostics</h2>
<p class="{warn}">{masking}</p>
{convergence}
<ul>{evidence}</ul>
<h2>Loss and decision surfaces</h2>{pictures or "<p>none</p>"}
<h2>Manifest</h2><pre>{e(_pretty(result.get("manifest", {})))}</pre>
</body></html>"""


def _convergence_html(result: dict[str, Any]) -> str:
    """Per ε: how much ψ still grew over the second half of the search, and a hint if it did."""
    search = result.get("search") or {"algorithm": "pgd-kl/1 (recorded before versioning)"}
    rows = []
    for p in result.get("per_epsilon", []):
        c = p.get("convergence")
        if c is None:
            rows.append(f"<tr><td>{p['epsilon']:g}</td><td colspan=4>not recorded</td></tr>")
            continue
        verdict = (
            "yes" if c["converged"] else f"<b class=warn>no</b>: try {c['suggested_steps']} steps"
        )
        rows.append(
            f"<tr><td>{p['epsilon']:g}</td><td>{c['psi_mean_half']:.5f}</td>"
            f"<td>{c['psi_mean']:.5f}</td><td>{100 * c['relative_gain']:+.1f}%</td>"
            f"<td>{verdict}</td></tr>"
        )
    return (
        f"<p>Search: {html.escape(str(search['algorithm']))}. Convergence: mean divergence after "
        "half of the search's steps and at its end.</p><table><tr><th>ε</th><th>ψ at half</th>"
        f"<th>ψ at end</th><th>growth</th><th>converged</th></tr>{''.join(rows)}</table>"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _pretty(value: object) -> str:
    import json

    return json.dumps(value, indent=2, sort_keys=True)

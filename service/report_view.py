"""What the HTML report shows, worked out from the report data (service/reports.py renders it).

Everything here is plain text, numbers or data: URIs; the template autoescapes all of it. A
missing value is shown as "—", never as Python's None.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from infra.storage import ArtifactStore
from robustness.results import AuditResult, EpsilonResult, LandscapeResult, VulnerableSample
from robustness.vulnerable import image_layout, unpack

MISSING = "—"


def shown(value: Any, spec: str = "") -> str:
    """A value as report text: "—" for None or an empty string, else format(value, spec)."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


def class_name(names: Sequence[str] | None, label: int) -> str:
    """The uploaded name of a class, with its index; the index alone if none was given."""
    if names and 0 <= label < len(names) and str(names[label]).strip():
        return f"{names[label]} ({label})"
    return f"class {label}"


def data_uri(store: ArtifactStore, sha256: str | None) -> str | None:
    """A stored PNG as a data: URI (the report needs no other request), or None if absent."""
    path = store.path(sha256) if sha256 else None
    if path is None or not path.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def largest(result: AuditResult) -> EpsilonResult:
    return max(result.per_epsilon, key=lambda e: e.epsilon)


def verdict(audit: dict[str, Any], result: AuditResult | None, norm: str) -> str:
    """One sentence a reviewer reads first."""
    status = audit.get("status") or "unknown"
    if status == "cancelled":
        return "This audit was cancelled before it finished, so it has no results."
    if status == "failed":
        return f"This audit failed and has no results: {shown(audit.get('error'))}."
    if status != "succeeded" or result is None or not result.per_epsilon:
        progress = audit.get("progress") or {}
        done, total = progress.get("done"), progress.get("total")
        where = f" ({done} of {total} units done)" if done is not None and total else ""
        return f"This audit is {status}{where}; its results appear once it has succeeded."
    degenerate = result.degenerate
    if degenerate is not None:
        return f"The divergence says nothing about robustness here: {degenerate.reason}."
    top = largest(result)
    d = top.divergence
    text = (
        f"At the largest ε = {top.epsilon:g} ({norm}), the mean prediction divergence is "
        f"{d.mean:.4g} (95% CI {d.ci95[0]:.4g}–{d.ci95[1]:.4g}; lower is more robust)"
    )
    if top.clean_accuracy is not None and top.pgd_accuracy is not None:
        text += (
            f" and PGD accuracy is {pct(top.pgd_accuracy)} against {pct(top.clean_accuracy)} clean"
        )
    if result.diagnostics.gradient_masking_suspected:
        text += "; gradient masking is suspected, so these numbers may be optimistic"
    return text + "."


def class_rows(result: AuditResult, names: Sequence[str] | None) -> list[dict[str, str]]:
    """Per true class at the largest ε, the most divergent class first."""
    top = largest(result)
    rows = sorted(top.per_class or (), key=lambda c: (-c.divergence_mean, c.label))

    def acc(correct: int | None, n: int) -> str:
        return pct(None if correct is None or n == 0 else correct / n)

    return [
        {
            "name": class_name(names, c.label),
            "samples": str(c.samples),
            "divergence": f"{c.divergence_mean:.5f}",
            "clean": acc(c.clean_correct, c.samples),
            "fgsm": acc(c.fgsm_correct, c.samples),
            "pgd": acc(c.pgd_correct, c.samples),
        }
        for c in rows
    ]


def vulnerable_rows(
    samples: Sequence[VulnerableSample], names: Sequence[str] | None, store: ArtifactStore
) -> list[dict[str, Any]]:
    """The most vulnerable samples with their pictures and predictions before and after."""
    return [
        {
            "src": data_uri(store, v.png_sha256),
            "sample": v.sample_index,
            "epsilon": f"{v.epsilon:g}",
            "divergence": f"{v.divergence:.4g}",
            "label": class_name(names, v.label),
            "before": f"{class_name(names, v.clean_prediction)}, {pct(v.clean_probability)}",
            "after": f"{class_name(names, v.perturbed_prediction)}, {pct(v.perturbed_probability)}",
            "flipped": v.clean_prediction != v.perturbed_prediction,
            "thinned": v.stride > 1 or v.shape != v.input_shape,
            "panels": _panels(v),
        }
        for v in samples
    ]


def _panels(sample: VulnerableSample) -> str:
    """What the sample's picture shows, left to right (images) or top to bottom (features)."""
    layout = image_layout(sample.shape)
    if layout is None:
        return "Top: clean and worst perturbed feature values; bottom: the perturbation x' − x."
    reach = float(np.abs(unpack(sample.perturbation, sample.shape)).max())
    gain = f"×{1 / reach:.3g}" if reach > 0 else "(none)"
    colours = "grey: 0" if layout[0] == 3 else "white: 0, blue: +, red: −"
    return f"Left to right: clean, worst perturbed, perturbation {gain} ({colours})."


def landscape_groups(
    landscapes: Sequence[LandscapeResult], names: Sequence[str] | None, store: ArtifactStore
) -> list[dict[str, Any]]:
    """The landscapes by ε (ascending), each with its picture and its boundary caption."""
    groups: dict[float, list[dict[str, Any]]] = {}
    for k, ls in enumerate(landscapes):
        groups.setdefault(ls.epsilon, []).append(
            {
                "index": k,
                "src": data_uri(store, ls.png_sha256),
                "sample": ls.sample_index,
                "label": class_name(names, ls.label),
                "caption": ls.boundary_caption(),
                "inside": pct(ls.misclassified_fraction_inside_eps),
            }
        )
    return [{"epsilon": f"{eps:g}", "items": groups[eps]} for eps in sorted(groups)]


def identity_rows(data: dict[str, Any], result: AuditResult | None) -> list[tuple[str, str]]:
    """Ids, dates and versions: what a reviewer cites."""
    audit, model, dataset = data["audit"], data["model"], data["dataset"]
    manifest = result.manifest if result is not None else None
    rows = [
        ("audit", shown(audit.get("id"))),
        ("status", shown(audit.get("status"))),
        ("created", shown(audit.get("created_at"))),
        ("started", shown(audit.get("started_at"))),
        ("finished", shown(audit.get("finished_at"))),
        ("model", f"{shown(model.get('name'))} {model.get('version') or ''} "
                  f"(id {shown(model.get('id'))})".replace("  ", " ")),
        ("model sha256", shown(model.get("sha256"))),
        ("dataset", f"{shown(dataset.get('name'))} (id {shown(dataset.get('id'))})"),
        ("dataset sha256", shown(dataset.get("sha256"))),
        ("backend", shown(audit.get("backend"))),
    ]  # fmt: skip
    if manifest is not None:
        rows += [
            ("config hash", shown(manifest.config_hash)),
            ("device", shown(manifest.device)),
            ("shards", shown(manifest.shards)),
        ]
        rows += [(f"version: {k}", v) for k, v in sorted((manifest.versions or {}).items())]
    return rows

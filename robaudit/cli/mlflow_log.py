"""`robaudit mlflow-log AUDIT_ID`: an audit's numbers and report into an MLflow run.

Needs the `mlflow` extra (`pip install 'robaudit[mlflow]'`, mlflow-skinny), imported only
here. The tracking server is `--tracking-uri`, else MLflow's own MLFLOW_TRACKING_URI.

What is logged, so that runs of several audits line up in MLflow's charts:
- metrics, per ε in the key (`eps_0.03/divergence_mean`, `…/divergence_ci95_low`, `…_high`,
  `…/clean_accuracy`, `…/fgsm_accuracy`, `…/pgd_accuracy`) and `samples`;
- params under `robaudit.`: every audit config field, the model's name, version and sha256,
  the dataset's id and sha256, the backend and the audit id;
- the HTML report as the artifact `robaudit/report-<id>.html`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from robaudit.cli.common import Subparsers, emit, fail
from robaudit.client import ApiError, Client

MISSING_EXTRA = (
    "robaudit mlflow-log needs the mlflow extra: pip install 'robaudit[mlflow]' (mlflow-skinny)"
)
PREFIX = "robaudit."
BATCH = 100  # MLflow takes at most 100 params in one call


def register(sub: Subparsers) -> None:
    cmd = sub.add_parser(
        "mlflow-log", help="log an audit's metrics, params and report to an MLflow run (client)"
    )
    cmd.add_argument("audit_id", help="the audit's id (a succeeded one)")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--run-id", help="log into this existing run (default: a new run)")
    where.add_argument(
        "--experiment",
        default="robaudit",
        help="the experiment of the new run, created if missing (default: robaudit)",
    )
    cmd.add_argument(
        "--tracking-uri",
        help="the MLflow tracking server or store, e.g. sqlite:///mlflow.db "
        "(default: MLFLOW_TRACKING_URI)",
    )
    cmd.set_defaults(handler=cmd_mlflow_log)


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """Per-ε metrics, ε in the key; absent accuracies (a baseline not run) are left out."""
    out: dict[str, float] = {"samples": float(result["samples"])}
    for item in result["per_epsilon"]:
        key = f"eps_{item['epsilon']:g}"
        d = item["divergence"]
        values = {
            "divergence_mean": d["mean"],
            "divergence_ci95_low": d["ci95"][0],
            "divergence_ci95_high": d["ci95"][1],
            "clean_accuracy": item.get("clean_accuracy"),
            "fgsm_accuracy": item.get("fgsm_accuracy"),
            "pgd_accuracy": item.get("pgd_accuracy"),
        }
        out.update({f"{key}/{k}": float(v) for k, v in values.items() if v is not None})
    return out


def params_of(report: dict[str, Any]) -> dict[str, str]:
    audit, model, dataset = report["audit"], report["model"], report["dataset"]
    params = {f"config.{k}": v for k, v in _flat(audit["config"]).items()}
    params.update(
        {
            "audit_id": audit["id"],
            "backend": audit.get("backend"),
            "model.id": model["id"],
            "model.name": model["name"],
            "model.version": model.get("version"),
            "model.sha256": model["sha256"],
            "dataset.id": dataset["id"],
            "dataset.sha256": dataset["sha256"],
        }
    )
    return {PREFIX + k: _text(v) for k, v in params.items() if v is not None}


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def cmd_mlflow_log(args: argparse.Namespace) -> int:
    try:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        return fail(MISSING_EXTRA)
    try:
        with Client.from_env() as api:
            report = api.get(f"/v1/audits/{quote(args.audit_id, safe='')}/report.json")
            audit = report["audit"]
            if audit["status"] != "succeeded":
                return fail(f"audit {audit['id']} is {audit['status']}; only succeeded ones log")
            html = api.report(audit["id"])
    except (ApiError, OSError) as exc:
        return fail(str(exc))
    try:
        ml = MlflowClient(tracking_uri=args.tracking_uri)
        run_id, created = _run(ml, args, audit["id"])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in metrics_of(audit["result"]).items()]
        params = [Param(k, v) for k, v in params_of(report).items()]
        for start in range(0, max(len(params), len(metrics)), BATCH):
            ml.log_batch(
                run_id, metrics=metrics[start : start + BATCH], params=params[start : start + BATCH]
            )
        ml.set_tag(run_id, f"{PREFIX}verdict", str(audit["result"].get("verdict")))
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / f"report-{audit['id']}.html"
            page.write_bytes(html)
            ml.log_artifact(run_id, str(page), artifact_path="robaudit")
        if created:
            ml.set_terminated(run_id)
    except MlflowException as exc:
        return fail(f"MLflow: {exc.message}")
    emit(run_id)
    return 0


def _run(ml: Any, args: argparse.Namespace, audit_id: str) -> tuple[str, bool]:
    """The run to log into, and whether this command created it."""
    if args.run_id:
        return str(ml.get_run(args.run_id).info.run_id), False
    experiment = ml.get_experiment_by_name(args.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else ml.create_experiment(args.experiment)
    )
    run = ml.create_run(experiment_id, run_name=f"robaudit {audit_id[:8]}")
    return str(run.info.run_id), True

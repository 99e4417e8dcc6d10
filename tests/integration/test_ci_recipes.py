"""The README's recipes and the CI examples in docs/examples/ run, line for line, under
`bash -euo pipefail` against the real app on a real port: the pipeline's submit, wait,
report, and gate against `latest:NAME`, leaving a JUnit file that CI uploads; and the API's
curl calls. (Every other shell block of the README is checked in tests/unit/test_readme.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.orm import Session

from robaudit.cli import main
from tests import services
from tests.integration.test_cli_client import _succeed, env, on_disk  # noqa: F401 (fixtures)
from tests.unit.test_readme import recipes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
MODEL_NAME = "digits-cnn"  # what the recipes audit under


def readme_recipes() -> dict[str, str]:
    """README's whole scripts (the shell blocks that start with `set -euo pipefail`), by what
    they show: each one must be run by a test here."""
    found: dict[str, str] = {}
    for block in recipes():
        kind = "gate" if "robaudit gate" in block else "api" if "/v1/audits" in block else ""
        assert kind, f"a README recipe that no test runs:\n{block}"
        assert kind not in found, f"two README recipes of one kind:\n{block}"
        found[kind] = block
    assert found.keys() == {"gate", "api"}
    return found


def github_recipe() -> tuple[str, dict]:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    job = workflow["jobs"]["robustness"]
    [gate] = [s for s in job["steps"] if "robaudit gate" in s.get("run", "")]
    assert gate["shell"] == "bash"
    [upload] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert upload["if"] == "always()"  # the JUnit file also when the gate fails
    assert "robustness.xml" in upload["with"]["path"]
    return gate["run"], job["env"]


def gitlab_recipe() -> tuple[str, dict]:
    job = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())["robustness"]
    assert job["artifacts"]["reports"]["junit"] == "robustness.xml"
    assert job["artifacts"]["when"] == "always"
    return "\n".join(job["script"]), job["variables"]


def _submit(model: Path, data: Path, *flags: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["submit", str(model), str(data), "--name", MODEL_NAME, *flags]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_readme_and_ci_examples_gate_under_pipefail(
    env: dict[str, str],  # noqa: F811
    on_disk: tuple[Path, Path],  # noqa: F811
    db_session: Session,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = on_disk  # model.onnx and holdout.npz, the names the recipes use
    # An older audit of the name, measured alike (the seed is no part of the threat model),
    # then the audits the recipes' `submit` finds already succeeded, so `--wait` ends at once:
    # the CI examples upload the commit as the model's version, the README's recipe none, and
    # a version is part of a model's metadata, so those are two models (versions) of the name.
    baseline = _submit(model, data, "--eps", "0.03", "--seed", "1", capsys=capsys)
    _succeed(db_session, baseline)
    versioned = _submit(model, data, "--eps", "0.03", "--version", "0" * 40, capsys=capsys)
    _succeed(db_session, versioned)
    _succeed(db_session, _submit(model, data, "--eps", "0.03", capsys=capsys))

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "robaudit"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m robaudit "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    github, github_env = github_recipe()
    gitlab, gitlab_vars = gitlab_recipe()
    # `latest:NAME` is the newest older audit measured alike: for the README's (the newest
    # audit) that is the CI examples' version, for theirs the seed-1 baseline.
    recipes = {
        "README": (readme_recipes()["gate"], {}, versioned),
        "GitHub": (github, {"MODEL_NAME": github_env["MODEL_NAME"]}, baseline),
        "GitLab": (gitlab, {"MODEL_NAME": gitlab_vars["MODEL_NAME"]}, baseline),
    }
    for where, (script, extra, older) in recipes.items():
        outputs = tmp_path / f"{where}.out"
        run_env = {
            **os.environ,
            **env,
            **extra,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "GITHUB_SHA": "0" * 40,
            "CI_COMMIT_SHA": "0" * 40,
            "GITHUB_OUTPUT": str(outputs),
        }
        (tmp_path / "robustness.xml").unlink(missing_ok=True)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=run_env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (where, done.stderr)
        assert "Broken pipe" not in done.stderr
        junit = (tmp_path / "robustness.xml").read_text()
        assert 'failures="0" errors="0"' in junit, where
        assert 'tests="0"' not in junit
        assert f"vs {older}" in junit, where  # latest:NAME found the older audit
        assert (tmp_path / "robustness.html").read_text().lstrip().lower().startswith("<!doctype")
        if where == "GitHub":
            assert outputs.read_text() == f"audit_id={versioned}\n"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_readme_api_recipe_under_pipefail(
    env: dict[str, str],  # noqa: F811
    on_disk: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    if not (shutil.which("curl") and shutil.which("jq")):
        services.unavailable("the README's API recipe runs curl and jq; install both")
    # As after `robaudit up` in this folder: the key in its file, not in the environment.
    (tmp_path / ".robaudit").mkdir()
    (tmp_path / ".robaudit" / "dev-api-key").write_text(env["ROBAUDIT_API_KEY"] + "\n")
    run_env = {k: v for k, v in os.environ.items() if k != "ROBAUDIT_API_KEY"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_recipes()["api"]],
        cwd=tmp_path,  # model.onnx and holdout.npz, the names the recipe uploads
        env={**run_env, "ROBAUDIT_URL": env["ROBAUDIT_URL"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    audit, end = decoder.raw_decode(done.stdout)  # GET /v1/audits/$AUDIT_ID
    listed, _ = decoder.raw_decode(done.stdout[end:].lstrip())  # the filtered history
    assert audit["status"] == "queued"  # no worker runs in this test
    assert audit["config"]["epsilons"] == [0.03, 0.06]
    assert listed["items"] == []  # none of resnet's audits has succeeded

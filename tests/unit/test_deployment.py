"""docker-compose.yml, the Dockerfiles and the import rules agree with the code.

No docker engine runs here, so the compose file is parsed and checked against the CLI and
the configuration it drives.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.config import ENV_VARS
from robaudit.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_the_designed_services() -> None:
    assert set(SERVICES) == {"api", "worker", "worker-control", "redis", "postgres", "migrate"}


def test_control_and_compute_queues_are_split_and_both_consumed() -> None:
    def queues(name: str) -> str:
        command = SERVICES[name]["command"]
        return str(_parser().parse_args(command[1:]).queues)

    assert queues("worker") == "compute"  # the GPU worker runs shards only
    assert queues("worker-control") == "control"
    assert "deploy" not in SERVICES["worker-control"]  # control work needs no GPU


@pytest.mark.parametrize("name", ["api", "worker", "worker-control", "migrate"])
def test_commands_are_real_cli_commands(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[0] == "robaudit"
    args = _parser().parse_args(command[1:])  # exits (fails the test) on an unknown command
    assert hasattr(args, "handler")


@pytest.mark.parametrize("name", ["api", "worker", "worker-control", "migrate"])
def test_environment_names_are_ones_the_code_reads(name: str) -> None:
    env = SERVICES[name]["environment"]
    assert set(env) <= set(ENV_VARS), set(env) - set(ENV_VARS)
    assert {"DATABASE_URL", "REDIS_URL"} <= set(env)


def test_every_declared_variable_is_read_somewhere() -> None:
    source = "\n".join(
        p.read_text()
        for d in ("infra", "service", "worker", "robaudit")
        for p in (ROOT / d).rglob("*.py")
    )
    for var in ENV_VARS:
        assert re.search(rf'"{var}"', source.replace("ENV_VARS", "")), var


def test_worker_reserves_a_gpu_and_api_image_has_no_torch() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert SERVICES["worker"]["environment"]["ROBAUDIT_DEVICE"] == "cuda"
    api_dockerfile = (ROOT / SERVICES["api"]["build"]["dockerfile"]).read_text()
    assert "pip install ." in api_dockerfile
    assert "[gpu]" in (ROOT / SERVICES["worker"]["build"]["dockerfile"]).read_text()


def test_redis_is_append_only_and_postgres_is_health_checked() -> None:
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_import_contracts_hold() -> None:
    """architecture.md's import rules, checked by import-linter (contracts in pyproject.toml)."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_api_builds_and_answers_without_torch_or_onnxruntime(tmp_path: Path) -> None:
    """The API image installs neither; import-linter checks statically, this at run time."""
    script = f"""
import sys
for name in ("torch", "onnxruntime", "onnx2pytorch", "onnxslim", "matplotlib"):
    sys.modules[name] = None  # any import of them now raises
from pathlib import Path
from service.app import create_app
from infra.config import Settings
settings = Settings(data_dir=Path({str(tmp_path)!r}), database_url="sqlite:///{tmp_path}/x.db")
client = create_app({{"ROBAUDIT_SETTINGS": settings}}).test_client()
assert client.get("/healthz").status_code == 200
assert client.get("/openapi.json").status_code == 200
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

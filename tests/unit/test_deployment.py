"""docker-compose.yml, the Dockerfiles and the import rules agree with the code.

No docker engine runs here, so the compose file is parsed and checked against the CLI and
the configuration it drives.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.config import Settings, variables
from robaudit.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_the_designed_services() -> None:
    assert set(SERVICES) == {"api", "worker", "worker-control", "redis", "postgres", "migrate"}


def test_control_and_compute_queues_are_split_and_both_consumed() -> None:
    def queues(name: str) -> str:
        command = SERVICES[name]["command"]
        return str(build_parser().parse_args(command[1:]).queues)

    assert queues("worker") == "compute"  # the GPU worker runs shards only
    assert queues("worker-control") == "control"
    assert "deploy" not in SERVICES["worker-control"]  # control work needs no GPU


@pytest.mark.parametrize("name", ["api", "worker", "worker-control", "migrate"])
def test_commands_are_real_cli_commands(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[0] == "robaudit"
    args = build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown command
    assert hasattr(args, "handler")


@pytest.mark.parametrize("name", ["api", "worker", "worker-control", "migrate"])
def test_compose_environment_is_settings_the_code_accepts(name: str) -> None:
    env = {key: str(value) for key, value in SERVICES[name]["environment"].items()}
    assert set(env) <= set(variables()), set(env) - set(variables())
    assert {"DATABASE_URL", "REDIS_URL"} <= set(env)
    Settings.from_env(env)  # raises SettingsError on a value the setting does not allow


def test_dockerfile_environment_is_settings_the_code_accepts() -> None:
    for dockerfile in (ROOT / "docker").glob("Dockerfile*"):
        lines = re.findall(r"^ENV\s+(.+)$", dockerfile.read_text(), re.M)
        env = dict(pair.split("=", 1) for line in lines for pair in line.split())
        ours = {k: v for k, v in env.items() if ENV_NAME.match(k)}
        assert set(ours) <= set(variables()), (dockerfile.name, set(ours) - set(variables()))
        Settings.from_env(ours)


# robaudit's own variables; OMP_NUM_THREADS and the like belong to libraries
ENV_NAME = re.compile(r"^(ROBAUDIT_[A-Z0-9_]+|DATABASE_URL|REDIS_URL)$")
PRODUCT = ("infra", "service", "worker", "robaudit", "robustness")


def environment_reads(source: str) -> list[str]:
    """robaudit variables that `source` reads from os.environ itself: `os.environ[...]`,
    `os.environ.get(...)`, `os.getenv(...)` (also as bare `environ`/`getenv`). Copies
    handed to a child process (`dict(os.environ)`) and writes are not reads of a setting."""
    found = []
    for node in ast.walk(ast.parse(source)):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice if _is_environ(node.value) else None
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            getter = isinstance(func, ast.Attribute) and func.attr in ("get", "pop")
            on_environ = isinstance(func, ast.Attribute) and _is_environ(func.value)
            if (getter and on_environ) or _names(func) in ("getenv", "os.getenv"):
                key = node.args[0]
        if isinstance(key, ast.Constant) and ENV_NAME.match(str(key.value)):
            found.append(str(key.value))
    return found


def _names(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_names(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _is_environ(node: ast.expr) -> bool:
    return _names(node) in ("os.environ", "environ")


def test_the_scan_finds_every_form_of_reading_a_variable() -> None:
    source = """
import os
from os import environ, getenv
a = os.environ.get("ROBAUDIT_SHARD_SIZE", "1")
b = os.environ["DATABASE_URL"]
c = os.getenv("REDIS_URL")
d = environ.get("ROBAUDIT_NEW")
e = getenv("ROBAUDIT_OTHER")
os.environ["ROBAUDIT_DATA_DIR"] = "/x"  # a write, for a child: not a read
env = dict(os.environ)
f = env.get("ROBAUDIT_QUEUE")  # a copy's lookup is not os.environ
g = os.environ.get("HOME")
"""
    assert environment_reads(source) == [
        "ROBAUDIT_SHARD_SIZE",
        "DATABASE_URL",
        "REDIS_URL",
        "ROBAUDIT_NEW",
        "ROBAUDIT_OTHER",
    ]


def test_only_the_settings_class_reads_robaudit_variables() -> None:
    """A variable read anywhere else escapes validation, the README table and compose checks."""
    config = ROOT / "infra" / "config.py"
    reads = {
        f"{path.relative_to(ROOT)}: {name}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if path != config
        for name in environment_reads(path.read_text())
    }
    assert not reads, sorted(reads)


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

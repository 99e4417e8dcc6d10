"""docker-compose.yml, the Dockerfiles and the import rules agree with the code.

No docker engine runs here, so the compose file is parsed and checked against the CLI and
the configuration it drives.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.config import Settings, variables
from robaudit.cli import build_parser
from worker import liveness
from worker.celery_app import app as worker_app
from worker.tasks import run_audit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Which lock each image installs, and which of pyproject's dependency sets it must satisfy.
IMAGE_LOCKS = {"docker/Dockerfile.api": "api.lock", "docker/Dockerfile.worker": "worker-gpu.lock"}
LOCK_EXTRAS = {"api.lock": [], "worker-gpu.lock": ["gpu"], "dev.lock": ["worker", "dev"]}


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A `make lock` file: canonical name -> (pinned version, its sha256 hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in path.read_text().replace("\\\n", " ").splitlines():
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        requirement, *hashes = entry.split("--hash=sha256:")
        req = Requirement(requirement.strip())
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {req} is not pinned"
        pins[canonicalize_name(req.name)] = (spec.version, [h.strip() for h in hashes])
    return pins


def dockerfile_steps(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    steps = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            steps.append((instruction.upper(), " ".join(args.split())))
    return steps


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
PRODUCT = ("infra", "service", "worker", "robaudit", "robustness", "migrations")


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


def test_worker_reserves_a_gpu_and_the_api_image_has_no_torch() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert SERVICES["worker"]["environment"]["ROBAUDIT_DEVICE"] == "cuda"
    api, gpu = read_lock(LOCKS / "api.lock"), read_lock(LOCKS / "worker-gpu.lock")
    assert not {"torch", "onnxruntime", "onnxruntime-gpu", "onnx2pytorch"} & set(api)
    assert {"torch", "onnxruntime-gpu"} <= set(gpu)
    assert "onnxruntime" not in gpu  # the CPU build would shadow the CUDA one


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


@pytest.mark.parametrize(("dockerfile", "lock"), IMAGE_LOCKS.items())
def test_images_install_the_lock_in_a_layer_before_the_source(dockerfile: str, lock: str) -> None:
    steps = dockerfile_steps(ROOT / dockerfile)
    deps = steps.index(("RUN", f"pip install --require-hashes -r requirements/{lock}"))
    project = steps.index(("RUN", "pip install --no-deps --no-build-isolation ."))
    copies = {i: args.split()[0] for i, (op, args) in enumerate(steps) if op in ("COPY", "ADD")}
    # Only the lock is in the image when the wheels are installed, so a code edit keeps that
    # layer cached; the source follows, and the project goes in last, without dependencies.
    assert [src for i, src in copies.items() if i < deps] == [f"requirements/{lock}"]
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert {src for i, src in copies.items() if deps < i < project} >= packages | {"pyproject.toml"}
    assert not [src for i, src in copies.items() if i > project]


def test_every_service_image_is_one_of_the_locked_dockerfiles() -> None:
    built = {s["build"]["dockerfile"] for s in SERVICES.values() if "build" in s}
    assert built == set(IMAGE_LOCKS)


@pytest.mark.parametrize("lock", LOCK_EXTRAS)
def test_locks_pin_every_declared_dependency_with_hashes(lock: str) -> None:
    """Fails when pyproject.toml gains or tightens a dependency and nobody ran `make lock`."""
    pins = read_lock(LOCKS / lock)
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *PYPROJECT["build-system"]["requires"]]
    for extra in LOCK_EXTRAS[lock]:
        declared += project["optional-dependencies"][extra]
    for line in declared:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req.name}: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock}: {req} vs {pins[name][0]}"
        )
    assert all(hashes for _, hashes in pins.values()), f"{lock} has a pin without a hash"


@pytest.mark.parametrize("lock", ["api.lock", "worker-gpu.lock"])
def test_images_run_the_versions_the_tests_ran(lock: str) -> None:
    tested = read_lock(LOCKS / "dev.lock")
    image = read_lock(LOCKS / lock)
    differ = {
        n: (v, tested[n][0]) for n, (v, _) in image.items() if n in tested and tested[n][0] != v
    }
    assert not differ


def _seconds(duration: str) -> float:
    """Compose's duration syntax as used here: 40s, 11m, 1m30s."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert duration, "an empty duration"
    assert parts is not None, duration
    return 60 * int(parts[1] or 0) + int(parts[2] or 0)


def test_container_health_is_liveness_and_services_come_back() -> None:
    api_check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert "/healthz" in api_check
    assert "/readyz" not in api_check  # it fails while the broker is down, by design
    for name in ("api", "worker", "worker-control", "redis", "postgres"):
        assert SERVICES[name]["restart"] in ("always", "unless-stopped", "on-failure"), name
    assert SERVICES["migrate"]["restart"] == "no"  # a one-shot; the others wait on its success


def test_grace_periods_cover_what_a_stopping_process_must_finish() -> None:
    # gunicorn's default graceful timeout for in-flight requests is 30 s.
    assert _seconds(SERVICES["api"]["stop_grace_period"]) > 30
    # A compute worker stops its shard at the next heartbeat check and gives it back.
    heartbeat_s = float(SERVICES["worker"]["environment"].get("ROBAUDIT_HEARTBEAT_S", 2))
    assert _seconds(SERVICES["worker"]["stop_grace_period"]) >= 10 * heartbeat_s
    # A control worker finishes its running task: planning is capped by its time limit.
    assert _seconds(SERVICES["worker-control"]["stop_grace_period"]) > run_audit.time_limit


def test_worker_health_is_the_liveness_file_of_a_module_the_worker_loads() -> None:
    for name in ("worker", "worker-control"):
        assert SERVICES[name]["healthcheck"]["test"] == ["CMD", "python", "-m", liveness.__name__]
    assert liveness.__name__ in worker_app.conf.include  # else nothing ever writes the file


def test_liveness_file_is_fresh_while_beating_and_stale_after(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    assert not liveness.is_fresh(alive)  # a worker that never started is not healthy
    beat = threading.Thread(target=liveness.beat_forever, args=(alive, 0.01), daemon=True)
    beat.start()
    try:
        while not alive.exists():
            beat.join(0.01)
        assert liveness.is_fresh(alive)
    finally:
        liveness._stop.set()
        beat.join()
        liveness._stop.clear()
    old = alive.stat().st_mtime - 2 * liveness.STALE_AFTER_S
    os.utime(alive, (old, old))
    assert not liveness.is_fresh(alive)  # a hung worker stops touching the file

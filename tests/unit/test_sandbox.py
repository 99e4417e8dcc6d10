"""The sandbox runs untrusted-model work in a child it can limit, stop and kill (SECURITY.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import landlock
from infra.sandbox import (
    ChildFailed,
    ChildRaised,
    LimitExceeded,
    Limits,
    Sandbox,
    Stopped,
    run_sandboxed,
)
from tests import services

T = "tests.sandbox_targets:"
LIMITS = Limits(memory_bytes=3 << 30, cpu_seconds=60, wall_seconds=60)
needs_landlock = pytest.mark.skipif(landlock.abi() == 0, reason="kernel without Landlock")


def test_value_and_events_come_back_and_the_child_sees_no_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret@db/robaudit")
    monkeypatch.setenv("ROBAUDIT_API_KEY", "secret-key")
    events: list[dict[str, int]] = []
    with Sandbox(LIMITS) as sandbox:
        value = sandbox.call(T + "echo", {"events": 3, "n": 1.5}, on_event=events.append)
        workdir = Path(value["cwd"])
        assert workdir.is_dir()
        assert [p.name for p in workdir.iterdir()] == [".code"]  # only the import links
    assert value["echo"] == {"events": 3, "n": 1.5}
    assert events == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert not any("secret" in v for v in value["env"].values())
    assert {"DATABASE_URL", "REDIS_URL", "ROBAUDIT_API_KEY"}.isdisjoint(value["env"])
    assert value["env"]["HOME"] == str(workdir)
    assert not workdir.exists()  # closed: the working directory is gone


def test_an_exception_comes_back_by_name_and_the_child_is_kept() -> None:
    with Sandbox(LIMITS) as sandbox:
        first = sandbox.call(T + "echo", {})["pid"]
        with pytest.raises(ChildRaised) as raised:
            sandbox.call(T + "fail", {"message": "bad graph"})
        assert (raised.value.kind, raised.value.message) == ("ValueError", "bad graph")
        assert sandbox.call(T + "echo", {})["pid"] == first


def test_the_child_is_reused_only_for_the_same_readable_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    with Sandbox(LIMITS) as sandbox:
        one = sandbox.call(T + "echo", {}, readable=[a])["pid"]
        assert sandbox.call(T + "echo", {}, readable=[a])["pid"] == one
        assert sandbox.call(T + "echo", {}, readable=[b])["pid"] != one


def test_memory_cap() -> None:
    limits = Limits(memory_bytes=1 << 30, cpu_seconds=60, wall_seconds=60)
    with pytest.raises(LimitExceeded) as hit:
        run_sandboxed(T + "allocate", {"mib": 2048}, limits=limits)
    assert hit.value.limit == "memory"
    assert "1.00 GiB of memory" in str(hit.value)


def test_cpu_and_wall_limits() -> None:
    with pytest.raises(LimitExceeded) as cpu:
        run_sandboxed(T + "spin", {"seconds": 60}, limits=Limits(cpu_seconds=0.5))
    assert cpu.value.limit == "cpu"
    assert "0.5 s of CPU time" in str(cpu.value)
    with pytest.raises(LimitExceeded) as wall:
        run_sandboxed(T + "sleep", {"seconds": 60}, limits=Limits(wall_seconds=0.5))
    assert wall.value.limit == "wall"


def test_limits_hold_for_a_chatty_child_and_for_an_answer_that_comes_late() -> None:
    with pytest.raises(LimitExceeded) as chatty:  # events every 10 ms, polls every 200 ms
        run_sandboxed(T + "chatter", {"seconds": 60}, limits=Limits(wall_seconds=0.5))
    assert chatty.value.limit == "wall"
    with pytest.raises(LimitExceeded) as late:  # answers before the first poll, but too late
        run_sandboxed(T + "sleep", {"seconds": 0.1}, limits=Limits(wall_seconds=0.02))
    assert late.value.limit == "wall"


def test_should_stop_kills_a_busy_child() -> None:
    seen: list[dict[str, bool]] = []
    start = time.monotonic()
    with pytest.raises(Stopped):
        run_sandboxed(
            T + "sleep",
            {"seconds": 60},
            limits=LIMITS,
            on_event=seen.append,
            should_stop=lambda: bool(seen),
        )
    assert seen == [{"sleeping": True}]
    assert time.monotonic() - start < 30  # cut short: the call asked for 60 s


def test_a_crash_is_reported_with_its_signal() -> None:
    with pytest.raises(ChildFailed) as failed:
        run_sandboxed(T + "die", {}, limits=LIMITS)
    assert failed.value.returncode == -signal.SIGSEGV
    assert "SIGSEGV" in str(failed.value)


@needs_landlock
def test_files_outside_the_given_paths_and_tcp_are_denied(tmp_path: Path) -> None:
    canary, given = tmp_path / "canary", tmp_path / "model.onnx"
    canary.write_text("secret")
    given.write_text("model")
    with Sandbox(LIMITS) as sandbox:
        assert sandbox.call(T + "read_file", {"path": str(given)}, readable=[given]) == "model"
        for path in (str(canary), "/etc/shadow", str(Path(__file__).parents[2] / "pyproject.toml")):
            with pytest.raises(ChildRaised) as denied:
                sandbox.call(T + "read_file", {"path": path}, readable=[given])
            assert denied.value.kind == "PermissionError"
        with pytest.raises(ChildRaised) as relative:  # cwd is an empty directory
            sandbox.call(T + "read_file", {"path": "README.md"}, readable=[given])
        assert relative.value.kind == "FileNotFoundError"
        if landlock.abi() >= 4:
            port = int(services.REDIS_URL.rsplit(":", 1)[1].split("/")[0])
            with pytest.raises(ChildRaised) as tcp:
                sandbox.call(T + "connect", {"port": port}, readable=[given])
            assert tcp.value.kind == "PermissionError"


def test_torch_and_onnxruntime_run_inside_with_the_thread_count() -> None:
    value = run_sandboxed(T + "run_stack", {}, limits=Limits(threads=1, memory_bytes=6 << 30))
    assert value == {"ort": [[0.0, 0.0, 2.0]], "grad": [0.0, 1.0], "threads": 1}


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from infra.sandbox import Limits, Sandbox\n"
        "sandbox = Sandbox(Limits())\n"
        "sandbox.call('tests.sandbox_targets:echo', {})\n"
        "print(sandbox.pid, flush=True)\n"
        "sandbox.call('tests.sandbox_targets:sleep', {'seconds': 600})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = Path(f"/proc/{child}").exists()
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the sandbox child outlived its parent"


@needs_landlock
def test_a_prestarted_spare_gets_its_limits_and_paths_only_with_its_first_call(
    tmp_path: Path,
) -> None:
    canary, given = tmp_path / "canary", tmp_path / "model.onnx"
    canary.write_text("secret")
    given.write_text("model")
    with Sandbox(Limits(memory_bytes=1 << 30, cpu_seconds=60, wall_seconds=60)) as spare:
        spare.prestart(T + "echo")  # the worker's spare runs worker.sandboxed:preload
        assert spare.wait_preloaded() is not None
        pid = spare.pid
        assert spare.call(T + "read_file", {"path": str(given)}, readable=[given]) == "model"
        assert spare.pid == pid  # the spare itself served the call
        with pytest.raises(ChildRaised) as denied:
            spare.call(T + "read_file", {"path": str(canary)}, readable=[given])
        assert denied.value.kind == "PermissionError"
        with pytest.raises(LimitExceeded) as hit:
            spare.call(T + "allocate", {"mib": 2048}, readable=[given])
        assert hit.value.limit == "memory"
    with Sandbox(LIMITS) as spare:
        spare.prestart(T + "remember", {"device": "cpu"})  # the parent's choice, not the env's
        assert spare.wait_preloaded() is not None
        assert spare.call(T + "recall", {}) == {"device": "cpu"}
    unused = Sandbox(LIMITS)
    unused.prestart(T + "echo")
    workdir = Path(f"/proc/{unused.pid}/cwd").resolve()
    unused.close()  # a spare closed before any call leaves nothing behind
    assert not workdir.exists()

"""Untrusted-model work runs in a child process with hard limits (SECURITY.md).

Parsing, rewriting and converting an uploaded ONNX graph, and running it, may allocate
gigabytes from a few KB of graph, loop for ever, or (through a parser bug) read files. The
parent (an API or Celery worker process) never does that work itself. It starts
`infra.sandbox_child` with:

- a clean environment: no database or broker URL, no keys; an empty temporary working
  directory as cwd, HOME and TMPDIR;
- an address-space cap (RLIMIT_AS; off on CUDA, whose driver maps huge virtual ranges),
  no core files and a file-size cap; the parent also watches the child's RSS and CPU time
  and the wall clock, and kills it past a limit;
- Landlock where the kernel has it: the child reads only the Python installation, the
  project's packages and the paths it was given, writes only its working directory, and
  opens no TCP connection.

Functions run there are named `"module:function"` and called as `function(payload, emit)`;
payload, events and the return value are JSON, so nothing the child sends can run code in
the parent. A child that hit a limit, crashed or was stopped is never reused. A spare
child (`prestart`) may do its imports before its first call; it reads no request before
its limits and Landlock apply.

Example::

    limits = Limits(memory_bytes=2 << 30, cpu_seconds=60, wall_seconds=120)
    value = run_sandboxed("robustness.onnx_graph:inspect_path", {"path": p}, limits=limits,
                          readable=[p])
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from infra.sandbox_proc import (
    MEMORY_HINTS,
    PRELOADED,
    cpu_time,
    library_path,
    link_project,
    oom_likely,
    status_kib,
    tail,
)

GiB = 1 << 30
# Variables a child may inherit: locale, thread-unrelated BLAS workarounds, GPU selection, and
# where the host keeps the GPU driver's libraries (some images find libcuda only through it).
INHERITED_ENV = ("LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES",
                 "LD_LIBRARY_PATH")  # fmt: skip
POLL_S = 0.2
# Starting a child (Python, then Landlock) is not the caller's work: it gets its own bound.
START_WALL_S = 60.0
MAX_MESSAGE_BYTES = 256 << 20

EventFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class Limits:
    """Per-call limits of a sandboxed child; the settings that fill them are in SECURITY.md."""

    memory_bytes: int = 4 * GiB
    cpu_seconds: float = 3600.0
    wall_seconds: float = 3600.0
    threads: int = 1
    address_space_cap: bool = True
    max_file_bytes: int = 1 * GiB
    landlock: bool = True


class SandboxError(Exception):
    """The sandboxed call did not return a value; `str()` says why, for the user."""


class LimitExceeded(SandboxError):
    """A limit was hit: `limit` is "memory", "cpu" or "wall"."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class ChildRaised(SandboxError):
    """The function raised: `kind` is the exception's class name, `message` its text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


class ChildFailed(SandboxError):
    """The child died without answering (a signal, a crash in native code)."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


class Stopped(SandboxError):
    """`should_stop()` answered True; the child was killed."""


def _limit_message(limit: str, limits: Limits) -> str:
    value = {
        "memory": f"{limits.memory_bytes / GiB:.2f} GiB of memory",
        "cpu": f"{limits.cpu_seconds:g} s of CPU time",
        "wall": f"{limits.wall_seconds:g} s of wall time",
    }[limit]
    return f"the model's sandbox exceeded its limit of {value}"


class Sandbox:
    """One child process, reused across calls that read the same paths (it caches models)."""

    def __init__(self, limits: Limits, *, base_dir: Path | None = None) -> None:
        self.limits = limits
        self.base_dir = base_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: IO[bytes] | None = None
        self._responses: int = -1
        self._readable: tuple[str, ...] = ()
        self._workdir: Path | None = None
        self._log: IO[bytes] | None = None
        self._code: tuple[Path, list[str]] = (Path(), [])
        self._library_path: list[str] = []
        self._set_up = False  # False: no child, or a spare waiting for its setup message
        self.spawn_threads = limits.threads  # fixed at spawn (the child's environment)
        self.landlock_abi = 0

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def call(
        self,
        target: str,
        payload: dict[str, Any],
        *,
        readable: Sequence[Path] = (),
        on_event: EventFn | None = None,
        should_stop: StopFn | None = None,
    ) -> Any:
        """Run `target(payload, emit)` in the child and return its JSON value."""
        wanted = _resolved(readable)
        if (
            self._proc is None
            or self._proc.poll() is not None
            or (self._set_up and wanted != self._readable)
        ):
            self.close()
            self._spawn(None)
        if not self._set_up:
            self._setup(wanted, should_stop)
        assert self._requests is not None
        line = json.dumps({"target": target, "payload": payload}).encode() + b"\n"
        try:
            self._requests.write(line)
            self._requests.flush()
        except BrokenPipeError:
            pass  # the child died; _wait says how
        try:
            return self._wait(on_event, should_stop)
        except ChildRaised:
            raise  # the function failed cleanly; the child and its cache stay usable
        except SandboxError:
            self.close()  # a child that hit a limit, crashed or was stopped is never reused
            raise

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def serves(self, readable: Sequence[Path]) -> bool:
        """Whether a live, set-up child already reads exactly these paths (its caches hold)."""
        return self.alive and self._set_up and _resolved(readable) == self._readable

    def prestart(self, preload: str, payload: dict[str, Any] | None = None) -> None:
        """Start a spare child now: it runs `preload(payload)` (trusted imports) in its clean
        environment, then waits for its first call, which sets its limits and paths. The
        payload carries what the child cannot read from that environment (the device)."""
        if self._proc is None:
            self._spawn(preload, payload)

    def wait_preloaded(self, timeout_s: float = START_WALL_S) -> float | None:
        """Seconds the spare's preload took, once it is done; None if it died, overran or was
        taken meanwhile. Reads only its marker file: safe beside a call on another thread."""
        proc, workdir = self._proc, self._workdir
        deadline = time.monotonic() + timeout_s
        while proc is not None and workdir is not None and time.monotonic() < deadline:
            try:
                return float((workdir / PRELOADED).read_text())
            except (OSError, ValueError):
                pass
            if proc.poll() is not None:
                return None
            time.sleep(POLL_S)
        return None

    def close(self) -> None:
        """Kill the child (if any) and remove its working directory."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        for handle in (self._requests, self._log):
            if handle is not None:
                handle.close()
        if self._responses >= 0:
            os.close(self._responses)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._proc, self._requests, self._log, self._workdir = None, None, None, None
        self._responses, self._set_up = -1, False

    def _spawn(self, preload: str | None, payload: dict[str, Any] | None = None) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="robaudit-sandbox-", dir=self.base_dir))
        self._code = link_project(workdir / ".code")
        self._library_path = library_path()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self._log = tempfile.TemporaryFile(dir=self.base_dir)  # noqa: SIM115 (lives with the child)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        threads = str(max(1, self.limits.threads))
        env.update(
            PATH=os.defpath,
            HOME=str(workdir),
            TMPDIR=str(workdir),
            PYTHONPATH=os.pathsep.join([str(self._code[0]), *self._library_path]),
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
        )
        argv = [sys.executable, "-s", "-m", "infra.sandbox_child", str(req_r), str(resp_w)]
        argv += [str(os.getpid()), *([preload, json.dumps(payload or {})] if preload else [])]
        self._proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            pass_fds=(req_r, resp_w),
            start_new_session=True,  # a signal to the parent's group must not reach it
        )
        os.close(req_r)
        os.close(resp_w)
        self._requests = os.fdopen(req_w, "wb")
        self._responses, self._workdir = resp_r, workdir
        self.spawn_threads = self.limits.threads

    def _setup(self, readable: tuple[str, ...], should_stop: StopFn | None = None) -> None:
        """The limits, from this moment's `self.limits`, and the paths the child may read."""
        assert self._requests is not None
        assert self._workdir is not None
        code_dir, code_read = self._code
        setup = {
            "memory_bytes": self.limits.memory_bytes,
            "address_space_cap": self.limits.address_space_cap,
            "max_file_bytes": self.limits.max_file_bytes,
            "landlock": self.limits.landlock,
            "workdir": str(self._workdir),
            "code_dir": str(code_dir),
            "code_read": code_read,
            "library_path": self._library_path,
            "prefixes": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}),
            "readable": list(readable),
        }
        try:
            self._requests.write(json.dumps(setup).encode() + b"\n")
            self._requests.flush()
        except BrokenPipeError:
            pass  # the child died; _wait says how
        # a spare may still be importing: the caller heartbeats and may cancel meanwhile
        ready = self._wait(None, should_stop, start_up=True)
        self.landlock_abi = int(ready.get("landlock", 0))
        self._readable, self._set_up = readable, True

    def _wait(
        self, on_event: EventFn | None, should_stop: StopFn | None, start_up: bool = False
    ) -> Any:
        """Relay events until the answer; check the limits at least every POLL_S, and once
        more before an answer is accepted, so a chatty or a quick child cannot skip them."""
        assert self._proc is not None
        started, cpu_start = time.monotonic(), cpu_time(self._proc.pid)
        wall = max(self.limits.wall_seconds, START_WALL_S) if start_up else None
        buffer, peak_vm, checked = b"", 0, started
        while True:
            readable, _, _ = select.select([self._responses], [], [], POLL_S)
            if readable:
                chunk = os.read(self._responses, 1 << 20)
                if not chunk:
                    raise self._death(peak_vm)
                buffer += chunk
                if len(buffer) > MAX_MESSAGE_BYTES:
                    raise ChildFailed("the model's sandbox sent an oversized answer", None)
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    kind = message.get("type")
                    if kind == "event" and on_event is not None:
                        on_event(message["event"])
                    elif kind == "error":
                        raise self._raised(message["kind"], message["message"])
                    elif kind == "result" or (kind == "ready" and start_up):
                        self._check_limits(started, cpu_start, None, wall)
                        return message if start_up else message["value"]
            elif self._proc.poll() is not None:
                raise self._death(peak_vm)
            if time.monotonic() - checked >= POLL_S:
                peak_vm = max(peak_vm, status_kib(self._proc.pid, "VmSize") << 10)
                self._check_limits(started, cpu_start, should_stop, wall)
                checked = time.monotonic()

    def _check_limits(
        self, started: float, cpu_start: float, should_stop: StopFn | None, wall: float | None
    ) -> None:
        assert self._proc is not None
        limit = None
        if status_kib(self._proc.pid, "VmRSS") << 10 > self.limits.memory_bytes:
            limit = "memory"
        elif cpu_time(self._proc.pid) - cpu_start > self.limits.cpu_seconds:
            limit = "cpu"
        elif time.monotonic() - started > (wall or self.limits.wall_seconds):
            limit = "wall"
        if limit is not None:
            self._proc.kill()
            raise LimitExceeded(limit, _limit_message(limit, self.limits))
        if should_stop is not None and should_stop():
            self._proc.kill()
            raise Stopped("stopped on request")

    def _raised(self, kind: str, message: str) -> SandboxError:
        if kind == "MemoryError" or any(hint in message for hint in MEMORY_HINTS):
            return LimitExceeded("memory", _limit_message("memory", self.limits))
        return ChildRaised(kind, message)

    def _death(self, peak_vm: int) -> SandboxError:
        assert self._proc is not None
        code = self._proc.wait()
        near_cap = self.limits.address_space_cap and peak_vm >= 0.9 * self.limits.memory_bytes
        if near_cap or (code == -signal.SIGKILL and oom_likely(self._log)):
            return LimitExceeded("memory", _limit_message("memory", self.limits))
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        last = tail(self._log)
        detail = f": {last}" if last else ""
        return ChildFailed(f"the model's sandbox died ({how}){detail}", code)


def run_sandboxed(
    target: str,
    payload: dict[str, Any],
    *,
    limits: Limits,
    readable: Sequence[Path] = (),
    on_event: EventFn | None = None,
    should_stop: StopFn | None = None,
    base_dir: Path | None = None,
) -> Any:
    """One call in a fresh child, which is ended afterwards."""
    with Sandbox(limits, base_dir=base_dir) as sandbox:
        return sandbox.call(
            target, payload, readable=readable, on_event=on_event, should_stop=should_stop
        )


def _resolved(paths: Sequence[Path]) -> tuple[str, ...]:
    return tuple(sorted(str(Path(p).resolve()) for p in paths))

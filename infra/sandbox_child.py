"""The sandbox's child process (`python -m infra.sandbox_child REQ_FD RESP_FD PARENT [PRELOAD]`).

It limits itself before it reads any request, because the requests carry uploaded models:
rlimits on memory and file size, no core dumps, Landlock on files and TCP, and a thread that
ends it when its parent dies. Then it runs one requested function at a time and answers in
JSON lines (infra/sandbox.py holds the protocol and the parent side).

A spare child (infra/sandbox.py `Sandbox.prestart`) first calls PRELOAD, a `module:function`
named by the parent (never by a request), which imports the heavy modules (torch,
onnxruntime, the converter: seconds of CPU) before the setup message arrives. That runs
only the project's own code on no uploaded input, with the clean environment and the empty
working directory already in place; the limits and Landlock then apply as for any child.
Nothing here imports torch, Flask or SQLAlchemy: the targets import what they need.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from infra import landlock
from infra.sandbox_proc import PRELOADED

# What a Python process with torch and onnxruntime reads outside its own installation.
SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/self",  # resolved to this process's own entry: other processes stay unreadable
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
)
# Devices it may write: the null device and POSIX shared memory.
DEVICES_RW = ("/dev/null", "/dev/shm")  # noqa: S108
# On a GPU host, every NVIDIA node (nvidiactl, nvidia-uvm, nvidia0…N, nvidia-caps: CUDA opens
# them read-write), what the driver reads about the card (its /proc entry, PCI sysfs,
# mmap_min_addr), and the child's own threads' /proc entries, writable: the driver names its
# threads through /proc/self/task/<tid>/comm, and when that write is refused cuInit fails
# ("Error 304: OS call failed"). On an H200 (tests/gpu/landlock_probe.py) CUDA started with
# /proc writable and comm was the only write refused; this narrower rule has not run there.
GPU_NODES = "/dev/nvidia*"
GPU_WRITE = ("/proc/self/task",)
GPU_READ = ("/proc/driver/nvidia", "/proc/devices", "/proc/sys/vm", "/sys/bus/pci/devices",
            "/sys/devices/pci*", "/sys/devices/system/node", "/sys/module/nvidia")  # fmt: skip


def _self_limit(setup: dict[str, Any]) -> None:
    memory = int(setup["memory_bytes"])
    if setup.get("address_space_cap", True):
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    file_cap = int(setup["max_file_bytes"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_cap, file_cap))


def _die_with_parent(parent: int) -> None:
    """A worker killed with -9 must not leave its model running: watch the parent's pid."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="sandbox-parent-watch", daemon=True).start()


def _gpu_paths() -> tuple[list[str], list[str]]:
    """(read, write) for the CUDA driver; none where the host has no NVIDIA device."""
    nodes = sorted(glob.glob(GPU_NODES))
    if not nodes:
        return [], []
    read = [path for pattern in GPU_READ for path in sorted(glob.glob(pattern))]
    # The driver's libraries, where the host names them in LD_LIBRARY_PATH (inherited).
    read += [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    return read, [*nodes, *GPU_WRITE]


def _restrict(setup: dict[str, Any]) -> int:
    gpu_read, gpu_write = _gpu_paths()
    sources = (*SYSTEM_READ, *gpu_read, *setup["prefixes"], *setup["code_read"],
               *setup["readable"])  # fmt: skip
    read = [Path(p) for p in sources]
    write = [Path(setup["workdir"]), *(Path(p) for p in (*DEVICES_RW, *gpu_write))]
    if setup.get("landlock", True):
        return landlock.restrict(read=read, write=write)
    return 0


def _resolve(target: str) -> Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Any]:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{target} is not callable")
    return fn


def _serve(requests: IO[bytes], responses: IO[bytes]) -> None:
    def send(message: dict[str, Any]) -> None:
        responses.write(json.dumps(message).encode() + b"\n")
        responses.flush()

    def emit(event: dict[str, Any]) -> None:
        send({"type": "event", "event": event})

    for line in requests:
        request = json.loads(line)
        try:
            value = _resolve(request["target"])(request["payload"], emit)
            send({"type": "result", "value": value})
        except BaseException as exc:  # every failure goes back to the parent, by name
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            send({"type": "error", "kind": type(exc).__name__, "message": str(exc)[:4000]})


def _preload(target: str, payload: dict[str, Any]) -> None:
    """Trusted warm-up before any request: import what the targets will need. The marker in
    the working directory tells the parent it is done without a read of the response pipe,
    which the first call owns."""
    started = time.monotonic()
    _resolve(target)(payload, lambda _event: None)
    Path(PRELOADED).write_text(f"{time.monotonic() - started:.3f}")


def main(argv: list[str]) -> int:
    requests = os.fdopen(int(argv[1]), "rb")
    responses = os.fdopen(int(argv[2]), "wb")
    _die_with_parent(int(argv[3]))
    if len(argv) > 5:
        _preload(argv[4], json.loads(argv[5]))
    first = requests.readline()
    if not first:
        return 0  # the parent closed a spare it did not need
    setup = json.loads(first)
    _self_limit(setup)
    version = _restrict(setup)
    # Imports must find the project through the links in the work directory only.
    sys.path[:] = [setup["code_dir"], *setup["library_path"]]
    responses.write(json.dumps({"type": "ready", "landlock": version}).encode() + b"\n")
    responses.flush()
    _serve(requests, responses)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The parts of infra/sandbox.py that read the host, not the protocol: the child's import
path (links to the project's packages only) and the parent's view of the child's /proc."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import IO

MEMORY_HINTS = ("bad_alloc", "Failed to allocate", "out of memory", "Cannot allocate memory")
# The project's own top-level packages; only these are linked into the child's import path.
PROJECT_PACKAGES = ("infra", "service", "worker", "robustness", "robaudit", "tests")
PRELOADED = ".preloaded"  # a spare child writes it in its working directory when warm


def link_project(code_dir: Path) -> tuple[Path, list[str]]:
    """Links to the project's packages only, so a data dir beside them stays unreadable."""
    code_dir.mkdir()
    targets = []
    for name in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        package = Path(next(iter(spec.submodule_search_locations))).resolve()
        (code_dir / name).symlink_to(package, target_is_directory=True)
        targets.append(str(package))
    return code_dir, targets


def library_path() -> list[str]:
    """The parent's import path without the project's checkout (linked instead)."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if any(path == p or p in path.parents for p in prefixes) and path.exists():
            out.append(str(path))
    return out


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_time(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def tail(log: IO[bytes] | None, size: int = 1500) -> str:
    if log is None:
        return ""
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - size))
    return log.read().decode(errors="replace").strip()[-size:]


def oom_likely(log: IO[bytes] | None) -> bool:
    return any(hint in tail(log) for hint in MEMORY_HINTS)

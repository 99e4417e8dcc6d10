"""How many compute threads a worker process should use.

Measured (issue 10): two workers on a 2-core machine with torch's default thread count were
4–7× slower than one, because their threads fought over the cores; with one thread each,
two were 1.64–1.96× faster than one. So each worker takes its share: the CPUs it may use
(cgroup quota, CPU affinity) divided by the robaudit worker processes on the host.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

from infra.config import Settings

MARKER = "worker.celery_app"  # in the command line of every robaudit worker process


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this cgroup in CPUs (v2 cpu.max, else v1 cfs), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 else None


def usable_cpus() -> float:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota."""
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    quota = cgroup_cpus()
    return min(cpus, quota) if quota else cpus


def process_table(proc: Path = Path("/proc")) -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process that is readable; gone ones skipped."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        yield int(entry.name), ppid, cmdline


def worker_processes(proc: Path = Path("/proc"), marker: str = MARKER) -> int:
    """robaudit worker processes on this host (or container): at least this one."""
    parents = {pid: ppid for pid, ppid, cmd in process_table(proc) if marker.encode() in cmd}
    pids = set(parents)
    # a prefork pool's children carry the same command line: count main processes only
    return max(1, sum(1 for pid in pids if parents[pid] not in pids))


def torch_threads(settings: Settings) -> int:
    """ROBAUDIT_TORCH_THREADS, else this worker's share of the usable CPUs (at least 1)."""
    if settings.torch_threads:
        return max(1, settings.torch_threads)
    share = usable_cpus() / (settings.worker_processes or worker_processes())
    return max(1, math.floor(share))

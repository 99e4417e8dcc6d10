"""Each worker's thread share: CPUs it may use (cgroup quota, affinity) / workers on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from infra.config import Settings
from worker import threads


def test_cgroup_quota_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpus(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpus(tmp_path) is None
    assert threads.cgroup_cpus(tmp_path / "absent") is None


def test_share_divides_the_usable_cpus_by_the_workers_and_can_be_overridden(
    tmp_path: Path,
) -> None:
    cpus = len(os.sched_getaffinity(0))
    settings = Settings(data_dir=tmp_path, database_url="sqlite://")
    assert threads.torch_threads(settings.with_overrides(worker_processes=1)) == max(
        1, int(min(cpus, threads.cgroup_cpus() or cpus))
    )
    assert threads.torch_threads(settings.with_overrides(worker_processes=10 * cpus)) == 1
    assert threads.torch_threads(settings.with_overrides(torch_threads=7)) == 7


def test_worker_processes_on_the_host_are_counted_once_each() -> None:
    """Main processes only: a prefork pool's children carry the same command line."""
    marker = f"robaudit-test-worker-{os.getpid()}"
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(4)', sys.argv[1]]); "
        "time.sleep(30)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, marker]) for _ in range(2)]
    try:
        time.sleep(1.0)
        assert threads.worker_processes(marker=marker) == 2
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_onnxruntime_follows_the_torch_thread_share() -> None:
    """onnxruntime's pool is its own (one thread per core by default), not OpenMP's."""
    import torch

    from robustness.backends.ort_backend import OrtBackend
    from tests.factories.hostile import linear_classifier

    before = torch.get_num_threads()
    try:
        for share in (1, 2):
            torch.set_num_threads(share)
            backend = OrtBackend(
                linear_classifier(), log_probabilities=False, device=torch.device("cpu")
            )
            options = backend.session.get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (share, 1)
    finally:
        torch.set_num_threads(before)

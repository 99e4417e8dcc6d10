"""The progress line (elapsed, ETA, short in a log) and the audit summary of `status`."""

from __future__ import annotations

import io

from robaudit.cli.display import ProgressLine, audit_summary, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_has_elapsed_eta_and_stays_short() -> None:
    clock, log = Clock(), io.StringIO()
    progress = ProgressLine(log, clock)
    progress.note("loading the model")
    clock.now += 30
    progress.update(0, 1000, "queued")
    for done in range(1, 1001):
        clock.now += 0.125
        progress.update(done, 1000, "epsilon 0.03")
    progress.finish()
    lines = log.getvalue().splitlines()
    assert lines[0] == "loading the model (elapsed 0s)"
    assert len(lines) == 13  # the note, queued, then one line per tenth of the work and the end
    assert "elapsed 30s" in lines[1]
    assert lines[2].endswith("1/1000 epsilon 0.03 elapsed 30s")  # no rate yet: no ETA
    assert lines[3].endswith("100/1000 epsilon 0.03 elapsed 42s  eta 1m52s")
    assert lines[-1].endswith("1000/1000 epsilon 0.03 elapsed 2m35s")


def test_the_servers_eta_wins() -> None:
    log = io.StringIO()
    ProgressLine(log, Clock()).update(5, 10, "clean", eta=3725)
    assert log.getvalue().rstrip().endswith("eta 1h02m")
    assert duration(59.9) == "59s"


def test_status_summary_is_a_few_lines() -> None:
    audit = {
        "id": "a1", "status": "running", "backend": None, "model_id": "m", "dataset_id": "d",
        "progress": {"done": 3, "total": 8, "stage": "clean"}, "error": None, "result": None,
    }  # fmt: skip
    assert audit_summary(audit) == [
        "audit   a1  running",
        "model   m  dataset d",
        "progress 3/8 clean",
    ]

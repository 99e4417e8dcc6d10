"""`make demo`: two digit classifiers audited through the embedded robaudit service.

Trains a natural CNN and a PGD-adversarially-trained twin on sklearn's digits, exports both to
ONNX, starts `robaudit up` (API + one Celery worker + SQLite + embedded broker), uploads the
models and the test split over HTTP, runs one audit each, and prints them side by side.
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from demo.digits import accuracy, load_split, to_onnx, train_cnn
from robaudit.client import Client

OUT = Path("demo-out")
EPS = 0.1
CONFIG = {"epsilons": [EPS], "steps": 20, "max_samples": 450, "seed": 0}


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    split = load_split()
    models = {}
    for name, adv_eps in (("natural-cnn", 0.0), ("adversarial-cnn", EPS)):
        start = time.perf_counter()
        net = train_cnn(split, adversarial_eps=adv_eps)
        seconds = time.perf_counter() - start
        models[name] = to_onnx(net)
        (OUT / f"{name}.onnx").write_bytes(models[name])
        clean = accuracy(net, split.x_test, split.y_test)
        print(f"trained {name:16s} clean accuracy {clean:.3f}  ({seconds:.1f}s)")
    npz = io.BytesIO()
    np.savez_compressed(npz, x=split.x_test, y=split.y_test)
    (OUT / "digits-test.npz").write_bytes(npz.getvalue())

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (OUT / "robaudit-up.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robaudit",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(OUT / "data"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        key = _wait_ready(url, OUT / "data" / "dev-api-key", proc)
        print(f"robaudit is up at {url} (log: {OUT / 'robaudit-up.log'})")
        client = Client(url, key)
        dataset = client.upload("/v1/datasets", "digits-test.npz", npz.getvalue(), {})
        rows = []
        for name, data in models.items():
            model = client.upload("/v1/models", f"{name}.onnx", data, {"name": name})
            start = time.perf_counter()
            body = {"model_id": model["id"], "dataset_id": dataset["id"], "config": CONFIG}
            created = client.post_json("/v1/audits", body)
            last: list[object] = []
            audit = client.wait(created["id"], lambda a, last=last: _print_progress(a, last), 0.5)
            if audit["status"] != "succeeded":
                raise SystemExit(f"audit {audit['status']}: {audit['error']}")
            rows.append((name, audit, time.perf_counter() - start))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    return _report(rows)


def _report(rows: list[tuple[str, dict[str, Any], float]]) -> int:
    print()
    print(f"Audit on {rows[0][1]['result']['samples']} digits test samples, L∞ ε = {EPS}, 20 steps")
    header = ("model", "divergence (mean ± 95% CI)", "clean", "FGSM", "PGD", "seconds")
    print("{:18s} {:>30s} {:>7s} {:>7s} {:>7s} {:>8s}".format(*header))
    for name, audit, seconds in rows:
        r = audit["result"]["per_epsilon"][0]
        d = r["divergence"]
        half = (d["ci95"][1] - d["ci95"][0]) / 2
        print(
            f"{name:18s} {d['mean']:>20.5f} ± {half:.5f} {100 * r['clean_accuracy']:6.1f}% "
            f"{100 * r['fgsm_accuracy']:6.1f}% {100 * r['pgd_accuracy']:6.1f}% {seconds:8.1f}"
        )
    nat, adv = (row[1]["result"]["per_epsilon"][0]["divergence"]["mean"] for row in rows)
    print()
    if adv < nat:
        print(f"The adversarially trained model has the lower divergence ({adv:.5f} < {nat:.5f}).")
        return 0
    print("UNEXPECTED: the adversarially trained model did not get the lower divergence.")
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, key_file: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"robaudit up exited; see {OUT / 'robaudit-up.log'}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200 and key_file.exists():
                    return key_file.read_text().strip()
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("robaudit up did not become ready in 120s")


def _print_progress(audit: dict[str, Any], last: list[object]) -> None:
    progress = audit["progress"]
    now = (progress["done"], audit["status"])
    if now != (last[0] if last else None):
        done = f"{progress['done']}/{progress['total']}"
        print(f"  audit {audit['id'][:8]}: {audit['status']:9s} {done} {progress['stage'] or ''}")
        last[:] = [now]


if __name__ == "__main__":
    raise SystemExit(main())

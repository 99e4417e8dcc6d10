"""The machine's own two-process ceiling: one vs two independent 1-thread torch loops.

The scale-out benchmark (bench_scaleout.py) cannot beat what two plain processes get from
this machine's cores; this measures that bound in the same session, the order alternated.
`python benchmarks/bench_cpu_ceiling.py [--rounds 2] [--seconds 8]`
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def loop(seconds: float) -> float:
    """Forward+backward passes per second of a digits-sized CNN, batch 128, one thread."""
    import torch

    torch.set_num_threads(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 10),
    )
    x = torch.rand(128, 1, 8, 8, requires_grad=True)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        net(x).sum().backward()
        n += 1
    return n / (time.perf_counter() - start)


def throughput(processes: int, seconds: float) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--child", str(seconds)]
    # each in its own session, as bench_scaleout.py starts its workers (Linux autogroup)
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        for _ in range(processes)
    ]
    return sum(float(c.communicate()[0]) for c in children)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(loop(args.child))
        return
    for r in range(args.rounds):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        rates = {k: throughput(k, args.seconds) for k in order}
        print(
            f"round {r}: 1 process {rates[1]:.1f}/s, 2 processes {rates[2]:.1f}/s: "
            f"{rates[2] / rates[1]:.2f}x"
        )


if __name__ == "__main__":
    main()

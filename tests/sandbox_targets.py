"""Functions the sandbox tests run in a child process (infra/sandbox.py)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

Emit = Callable[[dict[str, Any]], None]


def echo(payload: dict[str, Any], emit: Emit) -> Any:
    for i in range(int(payload.get("events", 0))):
        emit({"i": i})
    return {"echo": payload, "pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ)}


_PRELOADED: dict[str, Any] = {}


def remember(payload: dict[str, Any], _emit: Emit) -> Any:
    """A preload target: keeps what the parent passed, for `recall` to return."""
    _PRELOADED.update(payload)


def recall(_payload: dict[str, Any], _emit: Emit) -> Any:
    return _PRELOADED


def fail(payload: dict[str, Any], _emit: Emit) -> Any:
    raise ValueError(payload["message"])


def allocate(payload: dict[str, Any], _emit: Emit) -> Any:
    blocks = [bytearray(1 << 20) for _ in range(int(payload["mib"]))]
    return len(blocks)


def spin(payload: dict[str, Any], _emit: Emit) -> Any:
    end = time.monotonic() + float(payload["seconds"])
    while time.monotonic() < end:
        pass
    return "spun"


def sleep(payload: dict[str, Any], emit: Emit) -> Any:
    emit({"sleeping": True})
    time.sleep(float(payload["seconds"]))
    return "slept"


def die(_payload: dict[str, Any], _emit: Emit) -> Any:
    os.kill(os.getpid(), signal.SIGSEGV)
    return "unreachable"


def read_file(payload: dict[str, Any], _emit: Emit) -> Any:
    with open(payload["path"], "rb") as handle:
        return handle.read().decode()


def connect(payload: dict[str, Any], _emit: Emit) -> Any:
    with socket.create_connection(("127.0.0.1", int(payload["port"])), timeout=2):
        return "connected"


def run_stack(_payload: dict[str, Any], _emit: Emit) -> Any:
    """torch and onnxruntime both work under the sandbox's limits."""
    import numpy as np
    import onnxruntime
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString())
    (y,) = session.run(None, {"x": np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)})
    grad = torch.func.grad(lambda t: torch.relu(t).sum())(torch.tensor([-1.0, 2.0]))
    return {"ort": y.tolist(), "grad": grad.tolist(), "threads": torch.get_num_threads()}


def chatter(payload: dict[str, Any], emit: Emit) -> Any:
    """Events faster than the parent polls: its limits must still be checked."""
    end = time.monotonic() + float(payload["seconds"])
    while time.monotonic() < end:
        emit({"tick": True})
        time.sleep(0.01)
    return "chatted"


def cuda_probe(_payload: dict[str, Any], _emit: Emit) -> Any:
    """CUDA starts in the child: a product on the GPU, and the memory the driver reports."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False}
    a = torch.ones(256, 256, device="cuda")
    free, total = torch.cuda.mem_get_info()
    return {"available": True, "sum": float((a @ a).sum()), "free": free, "total": total}

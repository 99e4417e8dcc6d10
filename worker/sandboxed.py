"""What runs inside the sandbox child: untrusted model handling, and nothing else.

Each function takes a JSON payload (artifact paths, sample range, config) and an `emit`
callback, and returns JSON. No database, no artifact store, no settings: the parent reads
the rows, passes the paths, writes what comes back, and kills the child on cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustness import engine, loading
from robustness.config import AuditConfig
from robustness.datasets import load_npz
from robustness.image_datasets import ImageLimits, ImageTarget, decode_images
from robustness.preprocessing import Preprocessing
from robustness.results import BackendState, Manifest
from robustness.spec import spec_from_config
from worker.model_cache import MODELS

PROBE_SAMPLES = 32
Emit = Callable[[dict[str, Any]], None]
# The last dataset read, by (path, member cap): every shard of an audit that lands in this
# child reads the same file, and an npz must be read whole (it is compressed).
_dataset: tuple[tuple[str, int], tuple[np.ndarray, np.ndarray]] | None = None


def device() -> torch.device:
    """ROBAUDIT_DEVICE if set (e.g. cpu, cuda:1), else CUDA when present."""
    from infra.config import Settings  # called by the parent: the child reads no settings

    name = Settings.from_env().device
    return torch.device(name) if name else loading.default_device()


def payload_device(payload: dict[str, Any]) -> torch.device:
    """The device the parent chose (the child's environment has no ROBAUDIT_DEVICE)."""
    return torch.device(payload["device"]) if payload.get("device") else device()


def _use_threads(payload: dict[str, Any]) -> None:
    threads = payload.get("threads")
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def preload(payload: dict[str, Any], _emit: Emit) -> None:
    """A spare child's warm-up (infra/sandbox_child.py), before any upload is read: the
    modules a shard imports lazily (the converters alone pull in torchvision and
    torch._dynamo: 1.9 s here), and one load of a tiny built-in graph, which also warms
    onnxruntime's and onnxslim's first-use paths."""
    import contourpy  # noqa: F401  (landscapes)
    import onnx2pytorch  # noqa: F401  (the second converter; the tiny load warms the first)
    import onnx2torch  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxslim  # noqa: F401

    dev = payload_device(payload)
    loading.load(_tiny_graph(), np.zeros((2, 4), np.float32), output=None, device=dev)


def _tiny_graph() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "warmup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight],
    )
    return bytes(helper.make_model(graph).SerializeToString())


def run_shard(payload: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """The engine on samples [start, stop) of the dataset; emits progress once per batch."""
    _use_threads(payload)
    dev = payload_device(payload)
    start, stop = int(payload["start"]), int(payload["stop"])
    config = AuditConfig.from_stored(payload["config"])
    spec = spec_from_config(config, payload["input_range"])
    if payload["position"] != 0:
        spec = replace(spec, landscape_samples=0)  # the first shard draws the surfaces
    x, y = _samples(payload, start, stop)
    model_path = Path(payload["model_path"])
    loaded = MODELS.get(
        payload["model_sha256"],
        model_path.read_bytes,
        x[:PROBE_SAMPLES],
        output=payload["output"],
        backend=config.backend,
        device=dev,
        seed=spec.seed,
        fd_directions=spec.fd_directions,
        preprocessing=_preprocessing(payload),
    )
    emit({"stage": "loaded"})

    def progress(done: int, _total: int, stage: str) -> None:
        emit({"done": done, "stage": stage})

    result = engine.run_audit(
        loaded.backend,
        x,
        y,
        spec,
        device=dev,
        parity_max_abs_diff=loaded.parity_max_abs_diff,
        progress=progress,
        sample_offset=start,
    )
    manifest = Manifest(
        device=str(dev),
        backend=result.backend.value,
        backends={k: BackendState.model_validate(v) for k, v in loaded.statuses_dict().items()},
        notes=list(loaded.notes),
    )
    return result.model_copy(update={"manifest": manifest}).to_json()


def _preprocessing(payload: dict[str, Any]) -> Preprocessing | None:
    stored = payload.get("preprocessing")
    return None if stored is None else Preprocessing.model_validate(stored)


def _read_dataset(path: str, max_member_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    global _dataset
    key = (path, max_member_bytes)
    if _dataset is None or _dataset[0] != key:
        _dataset = None  # free the old one before reading the next
        _dataset = (key, load_npz(Path(path), max_member_bytes=max_member_bytes))
    return _dataset[1]


def _samples(payload: dict[str, Any], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples [start, stop): sliced from the .npz, or decoded here, in the sandbox, if images."""
    path = Path(payload["dataset_path"])
    if payload.get("images"):
        limits = ImageLimits(max_total_bytes=payload["max_total_bytes"])
        x, y, _names = decode_images(path, ImageTarget(**payload["images"]), limits, start, stop)
        return x, y
    x, y = _read_dataset(str(path), int(payload["max_member_bytes"]))  # kept across shards
    return x[start:stop].astype(np.float32), y[start:stop].astype(np.int64)


def inspect_model(payload: dict[str, Any], _emit: Emit) -> dict[str, Any]:
    """The `backends` status of a model from a parity check on inputs drawn from its range."""
    _use_threads(payload)
    probe = loading.uniform_probe(payload["shape"], payload["input_range"])
    dev = payload_device(payload)
    loaded = loading.load(
        Path(payload["model_path"]).read_bytes(),
        probe,
        output=payload["output"],
        device=dev,
        preprocessing=_preprocessing(payload),
    )
    return loaded.statuses_dict()

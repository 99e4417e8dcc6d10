"""Converted models kept per worker process, keyed by content: shards of one audit and later
audits of the same model skip the conversion (VGG-19: 16 s on a CPU) but not the checks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from robustness import loading
from robustness.preprocessing import Preprocessing
from robustness.spec import BackendKind

CAPACITY = 2  # converted models can hold gigabytes of weights, on the GPU too

Key = tuple[str, str | None, BackendKind, str, Preprocessing | None]


class ModelCache:
    """LRU of LoadedModel; every hit is re-checked on the caller's inputs (parity, NaN)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[Key, loading.LoadedModel] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        sha256: str,
        read: Callable[[], bytes],
        probe: np.ndarray,
        *,
        output: str | None,
        backend: BackendKind,
        device: torch.device,
        seed: int,
        fd_directions: int,
        preprocessing: Preprocessing | None = None,
    ) -> loading.LoadedModel:
        # The same bytes under another preprocessing are another graph (another tenant's).
        key: Key = (sha256, output, backend, f"{device}|{fd_directions}", preprocessing)
        cached = self.entries.get(key)
        if cached is not None:
            self.hits += 1
            self.entries.move_to_end(key)
            return cached.recheck(probe, seed=seed)
        self.misses += 1
        loaded = loading.load(
            read(), probe, output=output, backend=backend, device=device, seed=seed,
            fd_directions=fd_directions, preprocessing=preprocessing,
        )  # fmt: skip
        self.entries[key] = loaded
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return loaded


MODELS = ModelCache()

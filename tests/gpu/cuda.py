"""What the CUDA tests share: the device, the skip, and the models (built once per process)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from robustness.loading import LoadedModel, load
from tests.factories.models import cnn_onnx, digits_split, natural_cnn

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: torch sees no GPU on this machine"
)
RESNET50 = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"


@cache
def digits_onnx() -> bytes:
    return cnn_onnx(natural_cnn())


def digits_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    split = digits_split()
    return split.x_test[:n], split.y_test[:n]


def resnet_probe(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 3, 224, 224)).astype(np.float32)


@cache
def resnet50(device_name: str) -> LoadedModel:
    """ResNet-50 from the onnx wheel's light zoo (random weights), 224×224, no download."""
    return load(RESNET50.read_bytes(), resnet_probe(), device=torch.device(device_name))

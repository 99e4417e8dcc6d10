"""The intake coverage corpus of issue 3: real zoo graphs, skl2onnx, both torch exporters."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from demo.digits import to_onnx
from tests.factories.models import digits_split, natural_cnn, sklearn_onnx

LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# Zoo graphs that run only with ROBAUDIT_CORPUS=full: each has the opset, IR version and a
# subset of the operators of bvlc_alexnet, so it takes the intake path alexnet takes
# (tests/unit/test_intake_coverage.py checks that this stays true). What they add is weight:
# 143M and 62M parameters, 38 s of make test's serial time between them.
FULL_ONLY = frozenset({"vgg19", "zfnet512"})


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    probe: Callable[[], np.ndarray]


def _digits_images(n: int = 8) -> np.ndarray:
    return digits_split().x_test[:n]


def _digits_flat(n: int = 8) -> np.ndarray:
    return _digits_images(n).reshape(n, -1)


def _imagenet_like(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(n, 3, 224, 224)).astype(np.float32)


class TokenMixer(nn.Module):
    """Linear → LayerNorm → GELU → mean over tokens: Gelu/LayerNorm/ReduceMean in the export."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ln, self.act, self.out = (
            nn.Linear(8, 16),
            nn.LayerNorm(16),
            nn.GELU(),
            nn.Linear(16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.ln(self.emb(x.flatten(1, 2)))).mean(dim=1))


class FixedBatchCNN(nn.Module):
    """Flattens with view(1, -1): the export hard-codes a batch of 1 in a Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(1, -1))


def _export(model: nn.Module, sample: torch.Tensor, *, dynamo: bool, dynamic: bool = True) -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    if dynamo:
        torch.onnx.export(
            model, (sample,), buf, input_names=["input"], output_names=["scores"], dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False,
        )  # fmt: skip
    else:
        axes = {"input": {0: "N"}, "scores": {0: "N"}} if dynamic else None
        torch.onnx.export(
            model, (sample,), buf, input_names=["input"], output_names=["scores"], dynamo=False,
            dynamic_axes=axes, opset_version=17,
        )  # fmt: skip
    return buf.getvalue()


def _token_mixer(dynamo: bool) -> bytes:
    torch.manual_seed(0)
    return _export(TokenMixer().eval(), torch.rand(2, 1, 8, 8), dynamo=dynamo)


def _fixed_batch() -> bytes:
    torch.manual_seed(0)
    return _export(FixedBatchCNN().eval(), torch.rand(1, 1, 8, 8), dynamo=False, dynamic=False)


def _softmax_cnn() -> bytes:
    import copy

    twin = copy.deepcopy(natural_cnn())
    twin.softmax = True
    return to_onnx(twin)


def corpus() -> list[Case]:
    cases = [
        Case(path.stem.removeprefix("light_"), path.read_bytes, _imagenet_like)
        for path in sorted(LIGHT_ZOO.glob("*.onnx"))
    ]
    cases += [
        Case("skl-mlp", lambda: sklearn_onnx("mlp", zipmap=False), _digits_flat),
        Case("skl-mlp-zipmap", lambda: sklearn_onnx("mlp", zipmap=True), _digits_flat),
        Case("skl-logreg", lambda: sklearn_onnx("lr", zipmap=False), _digits_flat),
        Case("skl-logreg-zipmap", lambda: sklearn_onnx("lr", zipmap=True), _digits_flat),
        Case("torch-legacy-gelu-layernorm", lambda: _token_mixer(dynamo=False), _digits_images),
        Case("torch-dynamo-opset20", lambda: _token_mixer(dynamo=True), _digits_images),
        Case("torch-fixed-batch-1", _fixed_batch, _digits_images),
        Case("torch-softmax-terminated", _softmax_cnn, _digits_images),
    ]
    return cases

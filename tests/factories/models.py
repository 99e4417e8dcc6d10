"""Small ONNX classifiers built in-process (no downloads)."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import onnx
import torch
from torch import nn

from demo.digits import DigitsCNN, load_split, to_onnx, train_cnn
from robustness.preprocessing import Layout

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, on [0, 1] pixels


@cache
def digits_split():  # type: ignore[no-untyped-def]
    return load_split()


@cache
def natural_cnn() -> DigitsCNN:
    return train_cnn(digits_split(), epochs=10)


@cache
def adversarial_cnn() -> DigitsCNN:
    return train_cnn(digits_split(), adversarial_eps=0.1, epochs=10)


def cnn_onnx(model: nn.Module) -> bytes:
    return to_onnx(model)


class Scaled(nn.Module):
    """The same network with its last layer's weights and bias multiplied by `factor`."""

    def __init__(self, base: DigitsCNN, factor: float, softmax: bool = False) -> None:
        super().__init__()
        self.base, self.factor, self.softmax = base, factor, softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x) * self.factor
        return torch.softmax(z, dim=1) if self.softmax else z


class Constant(nn.Module):
    """Ignores its input: ψ must be exactly 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 0 + torch.arange(10.0)


def mlp_onnx(hidden: int = 32, seed: int = 0) -> bytes:
    """A tiny MLP on flattened digits (64 features): cheap for finite differences."""
    torch.manual_seed(seed)
    split = digits_split()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return to_onnx(net.eval())


def sklearn_onnx(kind: str = "mlp", zipmap: bool = False) -> bytes:
    """skl2onnx classifiers: outputs `label` (int64) and `probabilities` (or a ZipMap)."""
    from skl2onnx import to_onnx as skl_to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    split = digits_split()
    x = split.x_train.reshape(len(split.x_train), -1)
    clf = (
        MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
        if kind == "mlp"
        else LogisticRegression(max_iter=500)
    )
    clf.fit(x, split.y_train)
    options = {id(clf): {"zipmap": zipmap}}
    onx = skl_to_onnx(clf, x[:1].astype(np.float32), options=options, target_opset=17)
    return onx.SerializeToString()


def save_bytes(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue()


# Preprocessing twins (issue 8.1): one network, normalizing inside or outside its graph.


class Normalize(nn.Module):
    """torchvision's Normalize on a batch, channels on `axis`."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        shape = (3, 1, 1) if axis == 1 else (3,)
        self.register_buffer("mean", torch.tensor(MEAN).reshape(shape))
        self.register_buffer("std", torch.tensor(STD).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


@cache
def _body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)
    ).eval()


@cache
def twins(layout: Layout = Layout.NCHW) -> tuple[bytes, bytes]:
    """(normalizing inside the graph, normalizing outside it): the same network."""
    axis = 1 if layout is Layout.NCHW else 3
    front = [] if layout is Layout.NCHW else [ChannelsLast()]
    inside = nn.Sequential(Normalize(axis), *front, _body()).eval()
    outside = nn.Sequential(*front, _body()).eval()
    shape = (3, 8, 8) if layout is Layout.NCHW else (8, 8, 3)
    return to_onnx(inside, shape), to_onnx(outside, shape)


def pixels(layout: Layout = Layout.NCHW, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Seeded [0, 1] pixels for the twins, in their layout, and labels of their 5 classes."""
    shape = (n, 3, 8, 8) if layout is Layout.NCHW else (n, 8, 8, 3)
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    return x, np.arange(n, dtype=np.int64) % 5

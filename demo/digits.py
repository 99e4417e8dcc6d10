"""Small classifiers on sklearn's bundled digits (8×8, no download), exported to ONNX.

Used by `make demo`, the tests (through tests/factories) and the benchmarks: a natural CNN and
a PGD-adversarially trained one (Madry et al., 2018) train in a few seconds on a CPU. Training
code stays out of the product packages: the service only ever audits ONNX files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # [N, 1, 8, 8] float32 in [0, 1]
    y_train: np.ndarray  # [N] int64
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsSplit:
    """sklearn's digits scaled to [0, 1], shuffled with `seed`, split train/test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(len(x) * (1 - test_fraction))
    return DigitsSplit(x[:cut], y[:cut], x[cut:], y[cut:])


class DigitsCNN(nn.Module):
    """conv16-conv32-pool-fc64-fc10 on [N, 1, 8, 8]."""

    def __init__(self, softmax: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x))
        return torch.softmax(z, dim=1) if self.softmax else z


def _pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int
) -> torch.Tensor:
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def train_cnn(
    split: DigitsSplit,
    *,
    adversarial_eps: float = 0.0,
    epochs: int = 15,
    seed: int = 0,
    pgd_steps: int = 5,
) -> DigitsCNN:
    """Train on the split; with adversarial_eps > 0, on L∞ PGD examples of that radius."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            xb, yb = x[idx], y[idx]
            if adversarial_eps > 0:
                model.eval()
                xb = _pgd(model, xb, yb, adversarial_eps, pgd_steps)
                model.train()
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


def to_onnx(model: nn.Module, sample_shape: tuple[int, ...] = (1, 8, 8), opset: int = 17) -> bytes:
    """Export with a dynamic batch dimension through torch's TorchScript-based exporter."""
    buf = io.BytesIO()
    dummy = torch.zeros(2, *sample_shape)
    torch.onnx.export(
        model,
        (dummy,),
        buf,  # type: ignore[arg-type]
        input_names=["input"],
        output_names=["scores"],
        dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    return buf.getvalue()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

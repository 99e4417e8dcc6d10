"""Batch size follows the measured per-sample footprint and the memory budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from robustness.batching import (
    BACKWARD_FACTOR,
    available_bytes,
    bytes_per_sample,
    choose_batch_size,
)
from robustness.loading import load
from tests.factories.models import DigitsCNN

CPU = torch.device("cpu")


def test_footprint_counts_module_outputs() -> None:
    net = DigitsCNN().eval()
    per_sample = bytes_per_sample(net, torch.zeros(1, 1, 8, 8))
    # input + conv16 + relu + conv32 + relu (8×8) + pool + flatten + fc64 + relu + fc10, float32
    outputs = (64 + 16 * 64 * 2 + 32 * 64 * 2 + 32 * 16 * 2 + 64 * 2 + 10) * 4
    assert per_sample == int(BACKWARD_FACTOR * outputs)


def test_budget_limits_the_batch() -> None:
    net = DigitsCNN().eval()
    sample = torch.zeros(1, 1, 8, 8)
    per_sample = bytes_per_sample(net, sample)
    assert choose_batch_size(net, sample, requested=128, device=CPU, budget=10**12) == 128
    assert choose_batch_size(net, sample, requested=128, device=CPU, budget=per_sample * 5) == 5
    assert choose_batch_size(net, sample, requested=128, device=CPU, budget=1) == 1
    assert choose_batch_size(None, sample, requested=64, device=CPU) == 64


def test_resnet50_gets_a_smaller_batch_than_a_digits_cnn() -> None:
    path = Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx"
    probe = np.random.default_rng(0).uniform(size=(2, 3, 224, 224)).astype(np.float32)
    backend = load(path.read_bytes(), probe, device=CPU).backend
    module = backend.module  # type: ignore[attr-defined]
    sample = torch.from_numpy(probe[:1])
    per_sample = bytes_per_sample(module, sample)
    assert per_sample > 100 * bytes_per_sample(DigitsCNN().eval(), torch.zeros(1, 1, 8, 8))
    assert available_bytes(CPU) > 0
    budget = 2 << 30
    assert (
        choose_batch_size(module, sample, requested=128, device=CPU, budget=budget)
        == budget // per_sample
    )

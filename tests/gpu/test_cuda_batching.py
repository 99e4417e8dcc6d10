"""The batch budget on CUDA: half the free device memory, and a batch that fits it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from robustness.attacks.search import build_search
from robustness.batching import CUDA_FRACTION, available_bytes, bytes_per_sample, choose_batch_size
from robustness.spec import AuditSpec
from tests.gpu.cuda import CUDA, needs_cuda, resnet50, resnet_probe

pytestmark = [pytest.mark.gpu, needs_cuda]
MiB, GiB = 1 << 20, 1 << 30
Record = Callable[[str, object], None]


def test_the_budget_is_half_the_free_memory_and_follows_it() -> None:
    free, _total = torch.cuda.mem_get_info(CUDA)
    before = available_bytes(CUDA)
    assert abs(before - free * CUDA_FRACTION) < 64 * MiB
    block = torch.empty(4 * GiB, dtype=torch.uint8, device=CUDA)
    after = available_bytes(CUDA)
    del block
    torch.cuda.empty_cache()
    assert abs((before - after) - 4 * GiB * CUDA_FRACTION) < 128 * MiB


def test_the_chosen_batch_fits_its_budget_on_cuda(record_property: Record) -> None:
    """ResNet-50's estimated footprint, against the peak the search itself allocates."""
    backend = resnet50("cuda").backend
    module = backend.module  # type: ignore[attr-defined]
    sample = torch.from_numpy(resnet_probe(1))
    per_sample = bytes_per_sample(module, sample.to(CUDA))
    budget = 4 * GiB
    size = choose_batch_size(module, sample, requested=4096, device=CUDA, budget=budget)
    assert size == budget // per_sample
    spec = AuditSpec(epsilons=(8 / 255,), steps=2)
    search = build_search(backend, spec, spec.epsilons[0])
    torch.cuda.synchronize(CUDA)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    x = torch.rand(size, 3, 224, 224, device=CUDA)
    search(x, torch.Generator(device=CUDA).manual_seed(0))
    torch.cuda.synchronize(CUDA)
    peak = torch.cuda.max_memory_allocated(CUDA) - base
    record_property("resnet50_batch_for_4GiB", size)
    record_property("resnet50_estimate_MiB_per_sample", round(per_sample / MiB, 2))
    record_property("resnet50_measured_peak_MiB_per_sample", round(peak / size / MiB, 2))
    assert peak <= budget

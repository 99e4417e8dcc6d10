"""Batch size from the memory at hand, measured on the model rather than guessed from its name."""

from __future__ import annotations

from pathlib import Path

import torch

# Activations saved for backward plus the transient gradients. Measured on the digits CNN
# (benchmarks/ (e), CPU): RSS grows 29 KiB per sample for 33 KiB of leaf-module outputs, so
# the outputs alone nearly account for it; 2x leaves headroom for deeper graphs whose
# backward holds more temporaries at once.
BACKWARD_FACTOR = 2.0
CPU_FRACTION = 0.25
CUDA_FRACTION = 0.5


def available_bytes(device: torch.device) -> int:
    """Free device memory on CUDA; MemAvailable on Linux CPUs (8 GiB if unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FRACTION)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * CPU_FRACTION)
    except OSError:
        pass
    return int((8 << 30) * CPU_FRACTION)


def bytes_per_sample(module: torch.nn.Module, sample: torch.Tensor) -> int:
    """Input plus every leaf module's forward output bytes for one sample, × BACKWARD_FACTOR."""
    total = sample.numel() * sample.element_size()

    def count(_m: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, list | tuple) else (output,)
        total += sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            module(sample)
    finally:
        for handle in handles:
            handle.remove()
    return int(total * BACKWARD_FACTOR)


def choose_batch_size(
    module: torch.nn.Module | None,
    sample: torch.Tensor,
    *,
    requested: int,
    device: torch.device,
    budget: int | None = None,
) -> int:
    """The largest batch ≤ requested whose estimated footprint fits the memory budget."""
    if module is None:
        return requested
    per_sample = bytes_per_sample(module, sample[:1].to(device))
    budget = available_bytes(device) if budget is None else budget
    return max(1, min(requested, budget // max(per_sample, 1)))

"""The most vulnerable samples: the K largest ψ at the largest ε, with the input behind each.

A reviewer looks at them to see what the search found: the clean input, the worst perturbed
input x' of the ε-ball and the perturbation x' − x, with the prediction before and after.
Each shard keeps its own top K; merging keeps the global top K, ordered by (−ψ, sample
index), so a sharded audit keeps exactly the samples of an unsharded one.

Stored compactly (float16, base64) and bounded: an input with more than MAX_ELEMENTS values
is thinned, images spatially by an integer stride, other inputs by keeping the first values.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustness.cost import VULNERABLE_SAMPLES as K
from robustness.results import VulnerableSample

# torch.Tensor, not imported: the API unpacks and merges samples and never imports torch
# (import-linter counts type-only imports too).
Tensor = Any

MAX_ELEMENTS = 3 * 64 * 64


def pack(values: np.ndarray) -> str:
    """float16, little-endian, base64."""
    return base64.b64encode(np.asarray(values, dtype="<f2").tobytes()).decode()


def unpack(text: str, shape: Sequence[int]) -> np.ndarray:
    """The float64 array packed by :func:`pack`; refuses a size that does not match."""
    raw = base64.b64decode(text.encode(), validate=True)
    count = math.prod(shape)
    if len(raw) != 2 * count:
        raise ValueError(f"{len(raw)} bytes do not hold a float16 array of shape {list(shape)}")
    return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(tuple(shape))


def image_layout(shape: Sequence[int]) -> tuple[int, int, int] | None:
    """(C, H, W) for an input shaped C×H×W with C in {1, 3}, or H×W; None otherwise."""
    if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) > 1:
        return int(shape[0]), int(shape[1]), int(shape[2])
    if len(shape) == 2 and min(shape) > 1:
        return 1, int(shape[0]), int(shape[1])
    return None


def thin(x: np.ndarray) -> tuple[np.ndarray, int]:
    """x (one sample) bounded to MAX_ELEMENTS values, and the spatial stride used."""
    if x.size <= MAX_ELEMENTS:
        return x, 1
    layout = image_layout(x.shape)
    if layout is None:
        return x.reshape(-1)[:MAX_ELEMENTS], 1
    c, h, w = layout
    stride = math.ceil(math.sqrt(x.size / MAX_ELEMENTS))
    while c * math.ceil(h / stride) * math.ceil(w / stride) > MAX_ELEMENTS:
        stride += 1
    return x.reshape(c, h, w)[:, ::stride, ::stride], stride


@dataclass(frozen=True)
class Prediction:
    """Each sample's predicted class and its softmax probability, from the clean pass."""

    label: np.ndarray
    probability: np.ndarray

    @classmethod
    def of(cls, scores: Tensor) -> Prediction:
        probs = softmax_rows(scores)
        return cls(probs.argmax(axis=1), probs.max(axis=1))


@dataclass
class TopK:
    """The K largest ψ seen so far, with their clean and perturbed inputs (CPU tensors)."""

    k: int = K
    rows: list[tuple[float, int, Tensor, Tensor, int]] = field(default_factory=list)

    def offer(
        self,
        psi: Tensor,
        x: Tensor,
        x_best: Tensor,
        labels: Tensor,
        first_index: int,
    ) -> None:
        """A batch: ψ [N], x and x' [N, ...], labels [N]; sample i is first_index + i."""
        order = sorted(range(len(psi)), key=lambda i: (-float(psi[i]), i))[: self.k]
        for i in order:
            row = (float(psi[i]), first_index + i, x[i].cpu(), x_best[i].detach().cpu(),
                   int(labels[i]))  # fmt: skip
            self.rows.append(row)
        self.rows = sorted(self.rows, key=lambda r: (-r[0], r[1]))[: self.k]

    def results(
        self, clean: Prediction, perturbed_probs: np.ndarray, epsilon: float, offset: int
    ) -> tuple[VulnerableSample, ...]:
        """The kept samples: `clean` is indexed by sample - offset, `perturbed_probs` are
        softmax rows in the order of `rows`."""
        found = []
        for (psi, index, x, x_best, label), after in zip(self.rows, perturbed_probs, strict=True):
            values, stride = thin(x.double().numpy())
            moved, _ = thin((x_best.double() - x.double()).numpy())
            sample = VulnerableSample(
                sample_index=index, epsilon=epsilon, divergence=psi, label=label,
                clean_prediction=int(clean.label[index - offset]),
                clean_probability=float(clean.probability[index - offset]),
                perturbed_prediction=int(after.argmax()),
                perturbed_probability=float(after.max()),
                input_shape=list(x.shape), shape=list(values.shape), stride=stride,
                clean=pack(values), perturbation=pack(moved),
            )  # fmt: skip
            found.append(sample)
        return tuple(found)


def merge(parts: Iterable[Sequence[VulnerableSample]], k: int = K) -> tuple[VulnerableSample, ...]:
    """The global top k of the shards' top k, by (−ψ, sample index)."""
    every = [v for part in parts for v in part]
    return tuple(sorted(every, key=lambda v: (-v.divergence, v.sample_index))[:k])


def softmax_rows(scores: Tensor) -> np.ndarray:
    """Plain softmax of the model's scores (what a user calls its probabilities), finite."""
    probs = scores.detach().double().softmax(dim=1).cpu().numpy()
    return np.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0)

"""The report's audit-wide pictures, drawn once when the shards are merged (worker side: the
API image has no matplotlib): the ε-sweep curves, the histogram of per-sample ψ, and one
picture per most vulnerable sample (images for image-shaped inputs, feature plots else)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from robustness.results import AuditResult, VulnerableSample
from robustness.vulnerable import image_layout, unpack

ACCURACY_COLOURS = {"clean": "#2a9d8f", "FGSM": "#e9c46a", "PGD": "#e76f51"}
PANEL_PIXELS = 160  # images are enlarged (nearest neighbour) to about this many pixels


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def sweep_png(result: AuditResult) -> bytes:
    """Mean ψ with its 95% CI band, and clean, FGSM and PGD accuracy, against ε."""
    rows = sorted(result.per_epsilon, key=lambda e: e.epsilon)
    eps = [e.epsilon for e in rows]
    fig = Figure(figsize=(10, 3.6), dpi=100)
    fig.subplots_adjust(wspace=0.3)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    mean = [e.divergence.mean for e in rows]
    lo = [e.divergence.ci95[0] for e in rows]
    hi = [e.divergence.ci95[1] for e in rows]
    left.fill_between(eps, lo, hi, color="#457b9d", alpha=0.25, label="95% CI of the mean")
    left.plot(eps, mean, "o-", color="#1d3557", label="mean divergence ψ")
    left.set(xlabel="ε", ylabel="KL divergence (lower: more robust)", title="divergence vs ε")
    left.set_ylim(bottom=0)
    left.legend(loc="upper left", fontsize=8)
    for name, values in (
        ("clean", [e.clean_accuracy for e in rows]),
        ("FGSM", [e.fgsm_accuracy for e in rows]),
        ("PGD", [e.pgd_accuracy for e in rows]),
    ):
        if all(v is not None for v in values):
            pct = [100 * float(v or 0.0) for v in values]
            right.plot(eps, pct, "o-", color=ACCURACY_COLOURS[name], label=name)
    right.set(xlabel="ε", ylabel="accuracy (%)", title="accuracy vs ε", ylim=(-2, 102))
    if right.get_legend_handles_labels()[0]:
        right.legend(loc="lower left", fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if len(eps) == 1:
            ax.set_xlim(0, 2 * eps[0])
    return _png(fig)


def histogram_png(result: AuditResult) -> bytes:
    """Per-sample ψ at each ε, as step histograms on shared bins, means dashed."""
    fig = Figure(figsize=(10, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    columns = [(e.epsilon, np.asarray(e.per_sample or (), float)) for e in result.per_epsilon]
    columns = sorted((c for c in columns if c[1].size), key=lambda c: c[0])
    top = max((float(v.max()) for _, v in columns), default=1.0) or 1.0
    bins = np.linspace(0.0, top, 41).tolist()
    colours = ["#1d3557", "#e76f51", "#2a9d8f", "#e9c46a", "#6d597a", "#264653"]
    for k, (eps, values) in enumerate(columns):
        colour = colours[k % len(colours)]
        ax.hist(values, bins=bins, histtype="step", linewidth=1.8, color=colour,
                label=f"ε = {eps:g} (n = {values.size})")  # fmt: skip
        ax.axvline(float(values.mean()), color=colour, linestyle="--", linewidth=1)
    ax.set(xlabel="per-sample divergence ψ (KL)", ylabel="samples",
           title="distribution of per-sample divergence (dashed: mean)")  # fmt: skip
    ax.grid(alpha=0.3)
    if columns:
        ax.legend(fontsize=8)
    return _png(fig)


def sample_png(sample: VulnerableSample, input_range: Sequence[float] | None) -> bytes:
    """Clean, worst perturbed and amplified perturbation: images for image-shaped inputs,
    feature-wise plots for the others."""
    clean = unpack(sample.clean, sample.shape)
    delta = unpack(sample.perturbation, sample.shape)
    layout = image_layout(sample.shape)
    lo, hi = (float(input_range[0]), float(input_range[1])) if input_range else (0.0, 1.0)
    if layout is None:
        return _features_png(clean.reshape(-1), delta.reshape(-1))
    return _image_png(clean.reshape(layout), delta.reshape(layout), lo, hi)


def _image_png(clean: np.ndarray, delta: np.ndarray, lo: float, hi: float) -> bytes:
    """Clean | worst perturbed | perturbation ×(1/max|x' − x|) side by side, C×H×W inputs in
    the model's input range. Pillow, not matplotlib: a tenth of the time, once per sample of
    every audit; the panel names are in the report's caption."""
    reach = float(np.abs(delta).max())
    gain = 1.0 / reach if reach > 0 else 1.0
    scaled = np.clip((clean - lo) / (hi - lo), 0.0, 1.0)
    moved = np.clip((clean + delta - lo) / (hi - lo), 0.0, 1.0)
    if clean.shape[0] == 3:  # colour: mid-grey is 0, each channel amplified
        shift = np.clip(0.5 + 0.5 * gain * delta, 0.0, 1.0).transpose(1, 2, 0)
    else:  # one channel: blue up, red down, white 0
        shift = colormaps["RdBu_r"](np.clip(0.5 + 0.5 * gain * delta[0], 0.0, 1.0))[..., :3]
    panels = [_rgb(scaled), _rgb(moved), shift]
    h, w = panels[0].shape[:2]
    zoom = max(1, PANEL_PIXELS // max(h, w))
    gap = 8
    canvas = Image.new("RGB", (3 * w * zoom + 2 * gap, h * zoom), "white")
    for k, panel in enumerate(panels):
        picture = Image.fromarray((255 * panel).round().astype(np.uint8), "RGB")
        canvas.paste(picture.resize((w * zoom, h * zoom), Image.Resampling.NEAREST),
                     (k * (w * zoom + gap), 0))  # fmt: skip
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _rgb(x: np.ndarray) -> np.ndarray:
    """C×H×W in [0, 1] as H×W×3."""
    return np.repeat(x, 3, axis=0).transpose(1, 2, 0) if x.shape[0] == 1 else x.transpose(1, 2, 0)


def _features_png(clean: np.ndarray, delta: np.ndarray) -> bytes:
    """Feature-wise: clean and perturbed values, and the perturbation as bars."""
    index = np.arange(clean.size)
    fig = Figure(figsize=(7.5, 3.6), dpi=100)
    fig.subplots_adjust(hspace=0.5)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    top.plot(index, clean, "-", color="#1d3557", linewidth=1.2, label="clean")
    top.plot(index, clean + delta, "-", color="#e76f51", linewidth=1.2, label="worst perturbed")
    top.set(ylabel="value", title="features")
    top.legend(fontsize=8)
    bottom.bar(index, delta, color=np.where(delta >= 0, "#e76f51", "#457b9d"), width=1.0)
    bottom.axhline(0.0, color="black", linewidth=0.6)
    bottom.set(xlabel="feature", ylabel="x' − x", title="perturbation")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _png(fig)

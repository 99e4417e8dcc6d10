"""Pictures of the loss landscapes: a 3-D CE surface and a margin contour with S = 0 drawn."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from robustness.results import LandscapeResult


def margin_norm(margin: np.ndarray) -> TwoSlopeNorm:
    """Diverging around S = 0 whatever the grid holds: white at the boundary, blue where the
    sample keeps its class, red where it loses it. A side the grid never reaches gets the
    other side's extent, so a grid with S in [6.4, 16] is drawn in blues only."""
    lo, hi = float(margin.min()), float(margin.max())
    reach = max(abs(lo), abs(hi), 1e-9)
    return TwoSlopeNorm(vmin=lo if lo < 0 else -reach, vcenter=0.0, vmax=hi if hi > 0 else reach)


def margin_levels(margin: np.ndarray, count: int = 24) -> np.ndarray:
    """Filled-contour levels spanning the data, with S = 0 a level where S crosses it."""
    lo, hi = float(margin.min()), float(margin.max())
    if hi - lo < 1e-12:
        return np.array([lo - 1e-6, hi + 1e-6])
    levels = np.linspace(lo, hi, count + 1)
    if lo < 0 < hi:
        levels = np.union1d(levels, [0.0])
    return levels


def decision_surface(ax: Axes, landscape: dict[str, Any]) -> ContourSet | None:
    """The margin's filled contours on `ax`, centred on S = 0, the ε-box and the sample; the
    S = 0 line (returned) where the grid crosses it, else the title says there is none."""
    coords = np.asarray(landscape["coords"])
    margin = np.asarray(landscape["margin"])
    eps = float(landscape["epsilon"])
    a, b = np.meshgrid(coords, coords, indexing="ij")
    filled = ax.contourf(
        b, a, margin, levels=margin_levels(margin), cmap="RdBu", norm=margin_norm(margin)
    )
    ax.figure.colorbar(filled, ax=ax, label="margin S = z_y − max z_other")
    boundary = None
    if margin.min() < 0 < margin.max():
        boundary = ax.contour(b, a, margin, levels=[0.0], colors="black", linewidths=2.0)
    ax.plot([-eps, eps, eps, -eps, -eps], [-eps, -eps, eps, eps, -eps], "k--", linewidth=1)
    ax.plot([0], [0], "k*", markersize=10)
    ax.set_xlabel("random direction")
    ax.set_ylabel("adversarial direction")
    caption = LandscapeResult.model_validate(landscape).boundary_caption()
    ax.set_title(f"decision surface\n{caption}", fontsize=10)
    return boundary


def landscape_png(landscape: dict[str, Any]) -> bytes:
    """PNG bytes for one landscape dict (as produced by Landscape.to_dict)."""
    coords = np.asarray(landscape["coords"])
    loss = np.asarray(landscape["loss"])
    eps = float(landscape["epsilon"])
    a, b = np.meshgrid(coords, coords, indexing="ij")
    fig = Figure(figsize=(12, 4.8), dpi=100)
    fig.subplots_adjust(wspace=0.35)
    fig.suptitle(
        f"sample {landscape['sample_index']} (label {landscape['label']}), "
        f"{landscape['norm']} ε = {eps:g}"
    )
    surface = fig.add_subplot(1, 2, 1, projection="3d")
    surface.plot_surface(b, a, loss, cmap="viridis", linewidth=0, antialiased=True)
    surface.set_xlabel("random direction")
    surface.set_ylabel("adversarial direction")
    surface.set_zlabel("cross-entropy")
    surface.set_title("loss surface")
    decision_surface(fig.add_subplot(1, 2, 2), landscape)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()

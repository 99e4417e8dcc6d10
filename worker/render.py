"""Pictures of the loss landscapes: a 3-D CE surface and a margin contour with S = 0 drawn."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure


def landscape_png(landscape: dict[str, Any]) -> bytes:
    """PNG bytes for one landscape dict (as produced by Landscape.to_dict)."""
    coords = np.asarray(landscape["coords"])
    loss = np.asarray(landscape["loss"])
    margin = np.asarray(landscape["margin"])
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
    contour = fig.add_subplot(1, 2, 2)
    crosses = margin.min() < 0 < margin.max()
    centre = TwoSlopeNorm(vcenter=0.0) if crosses else None  # white at the boundary
    filled = contour.contourf(b, a, margin, levels=24, cmap="RdBu", norm=centre)
    fig.colorbar(filled, ax=contour, label="margin S = z_y − max z_other")
    if crosses:
        contour.contour(b, a, margin, levels=[0.0], colors="black", linewidths=2.0)
    contour.plot([-eps, eps, eps, -eps, -eps], [-eps, -eps, eps, eps, -eps], "k--", linewidth=1)
    contour.plot([0], [0], "k*", markersize=10)
    contour.set_xlabel("random direction")
    contour.set_ylabel("adversarial direction")
    contour.set_title("decision surface (S = 0: boundary; dashed: ε-box)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()

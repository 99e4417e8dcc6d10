"""Loss and decision surfaces: the grid's geometry, and what robustness looks like in them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustness.config import Norm
from robustness.landscape import Landscape, loss_landscape
from tests.factories.models import adversarial_cnn, digits_split, natural_cnn, to_onnx
from tests.unit.engine_helpers import load_cpu

EPS = 0.1
SAMPLES = 12


def landscapes(model: torch.nn.Module, norm: Norm = Norm.LINF, eps: float = EPS) -> list[Landscape]:
    split = digits_split()
    backend = load_cpu(to_onnx(model), split.x_test).backend
    x = torch.from_numpy(split.x_test[:SAMPLES])
    return [
        loss_landscape(
            backend,
            x[k : k + 1],
            int(split.y_test[k]),
            epsilon=eps,
            norm=norm,
            gen=torch.Generator().manual_seed(k),
            sample_index=k,
        )
        for k in range(SAMPLES)
    ]


def test_grid_geometry_and_centre() -> None:
    split = digits_split()
    scape = landscapes(natural_cnn())[0]
    assert scape.loss.shape == scape.margin.shape == (21, 21)
    assert scape.coords[0] == pytest.approx(-2 * EPS)
    assert scape.coords[10] == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        z = natural_cnn()(torch.from_numpy(split.x_test[:1]))
    centre_ce = F.cross_entropy(z, torch.tensor([int(split.y_test[0])])).item()
    assert scape.loss[10, 10] == pytest.approx(centre_ce, rel=1e-4, abs=1e-6)
    others = z[0].clone()
    others[int(split.y_test[0])] = -np.inf
    assert scape.margin[10, 10] == pytest.approx(
        (z[0, int(split.y_test[0])] - others.max()).item(), rel=1e-4
    )


def test_natural_model_is_steeper_along_the_adversarial_direction() -> None:
    for scape in landscapes(natural_cnn())[:6]:
        along_adv = scape.loss[-1, 10] - scape.loss[10, 10]
        along_rand = abs(scape.loss[10, -1] - scape.loss[10, 10])
        assert along_adv > along_rand


def test_adversarial_training_flattens_the_surfaces() -> None:
    natural, robust = landscapes(natural_cnn()), landscapes(adversarial_cnn())
    rise_nat = np.mean([s.loss[-1, 10] - s.loss[10, 10] for s in natural])
    rise_adv = np.mean([s.loss[-1, 10] - s.loss[10, 10] for s in robust])
    assert rise_adv < rise_nat
    # Among correctly classified samples, how often S = 0 is crossed along d_adv within ε.
    crossed_nat = [s.crosses_boundary_within_eps for s in natural]
    crossed_adv = [s.crosses_boundary_within_eps for s in robust]
    rate_nat = np.mean([c for c in crossed_nat if c is not None])
    rate_adv = np.mean([c for c in crossed_adv if c is not None])
    assert rate_nat > 0.3  # the natural model's boundary really is inside the ball
    assert rate_adv < rate_nat


def test_l2_directions_have_unit_norm() -> None:
    scape = landscapes(natural_cnn(), norm=Norm.L2, eps=0.5)[0]
    assert scape.norm is Norm.L2
    assert scape.coords[-1] == pytest.approx(1.0)
    assert np.isfinite(scape.loss).all()


def test_to_result_is_json_ready() -> None:
    import json

    from robustness.results import LandscapeResult

    body = landscapes(natural_cnn())[0].to_result().model_dump(mode="json")
    assert LandscapeResult.model_validate(json.loads(json.dumps(body))).label == body["label"]
    assert 0.0 <= body["misclassified_fraction_inside_eps"] <= 1.0
    assert "png_sha256" not in body  # a worker adds it once the picture is drawn


def test_decision_boundary_lies_where_the_margin_changes_sign() -> None:
    scape = next(s for s in landscapes(natural_cnn()) if s.crosses_boundary_within_eps)
    lines = scape.decision_boundary()
    assert lines
    coords = np.asarray(scape.coords)
    step = coords[1] - coords[0]
    for a, b in lines[0]:
        i = int(np.clip(np.searchsorted(coords, a) - 1, 0, len(coords) - 2))
        j = int(np.clip(np.searchsorted(coords, b) - 1, 0, len(coords) - 2))
        cell = scape.margin[i : i + 2, j : j + 2]
        assert cell.min() <= 0 <= cell.max()  # each point sits in a cell that straddles S = 0
        assert -2 * EPS - step <= a <= 2 * EPS + step

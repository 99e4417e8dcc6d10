"""Issue 9, req. 2: the report a reviewer wants to look at (report data, pictures, HTML)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from infra.storage import ArtifactStore
from robustness.results import AuditResult, LandscapeResult, Manifest, VulnerableSample
from robustness.vulnerable import MAX_ELEMENTS, pack, thin, unpack
from service.reports import report_html
from tests.factories.models import digits_split, natural_cnn, sklearn_onnx, to_onnx
from tests.unit.engine_helpers import audit
from worker import figures, render
from worker.execution import draw_figures

HOSTILE = '<script>alert("x")</script>'
NAMES = [HOSTILE, *[f"digit {k}" for k in range(1, 10)]]
EPSILONS = (0.05, 0.1, 0.2)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def landscape(margin: np.ndarray, eps: float = 0.1) -> dict[str, Any]:
    coords = np.linspace(-2 * eps, 2 * eps, margin.shape[0])
    return {
        "sample_index": 0, "label": 1, "epsilon": eps, "norm": "linf",
        "coords": coords.tolist(), "loss": np.zeros_like(margin).tolist(),
        "margin": margin.tolist(), "misclassified_fraction_inside_eps": 0.0,
        "crosses_boundary_within_eps": False, "decision_boundary": [],
    }  # fmt: skip


@pytest.fixture(scope="module")
def audited() -> AuditResult:
    """A real engine run on the digits CNN, merged manifest and pictures as a worker does."""
    split = digits_split()
    x, y = split.x_test[:40], split.y_test[:40]
    result = audit(
        to_onnx(natural_cnn()), x, y, epsilons=EPSILONS, steps=5, batch_size=16,
        landscape_samples=1, landscape_resolution=11,
    )  # fmt: skip
    manifest = Manifest(input_range=[0.0, 1.0], class_names=NAMES, versions={"torch": "2.x"})
    return result.model_copy(update={"manifest": manifest})


@pytest.fixture(scope="module")
def page(audited: AuditResult, tmp_path_factory: pytest.TempPathFactory) -> str:
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    body = audited.to_json()
    for ls in body["landscapes"]:
        png = render.landscape_png(ls)
        ls["png_sha256"] = store.save_stream(io.BytesIO(png), max_bytes=len(png)).sha256
    drawn = draw_figures(AuditResult.model_validate(body), store)
    return report_html(report_data("succeeded", drawn.to_json()), store)


def report_data(status: str, result: dict[str, Any] | None, **audit: Any) -> dict[str, Any]:
    return {
        "audit": {
            "id": "a-1", "status": status, "result": result, "backend": None, "error": None,
            "created_at": "2026-12-04T16:00:00Z", "started_at": None, "finished_at": None,
            "progress": {"done": 3, "total": 120, "stage": None, "eta_seconds": None},
            "config": {"norm": "linf", "steps": 5, "restarts": 1, "logit_normalization": "l2"},
            **audit,
        },
        "model": {"id": "m-1", "name": "digits", "version": None, "sha256": None,
                  "class_names": None},
        "dataset": {"id": "d-1", "name": "test", "n": 40, "class_names": None},
    }  # fmt: skip


def images_in(page: str) -> list[np.ndarray]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [pixels(base64.b64decode(src)) for src in found]


def test_the_verdict_is_one_sentence_on_the_largest_epsilon(
    audited: AuditResult, page: str
) -> None:
    verdict = re.search(r"<b>Verdict:</b> (.*?)</p>", page, re.S)
    assert verdict is not None
    text = verdict.group(1)
    top = audited.per_epsilon[-1]
    assert text.startswith("At the largest ε = 0.2 (linf), the mean prediction divergence is")
    assert f"{top.divergence.mean:.4g}" in text
    assert text.endswith(".")
    assert ". " not in text  # one sentence


def test_the_page_is_self_contained_printable_and_its_pictures_are_not_blank(
    audited: AuditResult, page: str
) -> None:
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page
    assert "<link" not in page
    assert "@media print" in page
    assert "break-before:page" in page
    shown = images_in(page)
    # sweep, histogram, 6 vulnerable samples, one landscape per ε
    assert len(shown) == 2 + len(audited.vulnerable) + len(EPSILONS)
    assert len(audited.vulnerable) == 6
    for picture in shown:
        assert picture.std() > 10  # not one flat colour
    for eps in EPSILONS:
        assert f"<h3>ε = {eps:g}</h3>" in page


def test_per_class_table_uses_the_class_names_escaped(audited: AuditResult, page: str) -> None:
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; (0)" in page
    per_class = audited.per_epsilon[-1].per_class
    assert per_class is not None
    assert sum(c.samples for c in per_class) == audited.samples
    for c in per_class:
        if c.label:
            assert f'<td class="name">digit {c.label} ({c.label})</td>' in page


def test_vulnerable_samples_are_the_largest_psi_with_predictions(
    audited: AuditResult, page: str
) -> None:
    psi = np.asarray(audited.per_epsilon[-1].per_sample)
    top = sorted(range(len(psi)), key=lambda i: (-psi[i], i))[:6]
    assert [v.sample_index for v in audited.vulnerable] == top
    for v in audited.vulnerable:
        assert v.divergence == psi[v.sample_index]
        delta = unpack(v.perturbation, v.shape)
        assert np.abs(delta).max() <= 0.2 + 1e-3  # inside the L∞ ball (float16)
        assert f"sample {v.sample_index}</b>" in page
        assert 0 < v.perturbed_probability <= 1


def test_an_all_positive_margin_is_drawn_blue_with_no_boundary() -> None:
    margin = np.linspace(6.4, 16.0, 121).reshape(11, 11)
    norm = render.margin_norm(margin)
    rgba = colormaps["RdBu"](norm(margin))
    assert (rgba[..., 2] > rgba[..., 0]).all()  # every colour on the blue side
    ax = Figure().add_subplot(1, 1, 1)
    assert render.decision_surface(ax, landscape(margin)) is None
    assert "no boundary within ±0.2: margin ≥ 6.4" in ax.get_title()
    caption = LandscapeResult.model_validate(landscape(margin)).boundary_caption()
    assert caption == "no boundary within ±0.2: margin ≥ 6.4"


def test_a_margin_crossing_zero_gets_the_boundary_line_and_white_at_zero() -> None:
    a = np.linspace(-1, 1, 11)
    margin = np.add.outer(4 * a, np.zeros(11)) + 1.0  # S = 0 at a = −0.25
    norm = render.margin_norm(margin)
    assert float(norm(0.0)) == pytest.approx(0.5)
    wrong = colormaps["RdBu"](norm(margin[margin < 0]))
    assert (wrong[..., 0] > wrong[..., 2]).all()  # misclassified points on the red side
    ax = Figure().add_subplot(1, 1, 1)
    boundary = render.decision_surface(ax, landscape(margin))
    assert boundary is not None
    assert list(boundary.levels) == [0.0]
    assert sum(len(p) for p in boundary.allsegs[0]) > 0
    assert "S = 0" in ax.get_title()


@pytest.mark.parametrize("status", ["cancelled", "failed", "running", "queued"])
def test_an_unfinished_audit_shows_its_status_and_never_none(status: str, tmp_path: Path) -> None:
    error = "the model emits NaN" if status == "failed" else None
    page = report_html(report_data(status, None, error=error), ArtifactStore(tmp_path))
    assert "None" not in page
    assert f'class="verdict status-{status}"' in page
    assert f"<b>{status}" in page
    assert "divergence mean" not in page  # no empty results table
    if status == "failed":
        assert "This audit failed and has no results: the model emits NaN." in page
    if status == "running":
        assert "(3 of 120 units done)" in page


def test_tabular_inputs_get_feature_plots_and_images_get_images() -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 1, 20)
    delta = rng.uniform(-0.1, 0.1, 20)
    tabular = VulnerableSample(
        sample_index=0, epsilon=0.1, divergence=0.5, label=0, clean_prediction=0,
        clean_probability=0.9, perturbed_prediction=1, perturbed_probability=0.6,
        input_shape=[20], shape=[20], clean=pack(clean), perturbation=pack(delta),
    )  # fmt: skip
    feature_plot = pixels(figures.sample_png(tabular, [0.0, 1.0]))
    image = tabular.model_copy(update={"input_shape": [1, 4, 5], "shape": [1, 4, 5]})
    image_plot = pixels(figures.sample_png(image, [0.0, 1.0]))
    assert feature_plot.std() > 10
    assert image_plot.std() > 10
    # the feature plot is a two-row figure, the image one a row of three panels
    assert feature_plot.shape[0] / feature_plot.shape[1] > image_plot.shape[0] / image_plot.shape[1]


def test_large_inputs_are_thinned_and_packing_round_trips() -> None:
    picture = np.random.default_rng(1).uniform(0, 1, (3, 224, 224))
    small, stride = thin(picture)
    assert small.size <= MAX_ELEMENTS
    assert stride == 4
    assert small.shape == (3, 56, 56)
    flat, _ = thin(np.arange(20_000, dtype=float))
    assert flat.shape == (MAX_ELEMENTS,)
    assert np.allclose(unpack(pack(small), small.shape), small, atol=1e-3)
    with pytest.raises(ValueError, match="do not hold"):
        unpack(pack(small), [3, 56, 55])


def test_tabular_model_audit_records_feature_vectors() -> None:
    split = digits_split()
    x, y = split.x_test[:16].reshape(16, -1), split.y_test[:16]
    result = audit(sklearn_onnx("logistic"), x, y, epsilons=(0.1,), steps=2, landscape_samples=0)
    assert len(result.vulnerable) == 6
    assert all(v.shape == [64] for v in result.vulnerable)

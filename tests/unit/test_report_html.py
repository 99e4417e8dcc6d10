"""The HTML report: every name, error and note is text, and the page needs no other request."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from infra.storage import ArtifactStore
from service.reports import report_html

HOSTILE = '<script>alert("x")</script>'


class Page(HTMLParser):
    """What a browser would build: the elements, the text and the image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def data(landscapes: list[dict[str, Any]]) -> dict[str, Any]:
    eps = {
        "epsilon": 0.03,
        "divergence": {"mean": 0.0123, "median": 0.01, "p90": 0.02, "max": 0.05,
                       "ci95": [0.011, 0.013]},
        "clean_accuracy": 0.9, "fgsm_accuracy": None, "pgd_accuracy": 0.4,
    }  # fmt: skip
    diagnostics = {
        "evidence": [f"class {HOSTILE} never wins"], "blackbox_note": HOSTILE,
        "gradient_masking_suspected": True, "zero_gradient_fraction": 0.0,
        "nonfinite_gradient_fraction": 0.0, "random_search_wins": 1, "parity_max_abs_diff": None,
    }  # fmt: skip
    result = {
        "per_epsilon": [eps],
        "samples": 16,
        "backend": "torch",
        "diagnostics": diagnostics,
        "landscapes": landscapes,
        "manifest": {"class_names": [HOSTILE, "cat"]},
    }
    return {
        "audit": {
            "id": "a1", "status": "succeeded", "error": f"model {HOSTILE} failed",
            "backend": "torch",
            "result": result,
            "config": {"norm": "linf", "steps": 2, "restarts": 1, "logit_normalization": "l2"},
        },
        "model": {"name": HOSTILE, "version": HOSTILE},
        "dataset": {"name": HOSTILE, "n": 32},
    }  # fmt: skip


def test_hostile_names_are_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    html = report_html(data([]), ArtifactStore(tmp_path))
    page = Page()
    page.feed(html)
    assert "script" not in page.tags
    text = "".join(page.text)
    assert f"Robustness audit of {HOSTILE} {HOSTILE}" in text  # the name, shown as written
    assert f"model {HOSTILE} failed" in text
    assert f"class {HOSTILE} never wins" in text
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_landscapes_are_inlined_so_the_page_stands_alone(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    png = b"\x89PNG\r\n\x1a\n not really a picture"
    stored = store.save_stream(io.BytesIO(png), max_bytes=1 << 20)
    grid = {
        "epsilon": 0.03, "norm": "linf", "coords": [-0.06, 0.0, 0.06], "loss": [[0.0] * 3] * 3,
        "margin": [[1.0, 2.0, 3.0]] * 3, "misclassified_fraction_inside_eps": 0.0,
        "crosses_boundary_within_eps": False, "decision_boundary": [],
    }  # fmt: skip
    shown = {**grid, "png_sha256": stored.sha256, "sample_index": 3, "label": 1}
    missing = {**grid, "png_sha256": "0" * 64, "sample_index": 4, "label": 0}
    page = Page()
    page.feed(report_html(data([shown, missing]), store))
    assert page.images == ["data:image/png;base64," + base64.b64encode(png).decode()]
    text = "".join(page.text)
    assert "sample 3 (cat (1)): no boundary within ±0.06: margin ≥ 1" in text

"""The web UI's server-drawn SVG charts: round ticks, every point drawn, names escaped."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

from service.ui.charts import Axes, Point, Series, line_chart, nice_ticks

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("lo", "hi", "first", "last"),
    [
        (0.0, 1.0, 0.0, 1.0),
        (0.0123, 0.0871, 0.0, 0.1),
        (0.2, 0.2, 0.2, 0.4),
        (-3.0, 7.0, -4.0, 8.0),
    ],
)
def test_ticks_are_round_and_cover_the_range(
    lo: float, hi: float, first: float, last: float
) -> None:
    ticks = nice_ticks(lo, hi)
    assert ticks[0] <= lo
    assert ticks[-1] >= hi
    assert ticks[0] == pytest.approx(first)
    assert ticks[-1] == pytest.approx(last)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1


def test_a_chart_draws_each_point_band_and_escapes_every_name() -> None:
    hostile = "</text><script>alert(1)</script>"
    series = [
        Series(hostile, (Point(0.01, 0.1, 0.08, 0.12, note=hostile), Point(0.03, 0.3, 0.2, 0.4))),
        Series("PGD", (Point(0.01, 0.5), Point(0.03, 0.2))),
    ]
    svg = str(line_chart(series, Axes(hostile, "ε", "ψ", x_ticks=((0.01, hostile),))))
    assert "<script>" not in svg
    root = ET.fromstring(svg)  # noqa: S314 - our own output; well-formed: nothing broke out
    assert len(root.findall(f".//{SVG}circle")) == 4
    assert len(root.findall(f".//{SVG}path")) == 2
    assert len(root.findall(f".//{SVG}polygon")) == 1  # the CI band of the first series
    ys = [float(c.get("cy")) for c in root.findall(f".//{SVG}circle")[:2]]
    assert ys[0] > ys[1]  # larger values are drawn higher (smaller SVG y)


def test_no_points_say_so_instead_of_an_empty_frame() -> None:
    assert "No data" in str(line_chart([Series("ψ", ())], Axes("t", "x", "y")))

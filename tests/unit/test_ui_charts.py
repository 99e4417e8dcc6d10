"""The web UI's server-drawn SVG charts: round ticks, every point drawn, names escaped."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import jinja2
import pytest

from service.ui.charts import Axes, Point, Series, layout, line_chart, nice_ticks

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
    ys = [float(c.attrib["cy"]) for c in root.findall(f".//{SVG}circle")[:2]]
    assert ys[0] > ys[1]  # larger values are drawn higher (smaller SVG y)


def test_no_points_say_so_instead_of_an_empty_frame() -> None:
    assert "No data" in str(line_chart([Series("ψ", ())], Axes("t", "x", "y")))


def test_the_template_escapes_a_hostile_name_everywhere_it_shows() -> None:
    """Escaping is Jinja's autoescape (no hand-made escape()): texts round-trip, none breaks out."""
    hostile = '<script>alert(1)</script>"&'
    series = [Series(hostile, (Point(1.0, 0.2, note=hostile), Point(2.0, 0.4)))]
    axes = Axes(hostile, hostile, hostile, x_ticks=((1.0, "v1"), (2.0, hostile)))
    chart = line_chart(series, axes)
    svg = str(chart)
    assert "<script" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&amp;" in svg
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert root.get("aria-label") == hostile  # an attribute: the quote did not end it
    assert root.find(f"{SVG}title").text == hostile  # type: ignore[union-attr]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count(hostile) == 4  # the title, both axis names and the legend
    assert "<script>alert(1…" in texts  # the x tick label, clipped to 16 characters
    tips = [t.text for t in root.findall(f"{SVG}circle/{SVG}title")]
    assert tips == [f"{hostile}: {hostile}", f"{hostile}: 0.4"]
    # Markup, so a page's autoescaping {{ chart }} embeds it as SVG rather than as text.
    page = jinja2.Environment(autoescape=True).from_string("{{ chart }}").render(chart=chart)
    assert page.startswith("<svg")
    assert page == svg


def test_the_geometry_turns_long_axis_names_and_draws_a_lone_interval_as_a_whisker() -> None:
    lone = Series("ψ", (Point(0.5, 0.3, 0.2, 0.4),))
    chart = layout([lone], Axes("t", "ε", "ψ"))
    assert chart is not None
    assert chart.y_label_transform == "translate(18 149.0)"  # a symbol stays upright
    (trace,) = chart.traces
    assert trace.band is None  # one point: neither band nor line
    assert trace.path is None
    (marker,) = trace.markers
    assert marker.whisker is not None
    assert marker.whisker[0] > marker.cy > marker.whisker[1]  # lo below, hi above the point
    turned = layout([lone], Axes("t", "ε", "divergence"))
    assert turned is not None
    assert turned.y_label_transform.endswith(" rotate(-90)")
    assert layout([Series("ψ", ())], Axes("t", "x", "y")) is None

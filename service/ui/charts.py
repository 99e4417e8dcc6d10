"""Line charts as inline SVG, drawn on the server: no script, no build step, prints sharply.

The geometry (scales, ticks, coordinates, bands, legend) is plain Python here; all markup is in
templates/ui/_line_chart.html, rendered with autoescape on. Series names, tick labels, tooltips
and titles are user data (model names and versions), so Jinja escapes every one of them: nothing
here escapes text or marks it safe by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 50, 52
# Colour-blind-safe (Okabe–Ito), distinct in grey print too.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    lo: float | None = None  # an interval around y (a 95% CI), drawn as a band
    hi: float | None = None
    note: str = ""  # the tooltip


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Axes:
    title: str
    x_label: str
    y_label: str
    x_ticks: tuple[tuple[float, str], ...] = ()  # fixed ticks (versions, dates); else computed
    y_format: Callable[[float], str] = field(default=lambda v: f"{v:.3g}")
    y_min: float | None = None  # e.g. 0 and 1 for an accuracy
    y_max: float | None = None


@dataclass(frozen=True)
class Frame:
    """Fixed positions in SVG units: the canvas, the plot area's edges, where labels sit."""

    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    title_y: int = 18
    legend_y: int = 26  # a row under the title: it never covers the title or the lines
    legend_text_y: int = 36
    y_tick_label_x: int = LEFT - 6
    x_tick_end: int = HEIGHT - BOTTOM + 4
    x_tick_label_y: int = HEIGHT - BOTTOM + 17
    x_name_x: float = (LEFT + WIDTH - RIGHT) / 2
    x_name_y: int = HEIGHT - 10


FRAME = Frame()


@dataclass(frozen=True)
class Tick:
    at: float  # SVG y of a grid line, or SVG x of an x tick
    label_at: float  # where its label's baseline (y axis) or centre (x axis) is
    label: str


@dataclass(frozen=True)
class Marker:
    cx: float
    cy: float
    note: str  # the tooltip, after the series' name
    whisker: tuple[float, float] | None = None  # SVG y of lo and hi, where no band is drawn


@dataclass(frozen=True)
class Trace:
    """One series, drawn: its band and line (each only with two points or more), markers."""

    name: str
    colour: str
    band: str | None  # polygon points: the upper edge left to right, the lower one back
    path: str | None  # path data
    markers: tuple[Marker, ...]


@dataclass(frozen=True)
class LegendEntry:
    x: int
    text_x: int
    colour: str
    label: str


@dataclass(frozen=True)
class Chart:
    """Everything the template draws, in SVG units; texts unescaped (the template escapes)."""

    title: str
    x_label: str
    y_label: str
    y_label_transform: str
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    traces: tuple[Trace, ...]
    legend: tuple[LegendEntry, ...]


@dataclass(frozen=True)
class Scale:
    """Data to SVG coordinates: x padded by 4% at each end, y clamped to the tick range."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def x(self, value: float) -> float:
        pad = 0.04 * (WIDTH - LEFT - RIGHT)
        span = WIDTH - LEFT - RIGHT - 2 * pad
        return LEFT + pad + (value - self.x_lo) / (self.x_hi - self.x_lo) * span

    def y(self, value: float) -> float:
        value = min(max(value, self.y_lo), self.y_hi)
        span = HEIGHT - TOP - BOTTOM
        return HEIGHT - BOTTOM - (value - self.y_lo) / (self.y_hi - self.y_lo) * span

    def xy(self, x: float, y: float) -> str:
        return f"{px(self.x(x))},{px(self.y(y))}"


def px(value: float) -> str:
    """A coordinate to one decimal: finer than a screen's pixel, and it keeps the SVG small."""
    return f"{value:.1f}"


# Autoescape on whatever the file is called: every text in a chart is data. PackageLoader rather
# than Flask's env, so a chart renders outside a request too (unit tests, scripts).
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("service", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.filters["px"] = px


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def line_chart(series: Sequence[Series], axes: Axes) -> Markup:
    """An SVG chart of the series (lines with markers and interval bands), with a legend."""
    template = _TEMPLATES.get_template("ui/_line_chart.html")
    chart = layout(series, axes)
    # A rendered template module is Markup through the __html__ protocol (as `{% import %}`
    # uses it): Jinja escaped every value, so nothing is wrapped in Markup() by hand.
    return template.make_module({"chart": chart, "frame": FRAME}).__html__()


def layout(series: Sequence[Series], axes: Axes) -> Chart | None:
    """The chart's geometry; None when there is no point to draw."""
    points = [p for s in series for p in s.points]
    if not points:
        return None
    xs = [p.x for p in points] + [t[0] for t in axes.x_ticks]
    ys = [v for p in points for v in (p.y, p.lo, p.hi) if v is not None and math.isfinite(v)]
    y_ticks = nice_ticks(
        min([*ys, axes.y_min] if axes.y_min is not None else ys),
        max([*ys, axes.y_max] if axes.y_max is not None else ys),
    )
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_ticks = axes.x_ticks or tuple((t, f"{t:g}") for t in nice_ticks(x_lo, x_hi, 6))
    if not axes.x_ticks:
        x_lo, x_hi = min(x_lo, x_ticks[0][0]), max(x_hi, x_ticks[-1][0])
    scale = Scale(x_lo, x_hi, y_ticks[0], y_ticks[-1])
    return Chart(
        title=axes.title,
        x_label=axes.x_label,
        y_label=axes.y_label,
        y_label_transform=_y_label_transform(axes.y_label),
        # A y tick label's baseline 4 below its grid line centres the 11px text on the line.
        y_ticks=tuple(Tick(scale.y(v), scale.y(v) + 4, axes.y_format(v)) for v in y_ticks),
        x_ticks=tuple(Tick(scale.x(v), scale.x(v), _clip(label)) for v, label in x_ticks),
        traces=tuple(
            _trace(s, COLOURS[i % len(COLOURS)], scale, axes.y_format) for i, s in enumerate(series)
        ),
        legend=_legend(series),
    )


def _trace(s: Series, colour: str, scale: Scale, fmt: Callable[[float], str]) -> Trace:
    pts = sorted((p for p in s.points if math.isfinite(p.y)), key=lambda p: p.x)
    band = [(p, p.lo, p.hi) for p in pts if p.lo is not None and p.hi is not None]
    upper = [scale.xy(p.x, hi) for p, _, hi in band]
    lower = [scale.xy(p.x, lo) for p, lo, _ in reversed(band)]
    markers = []
    for p in pts:
        # A lone interval cannot be a band: it is drawn as a whisker through its marker.
        whisker = None
        if p.lo is not None and p.hi is not None and len(band) < 2:
            whisker = (scale.y(p.lo), scale.y(p.hi))
        markers.append(Marker(scale.x(p.x), scale.y(p.y), p.note or fmt(p.y), whisker))
    return Trace(
        name=s.name,
        colour=colour,
        band=" ".join(upper + lower) if len(band) >= 2 else None,
        path="M" + " L".join(scale.xy(p.x, p.y) for p in pts) if len(pts) >= 2 else None,
        markers=tuple(markers),
    )


def _legend(series: Sequence[Series]) -> tuple[LegendEntry, ...]:
    """A row under the title, left to right, each entry as wide as its (clipped) name."""
    out = []
    x = LEFT
    for i, s in enumerate(series):
        label = _clip(s.name, 32)
        out.append(LegendEntry(x, x + 16, COLOURS[i % len(COLOURS)], label))
        x += 32 + int(6 * len(label))
    return tuple(out)


def _y_label_transform(label: str) -> str:
    """Beside the axis: upright when it is a symbol (ψ), else turned along the axis."""
    middle = (TOP + HEIGHT - BOTTOM) / 2
    turn = "" if len(label) <= 2 else " rotate(-90)"
    return f"translate(18 {middle}){turn}"


def _clip(text: str, limit: int = 16) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

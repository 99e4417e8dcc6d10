"""Line charts as inline SVG, drawn on the server: no script, no build step, prints sharply.

Every text in a chart (series names, tick labels, tooltips) is escaped: model names and
versions are user data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

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
    points = [p for s in series for p in s.points]
    if not points:
        return Markup('<p class="empty">No data to chart yet.</p>')
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
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        pad = 0.04 * (WIDTH - LEFT - RIGHT)
        return LEFT + pad + (x - x_lo) / (x_hi - x_lo) * (WIDTH - LEFT - RIGHT - 2 * pad)

    def sy(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return HEIGHT - BOTTOM - (y - y_lo) / (y_hi - y_lo) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" '
        f'aria-label="{escape(axes.title)}">',
        f"<title>{escape(axes.title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="18" class="chart-title" font-size="14" font-weight="600" '
        f'fill="#1b2430">{escape(axes.title)}</text>',
    ]
    parts.extend(_frame(axes, y_ticks, x_ticks, sx, sy))
    for i, s in enumerate(series):
        parts.extend(_series(s, COLOURS[i % len(COLOURS)], sx, sy, axes.y_format))
    parts.extend(_legend(series))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above went through escape()


def _frame(
    axes: Axes,
    y_ticks: list[float],
    x_ticks: tuple[tuple[float, str], ...],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
) -> list[str]:
    """Grid lines, ticks and their labels, the two axes and their names."""
    out = []
    for value in y_ticks:
        y = sy(value)
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ed"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#4a5566">{escape(axes.y_format(value))}</text>'
        )
    for value, label in x_ticks:
        x = sx(value)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM + 4}" '
            f'stroke="#4a5566"/><text x="{x:.1f}" y="{HEIGHT - BOTTOM + 17}" text-anchor="middle" '
            f'font-size="11" fill="#4a5566">{escape(_clip(label))}</text>'
        )
    out.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" '
        f'stroke="#4a5566"/><line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" '
        f'stroke="#4a5566"/>'
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle" '
        f'font-size="12" fill="#1b2430">{escape(axes.x_label)}</text>' + _y_label(axes.y_label)
    )
    return out


def _series(
    s: Series,
    colour: str,
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    fmt: Callable[[float], str],
) -> list[str]:
    pts = sorted((p for p in s.points if math.isfinite(p.y)), key=lambda p: p.x)
    out = []
    band = [p for p in pts if p.lo is not None and p.hi is not None]
    if len(band) >= 2:
        upper = [f"{sx(p.x):.1f},{sy(p.hi):.1f}" for p in band]  # type: ignore[arg-type]
        lower = [f"{sx(p.x):.1f},{sy(p.lo):.1f}" for p in reversed(band)]  # type: ignore[arg-type]
        out.append(
            f'<polygon class="band" points="{" ".join(upper + lower)}" fill="{colour}" '
            f'fill-opacity="0.15" stroke="none"/>'
        )
    if len(pts) >= 2:
        path = "M" + " L".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in pts)
        out.append(
            f'<path class="line" d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
    for p in pts:
        note = p.note or fmt(p.y)
        if p.lo is not None and p.hi is not None and len(band) < 2:
            out.append(
                f'<line x1="{sx(p.x):.1f}" x2="{sx(p.x):.1f}" y1="{sy(p.lo):.1f}" '
                f'y2="{sy(p.hi):.1f}" stroke="{colour}" stroke-width="1.5"/>'
            )
        out.append(
            f'<circle cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="3.5" fill="{colour}">'
            f"<title>{escape(s.name)}: {escape(note)}</title></circle>"
        )
    return out


def _legend(series: Sequence[Series]) -> list[str]:
    """A row under the title, left to right: it never covers the title or the lines."""
    out = []
    x = LEFT
    for i, s in enumerate(series):
        label = _clip(s.name, 32)
        out.append(
            f'<rect x="{x}" y="26" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{x + 16}" y="36" font-size="11" fill="#1b2430">{escape(label)}</text>'
        )
        x += 32 + int(6 * len(label))
    return out


def _y_label(label: str) -> str:
    """Beside the axis: upright when it is a symbol (ψ), else turned along the axis."""
    middle = (TOP + HEIGHT - BOTTOM) / 2
    turn = "" if len(label) <= 2 else " rotate(-90)"
    return (
        f'<text transform="translate(18 {middle}){turn}" text-anchor="middle" font-size="13" '
        f'fill="#1b2430">{escape(label)}</text>'
    )


def _clip(text: str, limit: int = 16) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Line charts as inline SVG text, so the report is one self-contained HTML file with no plotting dependency.

:func:`line_chart` draws named series of ``(x, y)`` points (a ``None`` y
breaks the line) on linear axes with ticks at round numbers, a legend, and
optional vertical markers (an on-sale) and a diagonal (the perfect calibration
or the chance ROC line). Every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

WIDTH: Final = 720
HEIGHT: Final = 320
MARGIN_LEFT: Final = 64
MARGIN_RIGHT: Final = 170  # room for the legend
MARGIN_TOP: Final = 28
MARGIN_BOTTOM: Final = 44
COLOURS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

Point = tuple[float, float | None]


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical line at x with a label (the on-sale time)."""

    x: float
    label: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks: list[float] = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    markers: Sequence[Marker] = (),
    diagonal: bool = False,
    dots: bool = False,
) -> str:
    """An ``<svg>`` element drawing each series as a polyline (None values break it)."""
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points if y is not None and math.isfinite(y)]
    x_low, x_high = x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0))
    y_low, y_high = y_range or ((min(0.0, *ys), max(ys)) if ys else (0.0, 1.0))
    if x_high <= x_low:
        x_high = x_low + 1.0
    if y_high <= y_low:
        y_high = y_low + 1.0
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y_low) / (y_high - y_low) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="11">',
        f'<text x="{MARGIN_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for tick in nice_ticks(x_low, x_high):
        if x_low <= tick <= x_high:
            x = sx(tick)
            bottom = MARGIN_TOP + plot_h
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>')
            parts.append(f'<text x="{x:.1f}" y="{MARGIN_TOP + plot_h + 16}" text-anchor="middle">{_label(tick)}</text>')
    for tick in nice_ticks(y_low, y_high):
        if y_low <= tick <= y_high:
            y = sy(tick)
            parts.append(
                f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{MARGIN_LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
            )
            parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    parts.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text transform="translate(14 {MARGIN_TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>"
    )
    if diagonal:
        parts.append(
            f'<line x1="{sx(x_low):.1f}" y1="{sy(y_low):.1f}" x2="{sx(x_high):.1f}" y2="{sy(y_high):.1f}" '
            'stroke="#bbb" stroke-dasharray="4 3"/>'
        )
    for marker in markers:
        if x_low <= marker.x <= x_high:
            x = sx(marker.x)
            parts.append(
                f'<line x1="{x:.1f}" y1="{MARGIN_TOP}" x2="{x:.1f}" y2="{MARGIN_TOP + plot_h}" '
                'stroke="#444" stroke-dasharray="2 2"/>'
            )
            parts.append(f'<text x="{x + 3:.1f}" y="{MARGIN_TOP + 11}">{escape(marker.label)}</text>')
    for number, (name, points) in enumerate(series.items()):
        colour = COLOURS[number % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for point_x, point_y in points:
            if point_y is None or not math.isfinite(point_y):
                runs.append([])
                continue
            clamped = min(max(point_y, y_low), y_high)
            runs[-1].append(f"{sx(point_x):.1f},{sy(clamped):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{" ".join(run)}"/>')
            if dots or len(run) == 1:
                parts.extend(
                    f'<circle cx="{point.split(",")[0]}" cy="{point.split(",")[1]}" r="2.5" fill="{colour}"/>'
                    for point in run
                )
        legend_y = MARGIN_TOP + 12 + number * 16
        legend_x = MARGIN_LEFT + plot_w + 12
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 18}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{legend_x + 24}" y="{legend_y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)

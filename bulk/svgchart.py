"""Inline SVG line charts for the HTML report: no library, no script, no network.

:func:`line_chart` draws one or more series over a shared x axis (seconds of run time) as
``<path>`` elements, one per series, each carrying ``data-series`` (its name) and
``data-points`` (how many points it draws). A missing value (``None``) breaks the line
instead of drawing it at zero, so a second without any finished request is a gap, not a
false "0 ms". Every label is HTML-escaped here; callers pass plain text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "duration_label", "line_chart"]

_W, _H = 1000, 260  # the viewBox; the SVG scales to the page width
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 14, 48


@dataclass(frozen=True, slots=True)
class Series:
    name: str  # shown in the legend, and the path's data-series
    colour: str  # a CSS colour (ours, never input)
    values: Sequence[float | None]  # one per x; None: no value at that x


def duration_label(seconds: float) -> str:
    """``0 s``, ``45 s``, ``2 min 5 s``, ``3 h 20 min``: an x-axis tick."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"


def _nice_max(value: float) -> float:
    """The smallest 1/2/3/4/5/6/8 x 10^k at or above ``value`` (the y axis top, in 4 steps)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 3, 4, 5, 6, 8, 10):
        top = step * 10**exp
        if top >= value:
            return float(top)
    return float(10 ** (exp + 1))  # pragma: no cover - the loop ends at 10


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:.3g}"


def line_chart(title: str, unit: str, xs: Sequence[float], series: Sequence[Series],
               *, marks: Sequence[tuple[float, str]] = ()) -> str:
    """An ``<svg>`` with a titled line chart of ``series`` over ``xs`` (seconds).

    ``marks`` are vertical dashed lines with a label (e.g. where a resumed run starts).
    """
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    x0, x1 = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0
    top = _nice_max(max((v for s in series for v in s.values if v is not None), default=0.0))

    def px(x: float) -> float:
        return _LEFT + (x - x0) / span * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - y / top * plot_h

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for i in range(5):  # horizontal grid with y labels
        y = top * i / 4
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
                     f'<text class="ylab" x="{_LEFT - 6}" y="{py(y) + 4:.1f}">{escape(_number(y))}</text>')
    parts.append(f'<text class="unit" x="4" y="{_TOP + 4}">{escape(unit)}</text>')
    for i in range(6):  # x ticks
        x = x0 + span * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"  # the end labels stay inside
        parts.append(f'<text class="xlab" text-anchor="{anchor}" x="{px(x):.1f}" y="{_TOP + plot_h + 18}">'
                     f'{escape(duration_label(x))}</text>')
    for x, label in marks:
        parts.append(f'<line class="mark" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{_TOP}" y2="{_TOP + plot_h}"/>'
                     f'<text class="marklab" x="{px(x) + 4:.1f}" y="{_TOP + 12}">{escape(label)}</text>')
    for s in series:
        d, points, pen_down = [], 0, False
        for x, v in zip(xs, s.values, strict=False):  # one value per x by contract; never raise while drawing a report
            if v is None:
                pen_down = False
                continue
            d.append(f"{'L' if pen_down else 'M'}{px(x):.1f},{py(v):.1f}")
            points += 1
            pen_down = True
        parts.append(f'<path class="line" data-series="{escape(s.name)}" data-points="{points}" '
                     f'stroke="{s.colour}" d="{" ".join(d)}"/>')
    for i, s in enumerate(series):  # legend
        lx = _LEFT + 10 + i * 170
        parts.append(f'<rect x="{lx}" y="{_H - 12}" width="14" height="4" fill="{s.colour}"/>'
                     f'<text class="legend" x="{lx + 18}" y="{_H - 6}">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)

"""Drawing daily spend: stacked bars in the terminal, and PNG / SVG / HTML files through matplotlib.

Amounts are exact Decimals until the last step: a bar's segment ends are computed from exact running
totals, and only the final pixel or character position is a float or int. Unpriced calls are never
drawn as $0: they have no bar and are counted beside the day and in the legend.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.text import Text

from turnledger.cli.chart_data import DailySpend, Series
from turnledger.cli.output import shown, usd

GLYPHS = ("█", "▓", "▒", "░", "#", "=", "+", ":")
"""One per series: distinct even without colour (piped output, NO_COLOR)."""
COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_white", "bright_black")
IMAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
MAX_SERIES = len(GLYPHS)

FILE_SUFFIXES = (".png", ".svg", ".html")
DEFAULT_SIZE = (1200, 600)
DPI = 100


def short_usd(value: Decimal) -> str:
    """A label, not a ledger figure: cents from $1 up, else three significant digits (exact: see --format)."""
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return usd(value.quantize(Decimal("0.01"), ROUND_HALF_EVEN), min_places=2)
    step = Decimal(1).scaleb(value.adjusted() - 2)
    return usd(value.quantize(step, ROUND_HALF_EVEN))


def calls(n: int, adjective: str = "") -> str:
    return f"{n} {adjective + ' ' if adjective else ''}call{'s' * (n != 1)}"


def _segments(day_values: Sequence[Decimal], scale: Decimal, width: int) -> list[int]:
    """Character counts per series for one day, from exact running totals so rounding never drifts."""
    out: list[int] = []
    running = Decimal(0)
    drawn = 0
    for value in day_values:
        running += value
        end = min(width, int((running * width / scale).to_integral_value(ROUND_HALF_EVEN))) if scale else 0
        # Never backwards (an earlier segment may have been widened), and a series with any spend
        # that day shows at least one character.
        end = max(end, drawn + 1 if value > 0 else drawn)
        out.append(end - drawn)
        drawn = end
    # The one-character minimum can overrun the width: take the overrun from the longest segments.
    while sum(out) > width:
        out[out.index(max(out))] -= 1
    return out


def terminal_lines(spend: DailySpend, *, width: int = 80) -> list[Text]:
    """The chart as lines of text: one bar per day, then a legend with each series' exact share."""
    spend = spend.top(MAX_SERIES)
    series = spend.series
    totals = {d: spend.day_total(d) for d in spend.days}
    labels = {d: short_usd(t) if t else "-" for d, t in totals.items()}
    notes = {d: f" +{n} unpriced" if (n := spend.day_unpriced(d)) else "" for d in spend.days}
    years = {d.year for d in spend.days}
    day_fmt = "%Y-%m-%d" if len(years) > 1 else "%m-%d"
    day_width = len(spend.days[0].strftime(day_fmt)) if spend.days else 5
    tail = max((len(labels[d]) + len(notes[d]) for d in spend.days), default=1)
    bar_width = max(10, min(60, width - day_width - tail - 4))
    scale = max(totals.values(), default=Decimal(0))

    first, last = (spend.days[0], spend.days[-1]) if spend.days else (None, None)
    unpriced_note = f", {calls(spend.unpriced_calls, 'unpriced')} not drawn" if spend.unpriced_calls else ""
    lines = [
        Text(f"Daily spend by {spend.by.value}, {first} to {last} (UTC)", style="bold"),
        Text(f"total {usd(spend.total)}{unpriced_note}"),
        Text(""),
    ]
    for day in spend.days:
        line = Text(day.strftime(day_fmt).rjust(day_width) + " ")
        values = [s.cost_by_day.get(day, Decimal(0)) for s in series]
        counts = _segments(values, scale, bar_width)
        for i, count in enumerate(counts):
            line.append(GLYPHS[i] * count, style=COLORS[i])
        line.append(" " * (bar_width - sum(counts)) + " " + labels[day])
        if notes[day]:
            line.append(notes[day], style="yellow")
        lines.append(line)
    lines.append(Text(""))
    lines.extend(legend_lines(series, spend.total))
    return lines


def legend_lines(series: Sequence[Series], total: Decimal) -> list[Text]:
    names = [shown(s.name) for s in series]
    # Padded in terminal columns, not characters: a CJK character takes two.
    name_width = max(map(cell_len, names), default=0)
    out = []
    for i, s in enumerate(series):
        line = Text(GLYPHS[i], style=COLORS[i])
        line.append(f" {names[i]}{' ' * (name_width - cell_len(names[i]))}  ")
        if s.total is None:
            line.append(f"unpriced: {calls(s.unpriced_calls)}, cost unknown", style="yellow")
        else:
            share = f"{(s.total * 100 / total).quantize(Decimal(1), ROUND_HALF_EVEN)}%" if total else "-"
            line.append(f"{usd(s.total):>14}  {share:>4}")
            if s.unpriced_calls:
                line.append(f"  +{s.unpriced_calls} unpriced", style="yellow")
        out.append(line)
    return out


def parse_size(text: str) -> tuple[int, int] | None:
    """``1200x600`` -> ``(1200, 600)``; ``None`` if it is not two positive integers (at most 10000)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.strip().isdigit() or not h.strip().isdigit():
        return None
    size = (int(w), int(h))
    return size if all(0 < v <= 10_000 for v in size) else None


def write_file(spend: DailySpend, path: Path, size: tuple[int, int] = DEFAULT_SIZE) -> None:
    """A PNG or SVG of exactly ``size`` pixels, or an HTML page with the SVG and the exact figures."""
    suffix = path.suffix.lower()
    figure = _figure(spend.top(MAX_SERIES), size)
    if suffix == ".html":
        svg = io.StringIO()
        figure.savefig(svg, format="svg")
        path.write_text(_html_page(spend, svg.getvalue()), encoding="utf-8")
    else:
        figure.savefig(path, format=suffix.lstrip("."), dpi=DPI)


def _figure(spend: DailySpend, size: tuple[int, int]) -> Any:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    positions = list(range(len(spend.days)))
    running = [Decimal(0)] * len(spend.days)
    for i, s in enumerate(spend.series):
        values = [s.cost_by_day.get(d, Decimal(0)) for d in spend.days]
        if s.total is None:
            continue
        label = f"{s.name} ({usd(s.total)})" + (f", +{s.unpriced_calls} unpriced" if s.unpriced_calls else "")
        ax.bar(
            positions,
            [float(v) for v in values],
            bottom=[float(r) for r in running],
            color=IMAGE_COLORS[i % len(IMAGE_COLORS)],
            label=_literal(label),
            width=0.8,
        )
        running = [r + v for r, v in zip(running, values, strict=True)]
    rotation = 90 if len(spend.days) > 20 else 0
    ax.set_xticks(positions, [_tick(d, spend.days) for d in spend.days], rotation=rotation, fontsize=8)
    ax.set_ylabel("USD per day")
    ax.yaxis.set_major_formatter(lambda y, _pos: f"${y:,.4g}")
    title = f"Daily spend by {spend.by.value} (UTC), total {usd(spend.total)}"
    if spend.unpriced_calls:
        title += f"; {calls(spend.unpriced_calls, 'unpriced')} not drawn (cost unknown, not $0)"
    ax.set_title(_literal(title), fontsize=10)
    if any(s.total is not None for s in spend.series):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no priced spend in this range", ha="center", va="center", transform=ax.transAxes)
    return figure


def _literal(text: str) -> str:
    """Text matplotlib must not read as mathtext (a pair of ``$`` would start a formula)."""
    return text.replace("$", r"\$")


def _tick(day: date, days: Sequence[date]) -> str:
    return day.isoformat() if len({d.year for d in days}) > 1 else day.strftime("%m-%d")


def _html_page(spend: DailySpend, svg: str) -> str:
    names = [s.name for s in spend.series]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for day in spend.days:
        cells = []
        for s in spend.series:
            cost = s.cost_by_day.get(day)
            n = s.unpriced_by_day.get(day, 0)
            text = "" if cost is None else usd(cost)
            text += f" +{n} unpriced" if n else ""
            cells.append(f"<td>{html.escape(text.strip())}</td>")
        rows.append(f"<tr><th>{day.isoformat()}</th>{''.join(cells)}<td>{usd(spend.day_total(day))}</td></tr>")
    svg_body = svg[svg.index("<svg") :]
    title = f"Daily spend by {html.escape(spend.by.value)}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{title}</h1>{svg_body}"
        f"<p>Total {usd(spend.total)} (exact). Unpriced calls have no known cost and are not counted as $0: "
        f"{spend.unpriced_calls}.</p>"
        f"<table><thead><tr><th>day (UTC)</th>{head}<th>day total</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></body></html>\n"
    )


__all__ = ["DEFAULT_SIZE", "FILE_SUFFIXES", "MAX_SERIES", "parse_size", "short_usd", "terminal_lines", "write_file"]

"""The CLI's pure pieces: money as people read it, the chart's bar arithmetic, ranges and sizes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from turnledger.cli.chart_data import DailySpend, Series, day_range
from turnledger.cli.chart_render import _segments, parse_size, short_usd, terminal_lines
from turnledger.cli.output import per_million, usd
from turnledger.store.reports import ReportBy


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (Decimal("0.000405"), {}, "$0.000405"),
        (Decimal("1.5E-7"), {}, "$0.00000015"),  # never exponent notation
        (Decimal("0.00450000"), {}, "$0.0045"),
        (Decimal("12"), {"min_places": 2}, "$12.00"),
        (Decimal("-0.25"), {}, "-$0.25"),
        (Decimal(0), {}, "$0"),
        (None, {}, "unpriced"),
    ],
)
def test_usd_is_exact_fixed_point_and_unpriced_is_a_word(
    value: Decimal | None, kwargs: dict[str, int], expected: str
) -> None:
    assert usd(value, **kwargs) == expected


def test_rates_read_per_million_tokens() -> None:
    assert per_million(Decimal("0.00000015")) == "$0.15"
    assert per_million(Decimal("0.000002")) == "$2.00"
    assert per_million(None) == "-"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1234.5678", "$1234.57"), ("0.0021093", "$0.00211"), ("0.000036", "$0.000036"), ("0", "$0")],
)
def test_chart_labels_round_to_cents_or_three_significant_digits(value: str, expected: str) -> None:
    assert short_usd(Decimal(value)) == expected


def test_segments_fill_the_width_for_the_biggest_day_and_never_go_backwards() -> None:
    width = 50
    assert _segments([Decimal("0.75"), Decimal("0.25")], Decimal(1), width) == [38, 12]
    # A sliver still shows one character, and the one-character minimums never overrun the width.
    tiny = _segments([Decimal("0.999"), Decimal("0.0005"), Decimal(0), Decimal("0.0005")], Decimal(1), width)
    assert tiny == [48, 1, 0, 1]
    assert all(n >= 0 for n in tiny) and sum(tiny) == width
    assert _segments([Decimal(0), Decimal(0)], Decimal(0), width) == [0, 0]


def test_day_range_covers_whole_utc_days() -> None:
    since = datetime(2026, 11, 1, 18, 30, tzinfo=UTC)
    until = datetime(2026, 11, 4, 0, 0, tzinfo=UTC)  # exclusive: the 4th is not in the range
    assert day_range(since, until) == [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)]


@pytest.mark.parametrize(("text", "size"), [("1200x600", (1200, 600)), ("640X360", (640, 360)), ("0x5", None)])
def test_parse_size(text: str, size: tuple[int, int] | None) -> None:
    assert parse_size(text) == size


def test_series_beyond_the_glyphs_fold_exactly_into_other() -> None:
    days = [date(2026, 11, 1)]
    series = [Series(f"m{i}", {days[0]: Decimal(10 - i) / 10}, calls=1) for i in range(10)]
    spend = DailySpend(ReportBy.MODEL, days, series)
    folded = spend.top(8)
    assert [s.name for s in folded.series] == ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "(other)"]
    assert folded.series[-1].cost_by_day[days[0]] == Decimal("0.6")  # 0.3 + 0.2 + 0.1
    assert folded.total == spend.total == Decimal("5.5")
    lines = [line.plain for line in terminal_lines(spend, width=80)]
    assert all(len(line) <= 80 for line in lines)
    assert lines[1] == "total $5.5"

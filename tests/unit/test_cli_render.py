"""The CLI's pure pieces: money as people read it, report tables that never cut a figure, the chart's bar arithmetic."""

from __future__ import annotations

import inspect
import io
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import typer.main
from rich.cells import cell_len
from rich.console import Console
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from turnledger.cli import output
from turnledger.cli.chart_data import DailySpend, Series, day_range
from turnledger.cli.chart_render import _segments, legend_lines, parse_size, short_usd, terminal_lines
from turnledger.cli.commands_store import _table
from turnledger.cli.output import per_million, usd
from turnledger.store.reports import ReportBy, ReportRow


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


def test_chart_totals_are_exact_however_many_digits() -> None:
    # Per day the chart reads the report's exact sums; its totals must not round them to the 28
    # digits of the default decimal context (the report's own: 1234567.8900000123456789012345).
    days = [date(2026, 11, 2), date(2026, 11, 3)]
    big, small = Decimal("1234567.89"), Decimal("0.0000000123456789012345")
    spend = DailySpend(ReportBy.USER, days, [Series("u", {days[0]: big}), Series("v", {days[1]: small})])
    exact = Decimal("1234567.8900000123456789012345")
    assert spend.total == exact
    folded = spend.top(1)
    assert folded.series[0].total == exact == folded.total
    assert spend.day_total(days[1]) == small
    assert Series("w", {days[0]: big, days[1]: small}).total == exact


FINE_TUNE = "ft:gpt-4o-mini-2024-07-18:acme-corp:support-bot:9abcDEF1"  # 56 characters, no space
LONG_USER = "user-3f2c9a1e-7b4d-4e2a-9c1f-8a6b5d4e3c2b@tenant-acme-corporation.example"


def _report_rows(names: list[str], *, every_kind: bool) -> list[ReportRow]:
    extra: dict[str, Any] = {
        "cached_tokens": 55_555_555,
        "cache_creation_tokens": 4_444_444,
        "reasoning_tokens": 3_333_333,
    }
    return [
        ReportRow(
            key=name,
            calls=1_234_567 + i,
            prompt_tokens=987_654_321 + i,
            completion_tokens=123_456_789 + i,
            total_tokens=1_111_111_110 + 2 * i,
            cost_usd=Decimal("1234.567890123456") + i,
            unpriced_calls=12 + i,
            **(extra if every_kind else {}),
        )
        for i, name in enumerate(names)
    ]


def _printed_table(
    monkeypatch: pytest.MonkeyPatch, rows: list[ReportRow], by: ReportBy, *, width: int, terminal: bool
) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None, legacy_windows=False)
    monkeypatch.setattr(output, "console", console)
    _table(by, rows)
    return buffer.getvalue()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
@pytest.mark.parametrize("width", [80, 40])
@pytest.mark.parametrize(("by", "name"), [(ReportBy.MODEL, FINE_TUNE), (ReportBy.USER, LONG_USER)])
def test_report_table_never_cuts_a_figure_at_any_width(
    monkeypatch: pytest.MonkeyPatch, by: ReportBy, name: str, width: int, terminal: bool
) -> None:
    rows = _report_rows([name, "gpt-4o"], every_kind=True)
    text = _printed_table(monkeypatch, rows, by, width=width, terminal=terminal)
    for row in rows:
        figures = [row.calls, row.prompt_tokens, row.completion_tokens, row.total_tokens, row.cached_tokens]
        figures += [row.cache_creation_tokens, row.reasoning_tokens]
        for figure in [*(f"{n:,}" for n in figures), usd(row.cost_usd), f" {row.unpriced_calls}"]:
            assert figure in text, (figure, text)
    for header in ("cost", "(USD)", "unpriced", "completion", "reasoning"):
        assert header in text, (header, text)
    if not terminal:  # piped: at its natural width, one line per row, for grep and files
        assert any(line.startswith(name) for line in text.splitlines()), text


def test_report_table_folds_a_long_name_to_fit_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    row = ReportRow(FINE_TUNE, 31, 25_635, 4_239, 29_874, cost_usd=Decimal("0.00638865"), unpriced_calls=1)
    text = _printed_table(monkeypatch, [row], ReportBy.MODEL, width=80, terminal=True)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert all(figure in text for figure in ("25,635", "4,239", "29,874", "$0.00638865", "unpriced")), text
    assert FINE_TUNE not in text and FINE_TUNE[:12] in text  # folded, not dropped


MARKUP_USER = "[/]"
STYLED_USER = "[bold]bob[/bold]"
ESCAPE_USER = "\x1b[31mred"


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
def test_report_table_prints_ids_as_written_never_as_markup_or_terminal_codes(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    # An id is the application's data: "[/]" raised rich's MarkupError (a traceback), "[bold]bob[/bold]"
    # printed as "bob", and an escape sequence reached the operator's terminal.
    rows = _report_rows([MARKUP_USER, STYLED_USER, ESCAPE_USER], every_kind=False)
    text = _printed_table(monkeypatch, rows, ReportBy.USER, width=200, terminal=terminal)
    assert MARKUP_USER in text and STYLED_USER in text
    assert "\x1b" not in text and "\\x1b[31mred" in text


def test_chart_legend_shows_control_characters_escaped() -> None:
    day = date(2026, 11, 25)
    series = [
        Series(name=ESCAPE_USER, cost_by_day={day: Decimal("0.1")}),
        Series(name="a\nb", cost_by_day={day: Decimal("0.2")}),
    ]
    spend = DailySpend(by=ReportBy.USER, days=[day], series=series)
    text = "\n".join(line.plain for line in terminal_lines(spend, width=80))
    assert "\x1b" not in text and "\\x1b[31mred" in text and "a\\x0ab" in text


def _commands(group: TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found: list[tuple[tuple[str, ...], Any]] = []
    for name, command in group.commands.items():
        found.append(((*path, name), command))
        if isinstance(command, TyperGroup):
            found.extend(_commands(command, (*path, name)))
    return found


def test_every_commands_help_keeps_its_paragraphs_whole_and_wraps_them_to_the_terminal() -> None:
    # A docstring is wrapped at the source's width; shown as written, its lines come out ragged at
    # 80 columns (a line, then two words, then a line...). Each paragraph is one line at 300 columns.
    from turnledger.cli import app

    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    for path, command in _commands(root):
        helped = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})
        assert helped.exit_code == 0, helped.output
        shown = [" ".join(line.split()) for line in helped.stdout.splitlines()]
        for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
            assert " ".join(paragraph.split()) in shown, (path, paragraph)


def test_no_help_shows_a_value_placeholder_after_a_flag() -> None:
    # typer's rich help printed `--bundled <bool>`, `--json <bool>`, `--help <bool>`: a user reads an
    # option that takes a value. A flag's row is its name(s) and its help, nothing between.
    from turnledger.cli import app

    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    ctx = root.make_context("turnledger", ["--help"], resilient_parsing=True)
    checked = 0
    for path, command in [((), root), *_commands(root)]:
        helped = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})
        assert helped.exit_code == 0, helped.output
        assert "<bool>" not in helped.stdout, (path, helped.stdout)
        rows = [" ".join(line.strip("│ ").split()) for line in helped.stdout.splitlines()]
        for param in command.get_params(ctx):
            if not (isinstance(param, TyperOption) and param.is_flag):
                continue
            # A row starts with the option's long names, comma-separated: `--quiet -q <bool> Print only...`.
            row = next(r for r in rows if set(r.split(" ")[0].split(",")) & set(param.opts))
            assert re.search(r"<[^>]*>", row) is None, (path, row)
            checked += 1
    # --help on every command and the root, --version, demo's --quiet, prices' --bundled, credits' --json...
    assert checked >= 17


WIDE_USER = "北京用户很长的名字" * 3  # 27 characters, 54 columns: each takes two columns of a terminal


def test_report_table_folds_a_name_of_wide_characters_to_fit_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: how far a name could fold was counted in characters, not columns: this table was 106
    # columns wide on an 80-column terminal.
    row = ReportRow(WIDE_USER, 9, 7_954, 1_239, 9_193, cost_usd=Decimal("0.01301682"))
    text = _printed_table(monkeypatch, [row], ReportBy.USER, width=80, terminal=True)
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    assert all(figure in text for figure in ("7,954", "1,239", "9,193", "$0.01301682")), text


def test_chart_legend_lines_up_its_figures_after_names_of_wide_characters() -> None:
    day = date(2026, 11, 25)
    names = [WIDE_USER, "bob", "ünïcødé"]
    series = [Series(name=name, cost_by_day={day: Decimal("0.1")}) for name in names]
    legend = [line.plain for line in legend_lines(series, Decimal("0.3"))]
    # Each cost starts at the same terminal column, whatever the width of the name before it.
    assert len({cell_len(line.split("$")[0]) for line in legend}) == 1, legend


BIDI_USER = "alice\u202eecila"  # U+202E RIGHT-TO-LEFT OVERRIDE: a terminal shows the rest reversed


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
def test_ids_with_bidi_controls_print_them_escaped_in_the_report_and_the_chart(
    monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    # Before: printed raw, so an id could show on screen as another one ("aliceecila" reads "alicealice").
    rows = _report_rows([BIDI_USER], every_kind=False)
    text = _printed_table(monkeypatch, rows, ReportBy.USER, width=120, terminal=terminal)
    day = date(2026, 11, 25)
    legend = legend_lines([Series(name=BIDI_USER, cost_by_day={day: Decimal("0.1")})], Decimal("0.1"))
    for shown_text in (text, legend[0].plain):
        assert "\u202e" not in shown_text and "alice\\u202eecila" in shown_text, shown_text

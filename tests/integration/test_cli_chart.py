"""``turnledger chart`` on PostgreSQL and SQLite: exact daily figures, 80-column bars, and real image files."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import zlib
from pathlib import Path

import pytest

from .cli_run import invoke, run_cli
from .store_data import record_report_turns

RANGE = ("--since", "2026-11-01", "--until", "2026-11-05")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and its header chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    header = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(b"IHDR" + header) == crc, "damaged PNG header"
    assert data.endswith(b"IEND\xaeB`\x82"), "PNG not finished"
    width, height = struct.unpack(">II", header[:8])
    return width, height


def test_chart_data_is_exact_per_day_and_model(database_url: str) -> None:
    asyncio.run(record_report_turns(database_url))
    result = invoke("chart", *RANGE, "--format", "json", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    rows = [(r["day"], r["model"], r["cost_usd"], r["unpriced_calls"]) for r in json.loads(result.stdout)]
    # store_data: day 2 ends at 23:59:59.999999 and day 3 starts at midnight, so the UTC day edges are tested.
    assert rows == [
        ("2026-11-02", "gpt-4o", "0.0125", 0),
        ("2026-11-02", "gpt-4o-mini", "0.000405", 0),
        ("2026-11-03", "gpt-4o", None, 1),
        ("2026-11-03", "gpt-4o-mini", "0.000036", 0),
        ("2026-11-03", "local-llm", None, 1),
        ("2026-11-04", "gpt-4o-mini", "0.0001245", 0),
        ("2026-11-04", "local-llm", None, 1),
    ]
    by_user = invoke("chart", *RANGE, "--by", "user", "--format", "csv", "--database-url", database_url)
    assert by_user.exit_code == 0, by_user.output
    assert by_user.stdout.splitlines()[:2] == ["day,user,cost_usd,unpriced_calls", "2026-11-02,alice,0.012905,0"]


def test_the_csv_columns_chart_help_names_are_the_ones_it_writes(database_url: str) -> None:
    asyncio.run(record_report_turns(database_url))
    helped = invoke("chart", "--help", columns=200)
    assert helped.exit_code == 0, helped.output
    named = re.search(r"--format csv\s+\(([^)]*)\)", helped.stdout)
    assert named is not None, helped.stdout
    written = invoke("chart", *RANGE, "--format", "csv", "--database-url", database_url)
    assert written.exit_code == 0, written.output
    assert [c.strip() for c in named.group(1).split(",")] == written.stdout.splitlines()[0].split(",")


def test_chart_in_the_terminal_reads_at_80_columns(database_url: str) -> None:
    asyncio.run(record_report_turns(database_url))
    result = invoke("chart", *RANGE, "--database-url", database_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[:2] == [
        "Daily spend by model, 2026-11-01 to 2026-11-04 (UTC)",
        "total $0.0130655, 3 unpriced calls not drawn",
    ]
    bars = {line[:5]: line for line in lines if line[:5] in {"11-01", "11-02", "11-03", "11-04"}}
    assert bars["11-01"].split() == ["11-01", "-"]
    assert bars["11-02"].endswith("$0.0129")
    assert bars["11-03"].endswith("$0.000036 +2 unpriced")
    # Every bar ends in the same column, and the biggest day fills the width.
    ends = {line.index("$") for key, line in bars.items() if key != "11-01"}
    assert len(ends) == 1
    assert bars["11-02"][6:].startswith("█" * 40)
    legend = [line.split() for line in lines[-3:]]
    assert legend == [
        ["█", "gpt-4o", "$0.0125", "96%", "+1", "unpriced"],
        ["▓", "gpt-4o-mini", "$0.0005655", "4%"],
        ["▒", "local-llm", "unpriced:", "2", "calls,", "cost", "unknown"],
    ]


# Drawing does not depend on the backend (the figures are checked on both above): one subprocess.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_chart_renders_a_png_of_the_requested_size(database_url: str, tmp_path: Path) -> None:
    asyncio.run(record_report_turns(database_url))
    png = tmp_path / "spend.png"
    result = run_cli("chart", *RANGE, "--output", str(png), "--size", "640x360", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {png} (640x360 px)"
    assert png_size(png.read_bytes()) == (640, 360)


def test_chart_html_and_svg_files(database_url: str, tmp_path: Path) -> None:
    asyncio.run(record_report_turns(database_url))
    page = tmp_path / "spend.html"
    assert invoke("chart", *RANGE, "--output", str(page), "--database-url", database_url).exit_code == 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    # The page carries the exact figures next to the picture, and unpriced calls as such.
    assert "<td>$0.0001245</td>" in text and "Total $0.0130655 (exact)" in text and "+1 unpriced" in text
    svg = tmp_path / "spend.svg"
    assert invoke("chart", *RANGE, "--output", str(svg), "--database-url", database_url).exit_code == 0
    assert 'width="864pt" height="432pt"' in svg.read_text()  # 1200x600 px at 100 dpi, in points


def test_empty_range_says_so(database_url: str) -> None:
    result = invoke("chart", "--since", "2020-01-01", "--until", "2020-01-08", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no usage recorded from 2020-01-01 to 2020-01-07 (UTC)"

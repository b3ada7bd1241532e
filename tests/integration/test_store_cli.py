"""``turnledger migrate`` and ``turnledger report`` on both databases, and their one-line errors and exit codes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import Result

from turnledger import make_engine, record_token_usage, session_factory
from turnledger.cli.db import run_db
from turnledger.store import migrate

from . import cli_run
from .cli_run import one_line_error
from .conftest import BACKENDS, PG_ADMIN_DSN, create_pg_database, drop_pg_database
from .store_data import DAY1, record_report_turns


def invoke(*args: str) -> Result:
    """In-process, 200 columns wide so no output line wraps."""
    return cli_run.invoke(*args, columns=200)


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cli.db'}"  # a plain URL, as a person would type it
        return
    name, url = create_pg_database()
    try:
        yield url.replace("postgresql+asyncpg://", "postgresql://")
    finally:
        drop_pg_database(name)


def test_migrate_then_report_every_format(fresh_url: str) -> None:
    result = invoke("migrate", "--database-url", fresh_url)
    assert result.exit_code == 0, result.output
    assert f"is at revision {migrate.head_revision()}" in result.stdout
    assert invoke("migrate", "--database-url", fresh_url).exit_code == 0  # again: nothing to do, no error

    asyncio.run(record_report_turns(fresh_url))

    as_json = invoke("report", "--by", "model", "--format", "json", "--database-url", fresh_url)
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [(r["key"], r["calls"], r["cost_usd"], r["unpriced_calls"]) for r in rows] == [
        ("gpt-4o", 2, "0.0125", 1),
        ("gpt-4o-mini", 5, "0.0005655", 0),
        ("local-llm", 2, None, 2),
    ]

    as_csv = invoke("report", "--by", "day", "--format", "csv", "--database-url", fresh_url)
    assert as_csv.exit_code == 0, as_csv.output
    days = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(d["key"], d["calls"], d["cost_usd"]) for d in days] == [
        ("2026-11-02", "2", "0.012905"),
        ("2026-11-03", "3", "0.000036"),
        ("2026-11-04", "4", "0.0001245"),
    ]

    table = invoke("report", "--by", "user", "--database-url", fresh_url, "--user", "dave")
    assert table.exit_code == 0, table.output
    assert "dave" in table.stdout and "unpriced" in table.stdout and "alice" not in table.stdout

    windowed = invoke(
        "report", "--by", "tenant", "--since", "2026-11-03", "--until", "2026-11-04", "--format", "json",
        "--database-url", fresh_url,
    )  # fmt: skip
    assert [(r["key"], r["cost_usd"]) for r in json.loads(windowed.stdout)] == [
        ("acme", "0.000036"),
        ("globex", None),
    ]
    recent = invoke("report", "--since", "7d", "--format", "json", "--database-url", fresh_url)
    assert recent.exit_code == 0 and json.loads(recent.stdout) == []


def test_the_day_report_says_its_days_are_utc_days(database_url: str) -> None:
    # An operator billing per day must not have to guess whose midnight splits the days.
    asyncio.run(record_report_turns(database_url))
    table = invoke("report", "--by", "day", "--database-url", database_url)
    assert table.exit_code == 0, table.output
    assert "usage by day (UTC)" in table.stdout
    assert "usage by user" in invoke("report", "--by", "user", "--database-url", database_url).stdout
    helped = invoke("report", "--help")
    assert helped.exit_code == 0, helped.output
    assert "Days are UTC calendar days" in helped.stdout


async def _record_by_hand(url: str) -> None:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            record_token_usage(
                session, usage_type="batch", user_id="alice", prompt_tokens=1000, cost_usd="0.50", created_at=DAY1
            )
            await session.commit()
    finally:
        await engine.dispose()


def test_spend_recorded_by_hand_is_in_the_model_report_and_chart_as_no_model(fresh_url: str) -> None:
    assert invoke("migrate", "--database-url", fresh_url).exit_code == 0
    asyncio.run(record_report_turns(fresh_url))
    asyncio.run(_record_by_hand(fresh_url))

    as_json = invoke("report", "--by", "model", "--format", "json", "--database-url", fresh_url)
    first = json.loads(as_json.stdout)[0]
    assert (first["key"], first["calls"], first["cost_usd"]) == (None, 1, "0.50")
    table = invoke("report", "--by", "model", "--database-url", fresh_url)
    assert table.exit_code == 0, table.output
    assert "(no model)" in table.stdout and "(none)" not in table.stdout
    chart = invoke(
        "chart", "--by", "model", "--since", "2026-11-01", "--until", "2026-11-05", "--database-url", fresh_url
    )
    assert chart.exit_code == 0, chart.output
    assert "(no model)" in chart.stdout and "total $0.5130655" in chart.stdout


def test_report_before_migrate_exits_3_and_says_migrate(tmp_path: Path) -> None:
    missing_file = invoke("report", "--database-url", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing_file.exit_code == 3
    assert "turnledger migrate" in one_line_error(missing_file)
    assert not (tmp_path / "none.db").exists()

    empty_pg = invoke("report", "--database-url", PG_ADMIN_DSN)
    assert empty_pg.exit_code == 3
    assert "turnledger migrate" in one_line_error(empty_pg)


@pytest.mark.parametrize(
    "args",
    [
        ("report", "--by", "colour"),
        ("report", "--format", "xml"),
        ("report", "--since", "last tuesday"),
        ("report", "--database-url", "mysql://u@h/db"),
        ("report", "--database-url", "::not a url::"),
        ("migrate", "--database-url", "::not a url::"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    full = [*args] if "--database-url" in args else [*args, "--database-url", f"sqlite:///{tmp_path / 'x.db'}"]
    result = invoke(*full)
    assert result.exit_code == 2, result.output
    one_line_error(result)


def test_unreachable_database_exits_1_with_one_line() -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    for command in ("report", "migrate"):
        result = invoke(command, "--database-url", url)
        assert result.exit_code == 1, result.output
        assert "127.0.0.1:1" in one_line_error(result)


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (["migrate"], 2, "no directory"),
        (["demo"], 2, "no directory"),
        (["credits", "balance", "acct-1"], 3, "no database at"),
        (["replay", "--outbox", "."], 3, "no database at"),
        (["report"], 3, "no database at"),
    ],
)
def test_a_sqlite_file_in_a_missing_directory_is_one_line_before_any_connection(
    command: list[str], code: int, message: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "x.db"
    result = invoke(*command, "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == code, result.output
    assert message in one_line_error(result)
    assert not (tmp_path / "no").exists()


def test_a_sqlite_database_that_cannot_open_leaves_no_thread_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiosqlite's worker thread for a connection that failed to open reports back after the failure:
    # it must find the loop still open, or it dies printing "Event loop is closed" twice.
    dying: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: dying.append(args.exc_value))
    url = f"sqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    for _ in range(20):  # the race is lost about half the time without the wait
        before = set(threading.enumerate())
        with pytest.raises(typer.Exit):
            run_db(migrate.current_revision_async(url), url)
        for thread in set(threading.enumerate()) - before:
            thread.join(5)
    assert dying == []


def test_migrate_says_where_and_which_revision_on_one_line_whatever_the_url_length(tmp_path: Path) -> None:
    # Wrapped at 80 columns, "URL is at\nrevision 0003" defeated `turnledger migrate | grep revision`.
    deep = tmp_path / ("d" * 70)
    deep.mkdir()
    url = f"sqlite:///{deep / 'turnledger.db'}"
    result = cli_run.invoke("migrate", "--database-url", url, columns=80)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"sqlite+aiosqlite:///{deep / 'turnledger.db'} is at revision {migrate.head_revision()}"
    ]


def test_migrate_to_a_revision_the_database_is_past_says_nothing_was_done(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'turnledger.db'}"
    assert cli_run.invoke("migrate", "--database-url", url).exit_code == 0

    result = cli_run.invoke("migrate", "--database-url", url, "--revision", "0001")

    assert result.exit_code == 2
    assert f"at revision {migrate.head_revision()}, past 0001: migrate only upgrades" in one_line_error(result)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_database_url_error_says_where_the_url_came_from_and_hides_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default, ./turnledger.db, is not there
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", "mysql://app:s3cret@db/app")
    for command in (["report"], ["migrate"], ["chart"], ["credits", "balance", "acct-1"]):
        from_variable = invoke(*command)
        assert from_variable.exit_code == 2, (command, from_variable.output)
        message = one_line_error(from_variable)
        assert message.endswith("not 'mysql' (from $TURNLEDGER_DATABASE_URL)"), message
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", "postgresql://app:s3cret@127.0.0.1:1/app?sslmode=require")
    for command in (["report"], ["migrate"]):
        message = one_line_error(invoke(*command))
        assert "(from $TURNLEDGER_DATABASE_URL)" in message and "s3cret" not in message, message
    # The flag wins over the variable, and says so.
    flagged = invoke("report", "--database-url", "postgresql://app:s3cret@127.0.0.1:1/app")
    assert flagged.exit_code == 1, flagged.output
    message = one_line_error(flagged)
    assert "postgresql://app:***@127.0.0.1:1/app (from --database-url):" in message, message
    monkeypatch.delenv("TURNLEDGER_DATABASE_URL")
    default = one_line_error(invoke("report"))
    assert "no database at ./turnledger.db (the default: neither --database-url nor $TURNLEDGER_DATABASE_URL" in default

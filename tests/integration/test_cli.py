"""The ``turnledger`` entry point as a user meets it: the demo end to end, and one-line errors for bad input."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from turnledger.store.engine import make_engine, session_factory
from turnledger.store.models import TokenUsage, TokenUsageCall
from turnledger.store.reports import ReportRow, usage_report

from .cli_run import invoke, one_line_error, run_cli, run_many
from .conftest import PG_ADMIN_DSN

SCENES = ("Chat with tool use", "Streamed answer", "Embedding batch", "Unknown-priced model", "Broken-off stream")


async def _read_back(url: str) -> tuple[int, list[ReportRow], list[tuple[str, str, str | None]]]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            turns = (await session.execute(select(func.count()).select_from(TokenUsage))).scalar_one()
            bob = await usage_report(session, "model", usage_type="chat", user_id="bob")
            carol = select(TokenUsageCall.model, TokenUsageCall.status, TokenUsageCall.cost_source).where(
                TokenUsageCall.user_id == "carol"
            )
            return turns, bob, [(m, s, c) for m, s, c in (await session.execute(carol)).all()]
    finally:
        await engine.dispose()


def test_demo_end_to_end_records_every_scene_exactly_and_history_once(database_url: str) -> None:
    first = run_cli("demo", "--history-days", "2", "--database-url", database_url)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert all(title in out for title in SCENES)
    # Exact, from LiteLLM's bundled prices: 182 x $0.15/1M + 21 x $0.60/1M; 412 x $2.50/1M + 96 x $10/1M; ...
    assert "$0.0000399" in out and "$0.0000462" in out and "$0.00199" in out and "$0.00003072" in out
    unknown = next(line for line in out.splitlines() if line.lstrip().startswith("acme-llm-7b"))
    assert "unpriced" in unknown and "$0 " not in unknown
    assert "stream abandoned" in out
    assert "What to try next" in out and "turnledger chart --by model --since 30d" in out
    assert all(len(line) <= 80 for line in out.splitlines()), "the demo must read at 80 columns"
    assert "sk-demo" not in out + first.stderr

    runs = 1
    if database_url.startswith("sqlite"):  # idempotent writes are tested on both backends by the store's tests
        second = run_cli("demo", "--history-days", "2", "--quiet", "--database-url", database_url)
        assert second.returncode == 0, second.stderr
        assert "What to try next" not in second.stdout and "acme-llm-7b" in second.stdout
        runs = 2

    turns, bob, carol = asyncio.run(_read_back(database_url))
    # 5 scenes per run; 2 history turns for each of 2 past days, stored once however often the demo ran.
    assert turns == runs * 5 + 2 * 2
    # bob's chat turns are today's streamed answer and broken-off stream (his history is "chat" too,
    # but on other models).
    gpt4o = next(r for r in bob if r.key == "gpt-4o")
    assert (gpt4o.calls, gpt4o.prompt_tokens, gpt4o.completion_tokens) == (runs, runs * 412, runs * 96)
    assert gpt4o.cost_usd == runs * Decimal("0.00199")
    broken = next(r for r in bob if r.key == "gpt-4o-mini")
    assert (broken.calls, broken.abandoned_calls) == (runs, runs)
    assert carol == [("acme-llm-7b", "success", "none")] * runs


@pytest.fixture
def no_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import matplotlib`` fails, as without the ``chart`` extra."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "matplotlib.py").write_text("raise ImportError('No module named matplotlib')\n")
    return {"PYTHONPATH": str(shadow)}


def test_entry_point_errors_are_one_line_with_exit_codes_1_2_3(tmp_path: Path, no_matplotlib: dict[str, str]) -> None:
    empty_sqlite = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()  # a file without turnledger's tables
    cases: list[tuple[list[str], int, str]] = [
        (["demo", "--database-url", "mysql://user:hunter2@db.example/x"], 2, "PostgreSQL or SQLite"),
        (["chart", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere"], 1, "127.0.0.1:1"),
        (["chart", "--database-url", empty_sqlite], 3, "run `turnledger migrate`"),
        (["chart", "--database-url", PG_ADMIN_DSN], 3, "run `turnledger migrate`"),
    ]
    # Each start-up imports LiteLLM: the option-value errors are checked in-process below.
    results = run_many([args for args, _, _ in cases])
    for (args, code, message), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.stdout, result.stderr)
        line = one_line_error(result)
        assert message in line and "hunter2" not in line, (args, line)

    missing_extra = run_cli("chart", "--output", str(tmp_path / "s.png"), env=no_matplotlib)
    assert missing_extra.returncode == 1
    assert "needs matplotlib: pip install 'turnledger[chart]'" in one_line_error(missing_extra)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chart", "--since", "last tuesday"], "--since: cannot read 'last tuesday'"),
        (["chart", "--since", "2d", "--until", "3d"], "must be after --since"),
        (["report", "--since", "2026-11-20", "--until", "2026-11-13"], "--until (2026-11-13 00:00) must be after"),
        (["credits", "history", "acct-1", "--since", "1h", "--until", "2h"], "must be after --since"),
        (["chart", "--output", "spend.gif"], "must end in .png, .svg, .html"),
        (["chart", "--output", "nowhere/spend.png"], "--output: no directory 'nowhere'"),
        (["chart", "--size", "0x600"], "--size: '0x600' is not WIDTHxHEIGHT"),
        (["chart", "--by", "day"], "--by: 'day' is not one of model, user, thread, tenant"),
        (["chart", "--by", "colour"], "--by: 'colour' is not one of model, user, thread, tenant"),
        (["chart", "--database-url", "::not a url::"], "cannot read database URL"),
        (["demo", "--database-url", "oracle://scott:tiger@h/x"], "PostgreSQL or SQLite"),
        (["report", "--since", "99999999d"], "--since: '99999999d' reaches before year 1"),
        (["chart", "--database-url", "postgresql://scott:tiger@127.0.0.1:99999/x"], "port 99999 is not 1-65535"),
        (
            ["report", "--database-url", "postgresql://scott:tiger@127.0.0.1:5432/test?sslmode=require"],
            "the driver takes no 'sslmode' option (asyncpg spells TLS ?ssl=require)",
        ),
        (["prices", " "], "prices: a model name is empty"),
        (["chart", "--format", "xml"], "--format: 'xml' is not one of table, json, csv"),
        (["prices", "gpt-4o-mini", "-f", "yaml"], "--format: 'yaml' is not one of table, json, csv"),
    ],
)
def test_bad_option_values_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert message in line and "tiger" not in line


def test_mistakes_in_other_teams_commands_are_one_line_input_errors_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for args, message in (
        (["migrate", "--revision", "nosuch"], "migration: Can't locate revision identified by 'nosuch'"),
        (["credits", "grant", "acct-1", "1e400"], "amount: 1E+400 is too large for a credit amount"),
    ):
        result = invoke(*args, "--database-url", url)
        assert result.exit_code == 2, result.output
        assert message in one_line_error(result)


def test_a_sqlite_file_that_is_not_there_is_not_created_but_reported(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = invoke("chart", "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 3
    assert f"no database at {missing} (from --database-url): run `turnledger migrate`" in one_line_error(result)
    assert not missing.exists()


@pytest.mark.parametrize(
    "args", [["prices", "gpt-4o-mini", "--prompt-tokens", "-5"], ["demo", "--bogus"], ["chart", "--size"]]
)
def test_option_parser_errors_exit_2_without_traceback(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["version"], ["--version"]])
def test_the_version_is_one_line_by_command_and_by_the_usual_flag(args: list[str]) -> None:
    from turnledger import __version__

    result = invoke(*args)
    assert (result.exit_code, result.stdout) == (0, f"{__version__}\n"), result.output


def test_a_url_whose_port_is_not_a_number_is_bad_input_in_every_command_never_a_traceback() -> None:
    # Before: SQLAlchemy's ValueError ("invalid literal for int() with base 10: 'notaport'") escaped
    # make_url as a 40-line traceback, exit 1, from report, chart, migrate and every credits command.
    secret = "hunter2-Zq9"
    url = f"postgresql+asyncpg://app:{secret}@127.0.0.1:notaport/app"
    for command in (["report"], ["chart"], ["migrate"], ["credits", "balance", "acct-1"], ["credits", "verify"]):
        result = invoke(*command, "--database-url", url)
        line = one_line_error(result)
        assert (result.exit_code, secret in result.output) == (2, False), (command, line)
        assert "'notaport'" in line and "(from --database-url)" in line, (command, line)


def test_a_since_in_the_future_is_a_range_and_chart_names_the_until_it_chose(tmp_path: Path) -> None:
    # Rows can be dated after this machine's clock (another host's clock, an imported ledger), so a
    # --since in the future is a range like any other: report answers from the database. chart, whose
    # --until defaults to now, said "--until (<now>) must be after --since" of an --until never given.
    url = f"sqlite+aiosqlite:///{tmp_path / 'never-read.db'}"
    assert invoke("report", "--since", "2099-01-01", "--database-url", url).exit_code == 3  # no database there
    result = invoke("chart", "--since", "2099-01-01", "--database-url", url)
    line = one_line_error(result)
    assert result.exit_code == 2, line
    assert line.startswith("error: --since (2099-01-01 00:00) is after now, chart's default --until"), line
    assert "give an --until after it" in line, line


def test_a_path_the_system_cannot_look_up_is_bad_input_not_a_traceback(tmp_path: Path) -> None:
    # Before: pathlib's exists()/is_file() raised OSError (ENAMETOOLONG) from the CLI's own checks,
    # as a traceback with exit 1, for a SQLite database path and for --outbox.
    too_long = tmp_path / ("x" * 300)
    for command in (["report"], ["migrate"], ["credits", "verify"]):
        result = invoke(*command, "--database-url", f"sqlite+aiosqlite:///{too_long}")
        line = one_line_error(result)
        assert result.exit_code == 2, (command, line)
        assert line.endswith(f"{too_long} (from --database-url): File name too long"), (command, line)
    outbox = invoke("replay", "--outbox", str(too_long), "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert (outbox.exit_code, one_line_error(outbox)) == (2, f"error: --outbox: {too_long}: File name too long")

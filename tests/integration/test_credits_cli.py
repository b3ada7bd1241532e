"""``turnledger credits ...`` on PostgreSQL and SQLite.

One command per database goes through the real entry point in a subprocess; the rest use typer's
in-process runner, because each subprocess pays LiteLLM's import (seconds on this machine).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import Result

from tests.integration import cli_run
from tests.integration.cli_run import one_line_error, run_cli
from tests.integration.conftest import PG_ADMIN_DSN
from turnledger import CreditLedger
from turnledger.store.engine import make_engine


def invoke(*args: str) -> Result:
    """In-process, 200 columns wide so no output line wraps."""
    return cli_run.invoke(*args, columns=200)


def _ledger_setup(url: str) -> None:
    """An account with a grant, a settled turn and one hold that expired an hour ago."""

    async def go() -> None:
        engine = make_engine(url)
        try:
            past = datetime.now(UTC) - timedelta(hours=2)
            old = CreditLedger(engine, hold_ttl=timedelta(hours=1), clock=lambda: past)
            await old.grant("acct-1", Decimal("10"), "g-1")
            res = await old.reserve("acct-1", Decimal("0.5"), "turn-1", turn_id="turn-1")
            await old.settle(res, Decimal("0.000123"))
            await old.reserve("acct-1", Decimal("2"), "turn-2", turn_id="turn-2")
        finally:
            await engine.dispose()

    asyncio.run(go())


def test_the_real_entry_point_grants_and_verifies(database_url: str) -> None:
    _ledger_setup(database_url)
    db = ["--database-url", database_url]
    granted = run_cli("credits", "grant", "acct-1", "2.5", "--key", "top-up-7", "--json", *db)
    assert granted.returncode == 0, granted.stderr
    assert "Traceback" not in granted.stderr
    entry = json.loads(granted.stdout)
    # The grant touched the account, so the hold that expired an hour ago was released first.
    assert (entry["kind"], entry["amount"], entry["balance_after"], entry["held_after"]) == (
        "grant",
        "2.5",
        "12.499877",
        "0",
    )
    verify = invoke("credits", "verify", *db)
    assert (verify.exit_code, verify.stdout.strip()) == (
        0,
        "ok: 1 account(s), 6 journal entries, 0 open hold(s); every balance equals its journal",
    )


def test_grant_balance_history_verify_expire(database_url: str) -> None:
    _ledger_setup(database_url)
    db = ["--database-url", database_url]

    granted = invoke("credits", "grant", "acct-1", "2.5", "--key", "top-up-7", "--json", *db)
    assert granted.exit_code == 0, granted.stderr
    assert json.loads(granted.stdout)["replayed"] is False
    again = invoke("credits", "grant", "acct-1", "2.5", "--key", "top-up-7", *db)
    assert again.exit_code == 0
    assert again.stdout.strip() == "acct-1: already granted (key replayed) 2.5, balance 12.499877 (key top-up-7)"

    balance = invoke("credits", "balance", "acct-1", "--json", *db)
    assert balance.exit_code == 0, balance.stderr
    assert json.loads(balance.stdout) == {
        "account": "acct-1",
        "balance": "12.499877",
        "held": "0",
        "overdraft_limit": "0",
        "available": "12.499877",
    }
    text_balance = invoke("credits", "balance", "acct-1", *db)
    assert text_balance.stdout.strip() == ("acct-1: balance 12.499877  held 0  overdraft 0  available 12.499877")

    history = invoke("credits", "history", "acct-1", "--json", *db)
    rows = json.loads(history.stdout)
    assert [(r["kind"], r["amount"], r["hold_amount"]) for r in rows] == [
        ("grant", "10", "0"),
        ("reserve", "0", "0.5"),
        ("settle", "-0.000123", "-0.5"),
        ("reserve", "0", "2"),
        ("release", "0", "-2"),
        ("grant", "2.5", "0"),
    ]
    assert rows[4]["note"] == "hold expired" and rows[4]["turn_id"] == "turn-2"
    text_history = invoke("credits", "history", "acct-1", "--limit", "2", *db)
    lines = text_history.stdout.splitlines()
    assert len(lines) == 2 and "release" in lines[0] and "(hold expired)" in lines[0] and "grant" in lines[1]

    verify = invoke("credits", "verify", *db)
    assert verify.exit_code == 0, verify.stderr
    expire = invoke("credits", "expire", *db)
    assert (expire.exit_code, expire.stdout.strip()) == (0, "released 0 expired hold(s), 0 in all")


def test_expire_releases_dead_holds(database_url: str) -> None:
    _ledger_setup(database_url)
    expire = invoke("credits", "expire", "--json", "--database-url", database_url)
    assert expire.exit_code == 0, expire.stderr
    [release] = json.loads(expire.stdout)
    assert (release["kind"], release["hold_amount"], release["turn_id"]) == ("release", "-2", "turn-2")


def test_verify_exits_1_on_a_mismatch(database_url: str) -> None:
    _ledger_setup(database_url)

    async def tamper() -> None:
        engine = make_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE credit_accounts SET balance = '11' WHERE account_id = 'acct-1'"))
        finally:
            await engine.dispose()

    asyncio.run(tamper())
    verify = invoke("credits", "verify", "--database-url", database_url)
    assert verify.exit_code == 1
    assert "mismatch: acct-1: balance 11 but the journal sums to 9.999877" in verify.stdout


def test_errors_are_one_line_with_the_documented_exit_codes(database_url: str, tmp_path: Path) -> None:
    db = ["--database-url", database_url]
    unknown = invoke("credits", "balance", "nobody", *db)
    assert unknown.exit_code == 1
    assert one_line_error(unknown) == "error: no credit account 'nobody'"
    no_entries = invoke("credits", "history", "nobody", *db)
    assert (no_entries.exit_code, no_entries.stdout.strip()) == (0, "nobody: no entries")

    bad_amount = invoke("credits", "grant", "acct-1", "ten", *db)
    assert bad_amount.exit_code == 2
    assert one_line_error(bad_amount) == "error: amount: 'ten' is not a positive amount"

    bad_since = invoke("credits", "history", "acct-1", "--since", "yesterday-ish", *db)
    assert bad_since.exit_code == 2
    assert "--since" in one_line_error(bad_since)

    (tmp_path / "empty.db").touch()
    empty = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    no_tables = invoke("credits", "balance", "acct-1", "--database-url", empty)
    assert no_tables.exit_code == 3
    assert one_line_error(no_tables) == (
        f"error: turnledger's tables are missing in {empty} (from --database-url): "
        "run `turnledger migrate` first (with the same --database-url)"
    )

    # A mistyped path is refused, and no empty database is left behind for later commands to trip on.
    absent = tmp_path / "typo.db"
    no_file = invoke("credits", "balance", "acct-1", "--database-url", f"sqlite+aiosqlite:///{absent}")
    assert no_file.exit_code == 3
    assert one_line_error(no_file).startswith(f"error: no database at {absent}")
    assert not absent.exists()

    bad_url = invoke("credits", "verify", "--database-url", "mysql://db/x")
    assert bad_url.exit_code == 2
    assert "PostgreSQL or SQLite" in one_line_error(bad_url)


def test_an_account_id_that_looks_like_markup_prints_as_written(database_url: str) -> None:
    # "[/]" made rich raise MarkupError after the grant had committed: exit 1 and a traceback for a
    # grant that was made, which an operator would then make again.
    db = ["--database-url", database_url]
    granted = invoke("credits", "grant", "[/]", "2.5", "--key", "k-markup", "--note", "[/x] \x1b[31m", *db)
    assert (granted.exit_code, granted.stdout.strip()) == (0, "[/]: granted 2.5, balance 2.5 (key k-markup)")
    balance = invoke("credits", "balance", "[/]", *db)
    assert balance.exit_code == 0 and balance.stdout.startswith("[/]: balance 2.5 ")
    history = invoke("credits", "history", "[/]", *db)
    assert history.exit_code == 0 and history.stdout.rstrip().endswith("([/x] \\x1b[31m)")


def test_a_grant_that_rounds_to_nothing_is_bad_input(database_url: str) -> None:
    _ledger_setup(database_url)
    db = ["--database-url", database_url]
    tiny = invoke("credits", "grant", "acct-1", "0.0000000000000000001", "--key", "tiny", *db)
    assert tiny.exit_code == 2
    assert one_line_error(tiny) == "error: amount 1E-19 rounds to 0 at 18 decimal places"
    history = invoke("credits", "history", "acct-1", "--json", *db)
    assert "tiny" not in [row["key"] for row in json.loads(history.stdout)]


def test_a_grant_the_balance_cannot_hold_is_bad_input_not_a_database_failure(database_url: str) -> None:
    _ledger_setup(database_url)
    db = ["--database-url", database_url]
    huge = invoke("credits", "grant", "acct-1", "99999999999999999999", *db)
    assert huge.exit_code == 2
    assert one_line_error(huge).startswith("error: account 'acct-1': this grant would take its balance to ")


def test_an_empty_key_is_refused_not_replaced_by_a_random_one(database_url: str) -> None:
    _ledger_setup(database_url)
    db = ["--database-url", database_url]
    empty = invoke("credits", "grant", "acct-1", "1", "--key", "", *db)
    assert empty.exit_code == 2
    assert one_line_error(empty) == "error: an idempotency key must be a non-empty string of at most 200 characters"
    history = invoke("credits", "history", "acct-1", "--json", *db)
    assert [row["kind"] for row in json.loads(history.stdout)][-1] != "grant"


def test_database_errors_show_the_masked_url_and_where_it_came_from_never_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: "cannot reach the database (from --database-url): ConnectionRefusedError", "the credit
    # ledger could not read or write the database: InvalidCatalogNameError": which database, unsaid.
    server = PG_ADMIN_DSN.rsplit("/", 1)[0].split("@", 1)[1]  # host:port of the test server
    secret = "hunter2-Zq9"
    monkeypatch.delenv("TURNLEDGER_DATABASE_URL", raising=False)
    cases = [
        # (URL, exit code, what the one line must say besides the masked URL)
        (f"postgresql+asyncpg://postgres:{secret}@{server}/no_db_q7", 1, 'database "no_db_q7" does not exist'),
        (f"postgresql+asyncpg://postgres:{secret}@127.0.0.1:1/x", 1, "cannot reach the database at"),
        (f"postgresql+asyncpg://postgres:{secret}@{server}/postgres", 3, "run `turnledger migrate` first"),
        (f"postgresql+asyncpg://postgres:{secret}@{server}/postgres?sslmode=require", 2, "asyncpg spells TLS"),
    ]
    for url, code, says in cases:
        masked = url.replace(secret, "***")
        for command in (["balance", "acct-1"], ["verify"]):
            flag = invoke("credits", *command, "--database-url", url)
            line = one_line_error(flag)
            assert (flag.exit_code, secret in flag.output) == (code, False), line
            assert says in line and masked in line and "(from --database-url)" in line, line
    url, code, says = cases[1]
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", url)
    from_env = invoke("credits", "history", "acct-1")
    line = one_line_error(from_env)
    assert (from_env.exit_code, secret in from_env.output) == (code, False), line
    assert says in line and url.replace(secret, "***") in line and "(from $TURNLEDGER_DATABASE_URL)" in line, line

"""Every database path of turnledger through a real PgBouncer in transaction pooling mode, with the
README's ``?pgbouncer=true``: migrate, record_turn, record_token_usage, a BatchWriter's COPY under
concurrent turns, replays (their COPY staging tables), reports, credits under concurrency, and the CLI.

Without the flag (or before it existed) every one of them failed on asyncpg's named prepared statements
("prepared statement "__asyncpg_stmt_1__" already exists" / "... does not exist").
Skipped where PgBouncer is not installed (``make test`` installs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from turnledger import BatchWriter, CreditLedger, make_engine, record_token_usage, record_turn, session_factory
from turnledger.store.record import turn_rows
from turnledger.store.replay import replay_outbox
from turnledger.store.reports import usage_report

from .cli_run import run_cli
from .conftest import create_pg_database, drop_pg_database
from .pgbouncer import Bouncer, pgbouncer_binary, running_pgbouncer
from .writer_support import closed_turn, leave_dead_writers_segment, outbox_lines, stored_turn_ids

_BINARY = pgbouncer_binary()
pytestmark = pytest.mark.skipif(
    _BINARY is None, reason="pgbouncer is not installed (scripts/ensure-postgres.sh installs it)"
)

TURNS = 30


@pytest.fixture(scope="module")
def bouncer() -> Iterator[Bouncer]:
    assert _BINARY is not None
    with running_pgbouncer(_BINARY) as running:
        yield running


@pytest.fixture
def database() -> Iterator[str]:
    name, _direct_url = create_pg_database()
    try:
        yield name
    finally:
        drop_pg_database(name)


async def test_everything_through_pgbouncer_in_transaction_mode(
    bouncer: Bouncer, database: str, tmp_path: Path
) -> None:
    url = f"{bouncer.url(database)}?pgbouncer=true"
    migrated = await asyncio.to_thread(run_cli, "migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr

    engine = make_engine(url)
    sessions = session_factory(engine)
    try:

        async def one_turn(i: int) -> None:
            async with sessions() as session:
                await record_turn(session, closed_turn(f"rt-{i}"), usage_type="chat")
                record_token_usage(session, usage_type="chat", user_id="u-2", prompt_tokens=5, turn_id=f"rtu-{i}")
                await session.commit()

        await asyncio.gather(*(one_turn(i) for i in range(TURNS)))

        async with BatchWriter(engine, outbox_dir=tmp_path / "outbox") as writer:
            await asyncio.gather(*(writer.persist(closed_turn(f"bw-{i}")) for i in range(TURNS)))
            await writer.flush()
        assert writer.stats["written"] == TURNS

        # Replays COPY through temp tables; between the two, on one client connection, PgBouncer gives
        # every server connection up: the second runs in a server session that never had them.
        one_connection = make_engine(url, pool_size=1, max_overflow=0)
        try:
            for n in range(2):
                replays = tmp_path / f"dead-{n}"
                lines = outbox_lines(*(turn_rows(closed_turn(f"rp-{n}-{i}"), usage_type="chat") for i in range(TURNS)))
                leave_dead_writers_segment(replays, lines)
                assert (await replay_outbox(one_connection, replays)).inserted == TURNS
                await bouncer.reconnect(database)
        finally:
            await one_connection.dispose()

        ledger = CreditLedger(engine)
        await ledger.grant("acct", Decimal("100"), "grant")

        async def reserve_and_settle(i: int) -> None:
            reservation = await ledger.reserve("acct", Decimal("1"), f"reserve-{i}")
            await ledger.settle(reservation, Decimal("0.5"))

        await asyncio.gather(*(reserve_and_settle(i) for i in range(TURNS)))
        balance = await ledger.balance("acct")
        assert (balance.balance, balance.held) == (Decimal("100") - Decimal("0.5") * TURNS, Decimal(0))
        assert (await ledger.verify("acct")).problems == ()

        async def report(by: str) -> int:
            async with sessions() as session:
                return sum(row.calls for row in await usage_report(session, by))

        # 3 calls a turn recorded or written, 1 per record_token_usage
        assert await asyncio.gather(*(report(by) for by in ("user", "day", "tenant") * 3)) == [TURNS * 13] * 9
        stored = await stored_turn_ids(engine)
        assert len(stored) == TURNS * 5 and set(stored.values()) == {1}
    finally:
        await engine.dispose()

    reported = await asyncio.to_thread(run_cli, "report", "--by", "user", "--format", "csv", "--database-url", url)
    assert reported.returncode == 0, reported.stderr
    assert "u-2" in reported.stdout and "u-1" in reported.stdout

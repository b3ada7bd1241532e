"""A low ``statement_timeout`` (set on the role, or here in the URL): reads fail with an error that says
so, the CLI in one line, and a BatchWriter whose COPY is cancelled keeps every turn and writes it later.

The statements are made slow by another session holding a lock on ``token_usage``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger import BatchWriter, make_engine, session_factory, usage_report
from turnledger.errors import StorageError

from .cli_run import invoke, one_line_error
from .writer_support import closed_turn, stored_turn_ids

TURNS = 40


@pytest.fixture
def timeout_url(pg_engine: AsyncEngine) -> str:
    url = pg_engine.url.render_as_string(hide_password=False)
    return f"{url}?options=-cstatement_timeout%3D200"


@pytest.fixture
async def locked(pg_engine: AsyncEngine) -> AsyncIterator[asyncpg.Transaction]:
    """Another session's ACCESS EXCLUSIVE lock on token_usage; ``rollback()`` it to let statements through."""
    direct = make_url(pg_engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    conn = await asyncpg.connect(direct.render_as_string(hide_password=False))
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("LOCK TABLE token_usage IN ACCESS EXCLUSIVE MODE")
    try:
        yield transaction
    finally:
        await conn.close()  # rolls back, if the test did not


async def test_a_report_past_the_statement_timeout_says_so(timeout_url: str, locked: asyncpg.Transaction) -> None:
    engine = make_engine(timeout_url)
    try:
        async with session_factory(engine)() as session:
            with pytest.raises(StorageError, match="QueryCanceledError"):
                await usage_report(session, "user")
    finally:
        await engine.dispose()
    result = await asyncio.to_thread(invoke, "report", "--database-url", timeout_url)
    assert result.exit_code == 1
    assert one_line_error(result).endswith("canceling statement due to statement timeout")


async def _first_failure(writer: BatchWriter) -> None:
    while not writer.stats["failed_batches"]:
        await asyncio.sleep(0.05)


async def test_a_cancelled_copy_loses_no_turn(timeout_url: str, locked: asyncpg.Transaction, tmp_path: Path) -> None:
    engine = make_engine(timeout_url)
    try:
        async with BatchWriter(engine, outbox_dir=tmp_path, retry_initial=0.05, retry_max=0.2) as writer:
            await asyncio.gather(*(writer.persist(closed_turn(f"slow-{i}")) for i in range(TURNS)))
            await asyncio.wait_for(_first_failure(writer), timeout=60)
            assert writer.stats["written"] == 0
            await locked.rollback()
            await writer.flush()
        stored = await stored_turn_ids(engine)
        assert stored == {f"slow-{i}": 1 for i in range(TURNS)}
        assert writer.stats["lost"] == 0
    finally:
        await engine.dispose()

"""When the outbox and the database both fail, turns stay in memory for the next attempt; a turn really lost is named.

The database is reached through a TCP proxy the test cuts (the machine's PostgreSQL is never stopped);
the outbox fails because its append raises, as a full or read-only disk would make it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.tcp_proxy import TcpProxy
from tests.integration.writer_support import closed_turn, stored_call_count, stored_turn_ids
from turnledger.store.engine import make_engine
from turnledger.store.replay import replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio


class _Disk:
    """Stands in for the outbox's disk: fails every append while ``full``."""

    def __init__(self, writer: BatchWriter) -> None:
        self.full = True
        self._append = writer.journal.append
        writer.journal.append = self.append  # type: ignore[method-assign]

    def append(self, lines: list[bytes]) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return self._append(lines)


async def _hand_over_unjournaled(writer: BatchWriter, turn_ids: list[str]) -> None:
    for turn_id in turn_ids:
        with pytest.raises(OSError, match="No space left"):
            await writer.persist(closed_turn(turn_id))
    # The database is down too: wait until the writer has failed to write them, more than once
    # (a writer that forgot them after the first failure never tries again).
    for _ in range(500):
        if writer.stats["failed_batches"] >= 2:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the writer stopped retrying: {dict(writer.stats)}")


def _writer(engine: AsyncEngine, outbox: Path) -> BatchWriter:
    return BatchWriter(engine, outbox_dir=outbox, flush_interval=0.01, retry_initial=0.02, retry_max=0.1)


def _proxied(url: str, proxy: TcpProxy) -> AsyncEngine:
    return make_engine(proxy.url_through(url), connect_args={"timeout": 1.0})


async def test_turns_without_an_outbox_copy_are_retried_until_the_database_is_back(
    pg_engine: AsyncEngine, postgresql_database_url: str, tmp_path: Path
) -> None:
    turn_ids = [f"mem{i}" for i in range(5)]
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        engine = _proxied(postgresql_database_url, proxy)
        try:
            async with _writer(engine, tmp_path) as writer:
                _Disk(writer)
                proxy.cut()
                await _hand_over_unjournaled(writer, turn_ids)
                proxy.restore()
                await writer.flush(timeout=30)
                stats = dict(writer.stats)
        finally:
            await engine.dispose()
    assert stats.get("lost", 0) == 0
    assert await stored_turn_ids(pg_engine) == dict.fromkeys(turn_ids, 1)
    assert await stored_call_count(pg_engine) == 15


async def test_at_close_they_go_to_the_outbox_if_it_is_writable_again(
    pg_engine: AsyncEngine, postgresql_database_url: str, tmp_path: Path
) -> None:
    turn_ids = [f"late{i}" for i in range(4)]
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        engine = _proxied(postgresql_database_url, proxy)
        try:
            writer = await _writer(engine, tmp_path).start()
            disk = _Disk(writer)
            proxy.cut()
            await _hand_over_unjournaled(writer, turn_ids)
            disk.full = False
            await writer.close(timeout=0.5)
        finally:
            await engine.dispose()
    assert writer.stats.get("lost", 0) == 0
    report = await replay_outbox(pg_engine, tmp_path)
    assert report.inserted == 4
    assert await stored_turn_ids(pg_engine) == dict.fromkeys(turn_ids, 1)


async def test_a_turn_really_lost_is_logged_by_turn_id(
    pg_engine: AsyncEngine, postgresql_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="turnledger.writer")
    turn_ids = [f"gone{i}" for i in range(3)]
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        engine = _proxied(postgresql_database_url, proxy)
        try:
            writer = await _writer(engine, tmp_path).start()
            _Disk(writer)
            proxy.cut()
            await _hand_over_unjournaled(writer, turn_ids)
            await writer.close(timeout=0.5)
        finally:
            await engine.dispose()
    assert writer.stats["lost"] == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [t for t in turn_ids if any(f"LOST turn '{t}'" in m for m in errors)] == turn_ids

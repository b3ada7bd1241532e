"""A process that writes turns through a BatchWriter until it is killed: the SIGKILL test's victim.

``python -m tests.integration.writer_child URL OUTBOX_DIR HANDED ACKED MARKER copy|insert``

Each turn id goes to HANDED before ``persist`` and to ACKED after it returned (the turn is durable).
From the ``SLOW_AFTER``-th batch on, every batch stalls inside its open transaction, after its turns
are inserted and before the commit, and touches MARKER first: the test kills the process there.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

import turnledger.store.entries as entries_module
from tests.integration.writer_support import closed_turn
from turnledger.store.engine import make_engine
from turnledger.store.entries import Entry
from turnledger.store.writer import BatchWriter

SLOW_AFTER = 5
PRODUCERS = 8


def _touch(path: str) -> None:
    Path(path).touch()


async def main(url: str, outbox: str, handed_path: str, acked_path: str, marker: str, path: str) -> None:
    engine = make_engine(url)
    batches = 0

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _stall_insert(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        # The multi-row INSERT path: the loop stops too, nothing else moves while the transaction is open.
        nonlocal batches
        if statement.startswith("INSERT INTO token_usage ("):
            batches += 1
            if batches >= SLOW_AFTER:
                _touch(marker)
                time.sleep(0.5)

    copy_entries = entries_module._copy_entries
    copy_direct = entries_module._copy_direct

    async def _stall_copy(conn: AsyncConnection, entries: Sequence[Entry], *, fresh: bool = False) -> int:
        # The COPY paths: the statement that moves the staged rows sleeps in the server before it returns,
        # and so does the transaction of a direct COPY, rows copied but not committed.
        nonlocal batches
        batches += 1
        if batches >= SLOW_AFTER:
            entries_module._MOVE_STAGED = f"SELECT ({entries_module._MOVE_STAGED}) FROM pg_sleep(0.5)"
            entries_module._copy_direct = _stall_direct
            _touch(marker)
        return await copy_entries(conn, entries, fresh=fresh)

    async def _stall_direct(driver: Any, usage_records: Any, call_records: Any) -> int:
        written = await copy_direct(driver, usage_records, call_records)
        await driver.execute("SELECT pg_sleep(0.5)")
        return written

    entries_module._copy_entries = _stall_copy

    handed = open(handed_path, "a", buffering=1)  # noqa: SIM115, ASYNC230  line-buffered: each id reaches the kernel at once
    acked = open(acked_path, "a", buffering=1)  # noqa: SIM115, ASYNC230
    async with BatchWriter(
        engine, outbox_dir=outbox, batch_size=20, flush_interval=0.01, pg_copy=path == "copy"
    ) as writer:

        async def produce(p: int) -> None:
            for i in range(1_000_000):
                turn_id = f"k{p}-{i}"
                handed.write(turn_id + "\n")
                await writer.persist(closed_turn(turn_id))
                acked.write(turn_id + "\n")

        await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))

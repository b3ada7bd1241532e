"""A process that writes turns through a BatchWriter until it is killed: the SIGKILL test's victim.

``python -m tests.integration.writer_child URL OUTBOX_DIR HANDED ACKED MARKER``

Each turn id goes to HANDED before ``persist`` and to ACKED after it returned (the turn is durable).
From the ``SLOW_AFTER``-th batch on, every batch sleeps inside its open transaction, after inserting its
turns and before committing, and touches MARKER first: the test kills the process there, mid-batch.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from tests.integration.writer_support import closed_turn
from turnledger.store.engine import make_engine
from turnledger.store.writer import BatchWriter

SLOW_AFTER = 5
PRODUCERS = 8


async def main(url: str, outbox: str, handed_path: str, acked_path: str, marker: str) -> None:
    engine = make_engine(url)
    batches = 0

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _stall(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        nonlocal batches
        if statement.startswith("INSERT INTO token_usage ("):
            batches += 1
            if batches >= SLOW_AFTER:
                Path(marker).touch()
                time.sleep(0.5)  # the loop stops too: nothing else moves while the transaction is open

    handed = open(handed_path, "a", buffering=1)  # noqa: SIM115, ASYNC230  line-buffered: each id reaches the kernel at once
    acked = open(acked_path, "a", buffering=1)  # noqa: SIM115, ASYNC230
    async with BatchWriter(engine, outbox_dir=outbox, batch_size=20, flush_interval=0.01) as writer:

        async def produce(p: int) -> None:
            for i in range(1_000_000):
                turn_id = f"k{p}-{i}"
                handed.write(turn_id + "\n")
                await writer.persist(closed_turn(turn_id))
                acked.write(turn_id + "\n")

        await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

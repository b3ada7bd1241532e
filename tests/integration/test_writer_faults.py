"""BatchWriter under real faults on the real PostgreSQL: a link cut or hung mid-flow, and the process SIGKILLed.

The machine's PostgreSQL is never stopped (other tests share it): the writer reaches it through a TCP
proxy the test controls. The outage length is a knob: ``TURNLEDGER_FAULT_SECONDS`` (default 3).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.tcp_proxy import TcpProxy
from tests.integration.writer_support import (
    closed_turn,
    orphan_calls,
    stored_call_count,
    stored_turn_ids,
)
from turnledger.store.engine import make_engine
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio

FAULT_SECONDS = float(os.environ.get("TURNLEDGER_FAULT_SECONDS", "3"))
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fault", ["cut", "hang"])
async def test_every_turn_lands_once_across_a_broken_link(
    fault: str, pg_engine: AsyncEngine, postgresql_database_url: str, tmp_path: Path
) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        # Short driver timeouts: a hung link must fail a connect or a statement in seconds, not minutes.
        proxied = make_engine(
            proxy.url_through(postgresql_database_url),
            pool_pre_ping=True,
            connect_args={"timeout": 1.0, "command_timeout": 2.0},
        )
        writer = BatchWriter(
            proxied,
            outbox_dir=tmp_path,
            batch_size=25,
            flush_interval=0.01,
            write_timeout=1.5,
            retry_initial=0.05,
            retry_max=0.4,
        )
        handed: list[str] = []
        stop = asyncio.Event()

        async def produce(p: int) -> None:
            i = 0
            while not stop.is_set():
                turn_id = f"{fault}-{p}-{i}"
                await writer.persist(closed_turn(turn_id))
                handed.append(turn_id)
                i += 1
                await asyncio.sleep(0.005)

        try:
            async with writer:
                producers = [asyncio.create_task(produce(p)) for p in range(4)]
                await asyncio.sleep(0.7)
                before_fault = writer.stats["written"]
                getattr(proxy, fault)()
                await asyncio.sleep(FAULT_SECONDS)
                during_fault = len(handed)
                proxy.restore()
                await asyncio.sleep(0.7)
                stop.set()
                await asyncio.gather(*producers)
                await writer.flush(timeout=60)
                stats = dict(writer.stats)
        finally:
            await proxied.dispose()

    # The fault really happened and turns kept flowing through it.
    assert before_fault > 0
    assert stats["failed_batches"] >= 1
    assert stats["spilled"] >= 1
    assert stats["replayed"] >= 1
    assert len(handed) > during_fault > 0
    assert proxy.connections_total >= 2
    # Every turn exactly once, with all its calls, and the outbox empty.
    stored = await stored_turn_ids(pg_engine)
    assert set(stored) == set(handed)
    assert set(stored.values()) == {1}
    assert await stored_call_count(pg_engine) == 3 * len(handed)
    assert await orphan_calls(pg_engine) == 0
    assert pending_segments(tmp_path) == []


def _read_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _start_child(url: str, path: str, *files: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.integration.writer_child", url, *map(str, files), path]
    return subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"writer child exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("writer child never reached a batch")
        time.sleep(0.01)


@pytest.mark.parametrize("path", ["copy", "insert"])
async def test_sigkill_mid_batch_loses_nothing_and_doubles_nothing(
    path: str, pg_engine: AsyncEngine, postgresql_database_url: str, tmp_path: Path
) -> None:
    outbox, handed_path, acked_path, marker = (
        tmp_path / "outbox",
        tmp_path / "handed",
        tmp_path / "acked",
        tmp_path / "in-batch",
    )
    proc = _start_child(postgresql_database_url, path, outbox, handed_path, acked_path, marker)
    try:
        await asyncio.to_thread(_wait_for, marker, proc, 60)
        # The child is now asleep inside an open transaction: turns inserted, not committed.
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    handed, acked = set(_read_ids(handed_path)), set(_read_ids(acked_path))
    assert acked and acked <= handed
    before = await stored_turn_ids(pg_engine)
    # The batch in flight died with the process: acknowledged turns are missing from the database...
    assert acked - set(before)
    assert pending_segments(outbox)

    # ...until a restarted writer on the same outbox replays what the dead one left.
    async with BatchWriter(pg_engine, outbox_dir=outbox, flush_interval=0.01) as writer:
        await writer.persist(closed_turn("after-restart"))
        await writer.flush(timeout=60)
        assert writer.stats["replayed"] >= len(acked - set(before))
    again = await replay_outbox(pg_engine, outbox)
    assert (again.entries, again.inserted) == (0, 0)

    stored = await stored_turn_ids(pg_engine)
    assert set(stored.values()) == {1}
    assert acked | {"after-restart"} <= set(stored) <= handed | {"after-restart"}
    assert await stored_call_count(pg_engine) == 3 * len(stored)
    assert await orphan_calls(pg_engine) == 0
    assert pending_segments(outbox) == []

"""``turnledger migrate`` run by several processes at once (every replica's start-up, a deploy and an
operator), and a migration that fails: all or nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from contextlib import closing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from turnledger.store import migrate
from turnledger.store.tables import VERSION_TABLE

from .alembic_apps import released_turnledger_alembic, rows, upgrade
from .conftest import table_names

PROCESSES = 3


def _migrate_at_once(url: str, barrier: Barrier, outcomes: Queue[str]) -> None:
    """In a child process: wait for the others, then upgrade; reports ``"ok"`` or the error's first line."""
    barrier.wait()
    try:
        migrate.upgrade(url)
    except Exception as exc:
        outcomes.put(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    else:
        outcomes.put("ok")


def _migrate_in_processes(url: str) -> list[str]:
    """Every process's outcome, all of them upgrading ``url`` at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    queue: Queue[str] = context.Queue()
    children = [context.Process(target=_migrate_at_once, args=(url, barrier, queue)) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    outcomes = [queue.get(timeout=300) for _ in children]
    for child in children:
        child.join()
    return outcomes


async def test_processes_migrating_one_empty_database_at_once_all_succeed(empty_database_url: str) -> None:
    # Before the lock: PostgreSQL answered the second CREATE TABLE with a duplicate pg_type key, and on
    # SQLite the loser found the winner's tables half made ("table token_usage already exists").
    outcomes = _migrate_in_processes(empty_database_url)
    assert outcomes == ["ok"] * PROCESSES
    assert await migrate.current_revision_async(empty_database_url) == migrate.head_revision()
    assert {"token_usage", "token_usage_calls", VERSION_TABLE} <= await table_names(empty_database_url)


def test_processes_upgrading_a_database_an_earlier_version_migrated_move_its_revision_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    # Its revision moves to turnledger's own version table under the migration lock: one process moves
    # it and upgrades, the others find the schema current.
    upgrade(released_turnledger_alembic(tmp_path, empty_database_url), "0003")
    assert _migrate_in_processes(empty_database_url) == ["ok"] * PROCESSES
    assert asyncio.run(rows(empty_database_url, VERSION_TABLE)) == [migrate.head_revision()]
    assert asyncio.run(rows(empty_database_url, "alembic_version")) == []


async def test_a_sqlite_migration_that_fails_midway_leaves_nothing_half_made(tmp_path: Path) -> None:
    # 0001 creates token_usage, then fails on token_usage_calls. Committed statement by statement,
    # token_usage stayed without a version row, and every later `turnledger migrate` failed on it.
    path = tmp_path / "half.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE token_usage_calls (x INTEGER)")
        conn.commit()
    url = f"sqlite+aiosqlite:///{path}"
    with pytest.raises(OperationalError, match="already exists"):
        await migrate.upgrade_async(url)
    assert await table_names(url) == {"token_usage_calls"}

"""Schema migrations from code: the same Alembic revisions ``turnledger migrate`` and the tests run.

The sync functions are for scripts and the CLI; inside a running event loop use the ``*_async`` ones.

An upgrade or downgrade holds a lock on the database for its whole transaction (PostgreSQL: an advisory
lock; SQLite: ``BEGIN IMMEDIATE``), so processes migrating at once (every replica at start-up) run one
after the other: the first migrates, the others find the schema current. On SQLite this also makes a
migration all or nothing: its DDL would otherwise commit statement by statement.

turnledger's revision is kept in its own version table, so that an application running its own
Alembic migrations in the same database keeps ``alembic_version`` to itself (see ``schema_version``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, pool, text
from sqlalchemy.engine import URL, Connection

from turnledger.store import schema_version
from turnledger.store.engine import make_engine, resolve_url

SCRIPT_LOCATION = "turnledger:migrations"
"""Resolved through the installed package, so it works from a wheel as well as a checkout."""

T = TypeVar("T")

MIGRATION_LOCK_ID = 0x746C_6D69_6772_6174
"""The PostgreSQL advisory lock key migrations hold (a fixed 63-bit number, "tlmigrat")."""

SQLITE_LOCK_WAIT_MS = 600_000
"""How long a SQLite migration waits for another process's migration (or a long write) to finish."""


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic :class:`Config` for turnledger's migrations; no ini file needed."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an ini option: configparser would choke on a '%' in a password.
    cfg.attributes["url"] = resolve_url(url).render_as_string(hide_password=False)
    return cfg


def head_revision() -> str | None:
    """The newest revision the installed package knows."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def is_past(current: str | None, target: str) -> bool:
    """Whether a database at ``current`` is already past revision ``target``: an upgrade to it does
    nothing (Alembic does not say so), and going back is a downgrade."""
    order = _revisions()
    return current in order and target in order and order.index(current) < order.index(target)


async def upgrade_async(url: str | URL | None = None, revision: str = "head") -> None:
    await _with_connection(url, lambda conn: _command(conn, url, "upgrade", revision), exclusive=True)


async def downgrade_async(url: str | URL | None, revision: str) -> None:
    await _with_connection(url, lambda conn: _command(conn, url, "downgrade", revision), exclusive=True)


async def current_revision_async(url: str | URL | None = None) -> str | None:
    """The revision turnledger's schema is at (read from its own version table); ``None`` for an empty database."""
    known = _revisions()
    revision: str | None = await _with_connection(url, lambda conn: schema_version.current_revision(conn, known))
    return revision


def upgrade(url: str | URL | None = None, revision: str = "head") -> None:
    """Upgrade the schema at ``url`` (default: ``TURNLEDGER_DATABASE_URL`` / ./turnledger.db) to ``revision``."""
    _run(upgrade_async(url, revision))


def downgrade(url: str | URL | None, revision: str) -> None:
    """Downgrade the schema at ``url`` to ``revision`` (``"base"`` drops every turnledger table)."""
    _run(downgrade_async(url, revision))


def current_revision(url: str | URL | None = None) -> str | None:
    return _run(current_revision_async(url))


def _revisions() -> list[str]:
    """Every revision id the installed package has, newest first."""
    return [script.revision for script in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()]


def _command(connection: Connection, url: str | URL | None, action: str, revision: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    if action == "upgrade":
        command.upgrade(cfg, revision)
    else:
        command.downgrade(cfg, revision)


async def _with_connection(url: str | URL | None, fn: Any, *, exclusive: bool = False) -> Any:
    """``fn(connection)`` in one transaction; ``exclusive``: holding the migration lock for all of it."""
    engine = make_engine(url, poolclass=pool.NullPool)
    if exclusive and engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_explicit_transactions)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    try:
        async with engine.begin() as connection:
            if exclusive and connection.dialect.name == "postgresql":
                # Taken before Alembic reads the version table: a second process reads it after the
                # first committed, and has nothing left to do.
                await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def _sqlite_explicit_transactions(dbapi_connection: Any, _record: Any) -> None:
    # The driver begins a transaction only before DML, so DDL would commit statement by statement and
    # nothing would keep a second migrating process out; the "begin" listener below begins instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_LOCK_WAIT_MS}")
    finally:
        cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    # IMMEDIATE takes the write lock now, before the version table is read, not at the first write.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a loop (a notebook, an async app's startup): asyncio.run would refuse, so
    # the migration runs on a loop of its own in a helper thread while this one waits.
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="turnledger-migrate")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


__all__ = [
    "alembic_config",
    "current_revision",
    "current_revision_async",
    "downgrade",
    "downgrade_async",
    "head_revision",
    "upgrade",
    "upgrade_async",
]

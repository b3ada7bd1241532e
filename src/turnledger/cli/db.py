"""Running a command's database work with errors a person can act on, never a traceback.

Every command that touches the database runs its coroutine through :func:`run_db`, so "the server is
down", "that is not a URL" and "the tables are not there yet" read the same from every command and
exit with the codes of :mod:`turnledger.cli.app`.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from turnledger.cli.app import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_SCHEMA_MISSING, fail
from turnledger.config import DATABASE_URL_ENV, database_url
from turnledger.errors import ConfigurationError, SchemaMissingError, StorageError
from turnledger.store.engine import is_schema_missing

T = TypeVar("T")

MIGRATE_HINT = "run `turnledger migrate` first (with the same --database-url)"

# asyncpg's connect() refusing a URL query option it does not know (libpq's sslmode=, a typo).
_UNKNOWN_CONNECT_ARG = re.compile(r"connect\(\) got an unexpected keyword argument '([^']+)'")


def shown_url(url: str | URL | None) -> str:
    """The database URL as it may be printed: the password masked."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    raw = database_url(url)
    try:
        return make_url(raw).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return raw.split("@", 1)[-1] if "@" in raw else raw


def url_source(url: str | URL | None) -> str:
    """Where a command's database URL came from, as an error about it says: a wrong URL is fixed there.

    The ``--database-url`` option reads no environment variable itself (see ``DatabaseUrlOption``), so
    a URL given here is the flag's; ``None`` is the variable's, else the default.
    """
    if url is not None and url != "":
        return "from --database-url"
    if os.environ.get(DATABASE_URL_ENV):
        return f"from ${DATABASE_URL_ENV}"
    return f"the default: neither --database-url nor ${DATABASE_URL_ENV} is set"


def refuse_missing_sqlite_file(url: str | URL | None) -> None:
    """Exit 3 for a SQLite file that does not exist, rather than create an empty one to read from."""
    database = _sqlite_file(url)
    if database is not None and not _looked_up(database, url).exists():
        fail(f"no database at {database} ({url_source(url)}): {MIGRATE_HINT}", EXIT_SCHEMA_MISSING)


def refuse_missing_sqlite_directory(url: str | URL | None) -> None:
    """Exit 2 for a SQLite file in a directory that does not exist, for a command that would create the file.

    SQLite creates the file, never its directory; and a failed open ends in aiosqlite's worker thread
    printing a traceback of its own.
    """
    database = _sqlite_file(url)
    if database is not None and not (directory := _looked_up(database, url).parent).is_dir():
        fail(
            f"no directory {str(directory)!r} for the SQLite database {database!r} ({url_source(url)})", EXIT_BAD_INPUT
        )


def _looked_up(database: str, url: str | URL | None) -> Path:
    """``database``'s path, once the system could look it up; exit 2 if it cannot (a name too long...).

    pathlib's ``exists()`` answers False for a missing file but raises for such a path.
    """
    path = Path(database)
    try:
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        fail(f"cannot use the SQLite database {database} ({url_source(url)}): {exc.strerror}", EXIT_BAD_INPUT)
    return path


def _sqlite_file(url: str | URL | None) -> str | None:
    """The file a SQLite URL names; ``None`` for another database, an in-memory one, or a URL run_db reports."""
    try:
        parsed = url if isinstance(url, URL) else make_url(database_url(url))
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return database


def describe(exc: BaseException, url: str | URL | None) -> tuple[str, int] | None:
    """A one-line message and exit code for an error a user can fix; ``None`` for a bug."""
    from turnledger.store.rejects import DirectoryNotSynced  # only on an error: the outbox side is not always loaded

    shown, source = shown_url(url), url_source(url)
    where = f"{shown} ({source})"
    if isinstance(exc, SchemaMissingError):
        return f"turnledger's tables are missing in {where}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING
    if isinstance(exc, ConfigurationError):
        return f"{exc} ({source})", EXIT_BAD_INPUT
    if isinstance(exc, CommandError):  # Alembic refusing a revision it does not know
        return f"migration: {_first_line(str(exc))}", EXIT_BAD_INPUT
    if isinstance(exc, ArgumentError):
        return f"cannot read database URL {shown!r} ({source}): {exc}", EXIT_BAD_INPUT
    if isinstance(exc, DBAPIError):
        detail = _first_line(str(exc.orig) if exc.orig is not None else str(exc))
        if is_schema_missing(exc):
            return f"turnledger's tables are missing in {where} ({detail}): {MIGRATE_HINT}", EXIT_SCHEMA_MISSING
        return f"database {where}: {detail}", EXIT_FAILED
    if isinstance(exc, StorageError):
        # The store wraps the driver's error; its own words say more than "database error: X".
        cause = exc.__cause__
        if isinstance(cause, DBAPIError | OSError) and not isinstance(cause, SchemaMissingError):
            return describe(cause, url)
        return f"database {where}: {exc}", EXIT_FAILED
    # asyncpg passes the URL's query to connect(): a libpq-only option (sslmode=...) is refused there.
    if isinstance(exc, TypeError) and (bad := _UNKNOWN_CONNECT_ARG.search(str(exc))):
        return (
            f"database URL {where}: the driver takes no {bad.group(1)!r} option (asyncpg spells TLS ?ssl=require)",
            EXIT_BAD_INPUT,
        )
    if isinstance(exc, DirectoryNotSynced):
        # An OSError too, but the outbox's disk, not the database: what was set aside keeps its other copy.
        return f"cannot sync the outbox directory: {exc}; nothing is lost: run the replay again", EXIT_FAILED
    if isinstance(exc, OSError) and exc.filename is not None:
        # A file of the command's (an outbox segment), not the database: a socket's errors name no file.
        return f"cannot use {exc.filename}: {exc.strerror or type(exc).__name__}", EXIT_FAILED
    # asyncpg raises the socket's own errors (refused, unknown host) unwrapped.
    if isinstance(exc, OSError | TimeoutError):
        return f"cannot reach the database at {where}: {_first_line(str(exc)) or type(exc).__name__}", EXIT_FAILED
    return None


def run_db(coro: Coroutine[Any, Any, T], url: str | URL | None) -> T:
    """``asyncio.run(coro)``, turning a user-fixable database error into a one-line message and exit code."""
    try:
        return asyncio.run(settled(coro))
    except Exception as exc:
        described = describe(exc, url)
        if described is None:
            raise
        fail(*described)


async def settled(coro: Coroutine[Any, Any, T]) -> T:
    """``await coro``; when it fails, first let a SQLite connection that could not open finish stopping.

    aiosqlite (0.22) stops such a connection without waiting for its worker thread. If the loop is
    closed by the time the thread reports back, the thread dies with a 20-line "Event loop is closed"
    traceback printed after the command's one-line error.
    """
    before = set(threading.enumerate())
    try:
        return await coro
    except Exception:  # a Ctrl-C is not kept waiting
        stopping = [t for t in threading.enumerate() if t not in before and t.name.endswith(_AIOSQLITE_WORKER)]
        deadline = time.monotonic() + SQLITE_STOP_WAIT_S
        for thread in stopping:  # joined off the loop, which must keep running to take their reports
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        raise


SQLITE_STOP_WAIT_S = 1.0
"""The longest a failed command waits for those threads (they need microseconds)."""

_AIOSQLITE_WORKER = "(_connection_worker_thread)"  # how Python names a thread after its target


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    # SQLAlchemy appends "(Background on this error at: ...)" and the statement; neither helps here.
    return re.sub(r"\s*\(Background on this error.*$", "", line).strip()


__all__ = [
    "MIGRATE_HINT",
    "describe",
    "refuse_missing_sqlite_directory",
    "refuse_missing_sqlite_file",
    "run_db",
    "settled",
    "shown_url",
    "url_source",
]

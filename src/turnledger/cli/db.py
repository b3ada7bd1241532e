"""Running a command's database work with errors a person can act on, never a traceback.

Every command that touches the database runs its coroutine through :func:`run_db`, so "the server is
down", "that is not a URL" and "the tables are not there yet" read the same from every command and
exit with the codes of :mod:`turnledger.cli.app`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from turnledger.cli.app import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_SCHEMA_MISSING, fail
from turnledger.config import database_url
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
    except ArgumentError:
        return raw.split("@", 1)[-1] if "@" in raw else raw


def refuse_missing_sqlite_file(url: str | URL | None) -> None:
    """Exit 3 for a SQLite file that does not exist, rather than create an empty one to read from."""
    try:
        parsed = url if isinstance(url, URL) else make_url(database_url(url))
    except ArgumentError:
        return  # run_db reports the URL itself
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:" and not Path(database).exists():
        fail(f"no database at {database}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING)


def describe(exc: BaseException, url: str | URL | None) -> tuple[str, int] | None:
    """A one-line message and exit code for an error a user can fix; ``None`` for a bug."""
    where = shown_url(url)
    if isinstance(exc, SchemaMissingError):
        return f"turnledger's tables are missing in {where}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING
    if isinstance(exc, ConfigurationError):
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, CommandError):  # Alembic refusing a revision it does not know
        return f"migration: {_first_line(str(exc))}", EXIT_BAD_INPUT
    if isinstance(exc, ArgumentError):
        return f"cannot read database URL {where!r}: {exc}", EXIT_BAD_INPUT
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
    # asyncpg raises the socket's own errors (refused, unknown host) unwrapped.
    if isinstance(exc, OSError | TimeoutError):
        return f"cannot reach the database at {where}: {_first_line(str(exc)) or type(exc).__name__}", EXIT_FAILED
    return None


def run_db(coro: Coroutine[Any, Any, T], url: str | URL | None) -> T:
    """``asyncio.run(coro)``, turning a user-fixable database error into a one-line message and exit code."""
    try:
        return asyncio.run(coro)
    except Exception as exc:
        described = describe(exc, url)
        if described is None:
            raise
        fail(*described)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    # SQLAlchemy appends "(Background on this error at: ...)" and the statement; neither helps here.
    return re.sub(r"\s*\(Background on this error.*$", "", line).strip()


__all__ = ["MIGRATE_HINT", "describe", "refuse_missing_sqlite_file", "run_db", "shown_url"]

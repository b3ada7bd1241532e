"""The async engine and session factory, from an explicit URL, ``TURNLEDGER_DATABASE_URL`` or ./turnledger.db."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from turnledger.config import database_url
from turnledger.errors import ConfigurationError, SchemaMissingError, StorageError

# A plain `postgresql://` or `sqlite://` URL (what people paste) gets the async driver turnledger ships with.
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite writer waits for another writer's lock before failing."""


def resolve_url(url: str | URL | None = None) -> URL:
    """The async SQLAlchemy URL to use; :class:`ConfigurationError` if it cannot be read."""
    raw = url if isinstance(url, URL) else database_url(url)
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise ConfigurationError(f"cannot read database URL {_redacted(str(raw))!r}: {exc}") from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is not None:
        parsed = parsed.set(drivername=driver)
    if parsed.get_backend_name() not in {"postgresql", "sqlite"}:
        raise ConfigurationError(f"turnledger stores to PostgreSQL or SQLite, not {parsed.get_backend_name()!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        # Otherwise the socket layer raises OverflowError at the first connection.
        raise ConfigurationError(f"database URL {parsed.render_as_string()!r}: port {parsed.port} is not 1-65535")
    return parsed


def make_engine(url: str | URL | None = None, **kwargs: Any) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``url`` (default: ``TURNLEDGER_DATABASE_URL``, else SQLite ./turnledger.db).

    SQLite connections get WAL (readers do not block the writer), enforced foreign keys (SQLite
    ignores them by default) and a busy timeout.
    """
    resolved = resolve_url(url)
    try:
        engine = create_async_engine(resolved, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"cannot use database URL {resolved.render_as_string()!r}: {exc}") from None
    if resolved.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine | str | URL | None = None) -> async_sessionmaker[AsyncSession]:
    """``async with session_factory()() as session``; objects stay readable after commit."""
    bound = engine if isinstance(engine, AsyncEngine) else make_engine(engine)
    return async_sessionmaker(bound, expire_on_commit=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def is_schema_missing(exc: BaseException) -> bool:
    """Whether a database error means turnledger's tables are not there (``turnledger migrate`` fixes it)."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) == "42P01" or getattr(orig, "pgcode", None) == "42P01":
        return True
    text = str(orig).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def storage_error(exc: BaseException) -> StorageError:
    """A database error as turnledger's own: :class:`SchemaMissingError` when the tables are missing."""
    if is_schema_missing(exc):
        return SchemaMissingError("turnledger's tables are missing: run `turnledger migrate`")
    # The driver's message names the statement, not the bound values, so it carries no row data.
    return StorageError(f"database error: {type(getattr(exc, 'orig', None) or exc).__name__}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # In-memory databases have no journal file to switch; WAL is only meaningful on disk.
        cursor.execute("PRAGMA database_list")
        rows = cursor.fetchall()
        if rows and rows[0][2]:
            cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _redacted(raw: str) -> str:
    # A URL that fails to parse may still carry a password; never echo one.
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return raw


__all__ = [
    "is_schema_missing",
    "is_sqlite",
    "make_engine",
    "resolve_url",
    "session_factory",
    "storage_error",
]

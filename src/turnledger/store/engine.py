"""The async engine and session factory, from an explicit URL, ``TURNLEDGER_DATABASE_URL`` or ./turnledger.db."""

from __future__ import annotations

import math
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

POOLER_FLAG = "pgbouncer"
"""``?pgbouncer=true`` in a PostgreSQL URL: the server is behind a transaction-pooling proxy (PgBouncer...)."""

# asyncpg's numeric connect() options: SQLAlchemy hands them over from the URL's query as strings,
# which asyncpg does not convert (``?statement_cache_size=0`` fails every query with a TypeError).
_ASYNCPG_NUMBERS: dict[str, type[int] | type[float]] = {
    "statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
    "command_timeout": float,
    "timeout": float,
    "connect_timeout": float,  # libpq's name for asyncpg's timeout
}
# What a URL's query may name: asyncpg's connect() arguments and SQLAlchemy's asyncpg dialect's own.
# SQLAlchemy hands every other name to connect(), which fails each connection with a TypeError: a
# BatchWriter would then keep every turn in its outbox. libpq's names (sslmode=...) are the usual ones.
_ASYNCPG_QUERY = frozenset(
    {
        "host", "port", "user", "password", "passfile", "service", "servicefile", "database", "timeout",
        "ssl", "direct_tls", "target_session_attrs", "krbsrvname", "gsslib",
        "prepared_statement_cache_size", "prepared_statement_name_func",
    }
)  # fmt: skip
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def resolve_url(url: str | URL | None = None) -> URL:
    """The async SQLAlchemy URL to use; :class:`ConfigurationError` if it cannot be read."""
    raw = url if isinstance(url, URL) else database_url(url)
    try:
        parsed = make_url(raw)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
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
    ignores them by default) and a busy timeout. A PostgreSQL URL with ``?pgbouncer=true`` gets no
    named prepared statements (see :func:`driver_options`).
    """
    resolved = resolve_url(url)
    if resolved.get_backend_name() == "postgresql":
        resolved, connect_args = driver_options(resolved)
        if connect_args:
            kwargs["connect_args"] = {**connect_args, **kwargs.get("connect_args", {})}
    try:
        engine = create_async_engine(resolved, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"cannot use database URL {resolved.render_as_string()!r}: {exc}") from None
    if resolved.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def driver_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL asyncpg is given, and the ``connect()`` arguments its query asks for but cannot carry.

    ``pgbouncer=true``: a transaction-pooling proxy hands each transaction to whichever server
    connection is free, where a named prepared statement of another client's is already there
    ("prepared statement ... already exists") or this client's is not ("... does not exist").
    Both statement caches off (SQLAlchemy's and asyncpg's) make asyncpg use the unnamed statement,
    prepared and run in the same transaction, and leave nothing behind on the server connection.

    ``options=-c name=value ...`` (libpq's, e.g. ``-csearch_path%3Dbilling``) and libpq's ``application_name``:
    asyncpg's ``server_settings``; libpq's ``connect_timeout``: asyncpg's ``timeout``.
    """
    query = dict(url.query)
    connect_args: dict[str, Any] = {}
    flag = query.pop(POOLER_FLAG, None)
    if flag is not None:
        value = _last(flag)
        if value.lower() not in _TRUE | _FALSE:
            raise ConfigurationError(f"database URL: {POOLER_FLAG}={value!r} is not true or false")
        if value.lower() in _TRUE:
            query["prepared_statement_cache_size"] = "0"
            query["statement_cache_size"] = "0"
    options = query.pop("options", None)
    if options is not None:
        connect_args["server_settings"] = _server_settings(_last(options))
    # libpq's names for what asyncpg takes otherwise (asyncpg refused them: "unexpected keyword argument").
    app_name = query.pop("application_name", None)
    if app_name is not None:
        settings = connect_args.setdefault("server_settings", {})
        settings["application_name"] = _last(app_name)
    for name, kind in _ASYNCPG_NUMBERS.items():
        raw = query.pop(name, None)
        if raw is None:
            continue
        value = _last(raw)
        try:
            number = kind(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ConfigurationError(f"database URL: {name}={value!r} is not a number") from None
        connect_args[name] = number
    connect_timeout = connect_args.pop("connect_timeout", None)
    if connect_timeout is not None and connect_timeout > 0:
        # libpq waits without a limit for 0 or less; asyncpg would give up at once: its default stands.
        connect_args.setdefault("timeout", connect_timeout)
    unknown = sorted(name for name in query if name not in _ASYNCPG_QUERY)
    if unknown:
        hint = " (asyncpg spells TLS ?ssl=require)" if unknown[0].startswith("ssl") else ""
        raise ConfigurationError(
            f"database URL {url.render_as_string()}: the driver takes no {unknown[0]!r} option{hint}"
        )
    return url.set(query=query), connect_args


def _last(value: str | tuple[str, ...]) -> str:
    """A URL query option's value: SQLAlchemy gives a name written twice as a tuple, and the last wins."""
    return value if isinstance(value, str) else value[-1]


def _server_settings(options: str) -> dict[str, str]:
    """libpq's ``options`` (``-c search_path=billing -c statement_timeout=5s``) as asyncpg's ``server_settings``.

    asyncpg has no ``options``: without this a URL written for libpq fails to connect.
    """
    settings: dict[str, str] = {}
    words = iter(_split_options(options))
    for word in words:
        if word == "-c":
            word = "-c" + next(words, "")
        if word.startswith("-c"):
            setting = word[2:]
        elif word.startswith("--"):
            setting = word[2:].replace("-", "_")
        else:
            setting = ""
        name, equals, value = setting.partition("=")
        if not (name and equals):
            raise ConfigurationError(
                f"database URL: options={options!r}: only settings as -c name=value are understood, not {word!r}"
            )
        settings[name] = value
    return settings


def _split_options(options: str) -> list[str]:
    """``options`` split into words as the server splits them (``pg_split_opts``): at whitespace, except
    where a backslash escapes the next character (``-csearch_path=billing,\\ public``)."""
    words: list[str] = []
    word: list[str] | None = None
    escaped = False
    for char in options:
        if char.isspace() and not escaped:
            if word is not None:
                words.append("".join(word))
            word = None
            continue
        if word is None:
            word = []
        if char == "\\" and not escaped:
            escaped = True
            continue
        escaped = False
        word.append(char)
    if word is not None:
        words.append("".join(word))
    return words


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
    orig = getattr(exc, "orig", None)
    # asyncpg's errors arrive wrapped in SQLAlchemy's generic adapter Error ("database error: Error");
    # the driver's own class (QueryCanceledError for a statement_timeout) says what happened.
    named = (orig.__cause__ or orig) if orig is not None else exc
    return StorageError(f"database error: {type(named).__name__}")


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
    "POOLER_FLAG",
    "driver_options",
    "is_schema_missing",
    "is_sqlite",
    "make_engine",
    "resolve_url",
    "session_factory",
    "storage_error",
]

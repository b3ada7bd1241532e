"""Alembic environment: async (asyncpg / aiosqlite), NullPool, one code path for both databases.

The URL comes from ``config.attributes["url"]`` (set by :mod:`turnledger.store.migrate`), else the
ini's ``sqlalchemy.url``, else ``TURNLEDGER_DATABASE_URL`` / ./turnledger.db. A caller that already
holds a connection passes it as ``config.attributes["connection"]`` and it is used as is.

turnledger's revision lives in its own version table (:data:`~turnledger.store.tables.VERSION_TABLE`),
never in ``alembic_version``, which belongs to the application sharing the database.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from turnledger.store import models  # noqa: F401  (registers the tables on Base.metadata)
from turnledger.store.base import Base
from turnledger.store.engine import make_engine, resolve_url
from turnledger.store.schema_version import adopt_legacy_revision, legacy_adoption_sql
from turnledger.store.tables import VERSION_TABLE

# Other teams' tables live in their own model modules; import each one that exists so that
# autogenerate sees every table and none is proposed for dropping.
for _module in ("turnledger.credits_models",):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    explicit = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    return resolve_url(explicit or None).render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _run_with(connection: Connection) -> None:
    # Before Alembic reads the version table, in the same transaction (and, from turnledger.store.migrate,
    # under the migration lock): a deployment an earlier version migrated upgrades from its revision.
    adopt_legacy_revision(connection, context.script)
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_with)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        _adopt_offline()
        context.run_migrations()


def _adopt_offline() -> None:
    """A script from a given revision (``0003:head``) begins by adopting it from ``alembic_version``
    where an earlier version left it, as an online migration does. PostgreSQL only: SQLite has no
    conditional statement to write it with."""
    start = context.get_starting_revision_argument()
    if not isinstance(start, str) or context.get_context().dialect.name != "postgresql":
        return
    revision = context.script.as_revision_number(start)
    if isinstance(revision, str):
        context.execute(legacy_adoption_sql(revision))


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

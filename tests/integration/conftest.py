"""Databases for integration tests: every test taking ``engine`` or ``database_url`` runs on PostgreSQL and SQLite.

PostgreSQL: one database with a random name per test session, created through the ``postgres``
maintenance database, migrated with Alembic, dropped at the end. SQLite: a migrated file in a temp
directory. Each test starts with every table empty.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger.store import migrate
from turnledger.store.base import Base
from turnledger.store.engine import make_engine
from turnledger.store.tables import VERSION_TABLE

PG_ADMIN_DSN = os.environ.get("TURNLEDGER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("postgresql", "sqlite")


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url_for(name: str) -> str:
    """The asyncpg URL of database ``name`` on the test server."""
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


def create_pg_database() -> tuple[str, str]:
    """A new, empty PostgreSQL database with a random name: ``(name, url)``. Drop it with :func:`drop_pg_database`."""
    name = f"turnledger_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return name, pg_url_for(name)


def drop_pg_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgresql_database_url() -> Iterator[str]:
    name, url = create_pg_database()
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("store") / "turnledger.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)
    return url


def _table_names(connection: Connection) -> list[str]:
    # The version tables stay: emptied, the database would read as never migrated.
    present = set(inspect(connection).get_table_names()) - {VERSION_TABLE, "alembic_version"}
    # Children before parents, so foreign keys never block a delete.
    ordered = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name in present]
    return ordered + sorted(present - set(ordered))


async def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for name in await conn.run_sync(_table_names):
                await conn.execute(text(f'DELETE FROM "{name}"'))
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database with every table empty, once per backend."""
    url: str = request.getfixturevalue(f"{request.param}_database_url")
    asyncio.run(_empty_tables(url))
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def pg_engine(postgresql_database_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL only (for tests that need the real server, e.g. behind a proxy), every table empty."""
    await _empty_tables(postgresql_database_url)
    eng = make_engine(postgresql_database_url)
    yield eng
    await eng.dispose()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it, not even Alembic's version table, once per backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


async def table_names(url: str) -> set[str]:
    """Every table in the database at ``url``, Alembic's version table included."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def schema_diffs(connection: Connection, tables: Collection[str]) -> list[Any]:
    """Where the migrated ``tables`` (and their indexes, constraints) differ from the models."""

    def among_tables(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return getattr(table, "name", name) in tables

    context = MigrationContext.configure(connection, opts={"include_object": among_tables, "compare_type": True})
    return list(compare_metadata(context, Base.metadata))

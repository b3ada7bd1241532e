"""Migration 0002 (the credit tables) upgrades, downgrades and upgrades again on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.conftest import BACKENDS, create_pg_database, drop_pg_database
from turnledger import CreditLedger
from turnledger.store import migrate
from turnledger.store.base import Base
from turnledger.store.engine import make_engine

CREDIT_TABLES = {"credit_accounts", "credit_journal", "credit_holds"}

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'credits-migration.db'}"
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _use_ledger(url: str) -> Decimal:
    engine = make_engine(url)
    try:
        ledger = CreditLedger(engine)
        await ledger.grant("a", Decimal("1.5"), "g")
        res = await ledger.reserve("a", Decimal("0.5"), "r")
        await ledger.settle(res, Decimal("0.25"))
        return (await ledger.balance("a")).balance
    finally:
        await engine.dispose()


async def test_0002_up_down_and_up_again(empty_url: str) -> None:
    await migrate.upgrade_async(empty_url, "0001")
    before = await _tables(empty_url)
    assert not before & CREDIT_TABLES

    await migrate.upgrade_async(empty_url, "0002")
    assert await _tables(empty_url) == before | CREDIT_TABLES
    assert await _use_ledger(empty_url) == Decimal("1.25")

    await migrate.downgrade_async(empty_url, "0001")
    assert await migrate.current_revision_async(empty_url) == "0001"
    assert await _tables(empty_url) == before

    # Upgrading again proves the downgrade also removed the append-only trigger (and, on
    # PostgreSQL, its function): creating them a second time would fail otherwise.
    await migrate.upgrade_async(empty_url, "0002")
    assert await _use_ledger(empty_url) == Decimal("1.25")


def _diffs(connection: Connection) -> list[Any]:
    def credit_objects(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return getattr(table, "name", name) in CREDIT_TABLES

    context = MigrationContext.configure(connection, opts={"include_object": credit_objects, "compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_credit_tables_match_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []

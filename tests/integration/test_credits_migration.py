"""Migration 0002 (the credit tables) upgrades, downgrades and upgrades again on PostgreSQL and SQLite."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.conftest import schema_diffs, table_names
from turnledger import CreditLedger
from turnledger.store import migrate
from turnledger.store.engine import make_engine

CREDIT_TABLES = {"credit_accounts", "credit_journal", "credit_holds"}

pytestmark = pytest.mark.asyncio


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


async def test_0002_up_down_and_up_again(empty_database_url: str) -> None:
    await migrate.upgrade_async(empty_database_url, "0001")
    before = await table_names(empty_database_url)
    assert not before & CREDIT_TABLES

    await migrate.upgrade_async(empty_database_url, "0002")
    assert await table_names(empty_database_url) == before | CREDIT_TABLES
    assert await _use_ledger(empty_database_url) == Decimal("1.25")

    await migrate.downgrade_async(empty_database_url, "0001")
    assert await migrate.current_revision_async(empty_database_url) == "0001"
    assert await table_names(empty_database_url) == before

    # Upgrading again proves the downgrade also removed the append-only trigger (and, on
    # PostgreSQL, its function): creating them a second time would fail otherwise.
    await migrate.upgrade_async(empty_database_url, "0002")
    assert await _use_ledger(empty_database_url) == Decimal("1.25")


async def test_migrated_credit_tables_match_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diffs, CREDIT_TABLES) == []

"""Threads in reports: a thread belongs to its user, and ``turnledger report`` filters by thread and usage type.

Thread ids such as "main" or "default" are chosen per user by many apps: two users' "main" threads are
two threads, billed to two users, never one group.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.cli_run import invoke
from turnledger import ReportBy, make_engine, record_token_usage, session_factory, usage_report
from turnledger.cli.chart_data import daily_spend, day_range

DAY = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

SPEND = [
    # user, thread, usage type, cost
    ("alice", "main", "chat", "1.00"),
    ("alice", "main", "chat", "0.50"),
    ("bob", "main", "chat", "2.00"),
    ("bob", "main", "batch", "4.00"),
    ("bob", "t-9", "chat", "0.25"),
    ("carol", None, "chat", "0.10"),
]


async def _record(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session:
        for user, thread, usage_type, cost in SPEND:
            record_token_usage(
                session, usage_type=usage_type, user_id=user, thread_id=thread, cost_usd=cost, created_at=DAY
            )
        await session.commit()


def _record_at(url: str) -> None:
    async def run() -> None:
        engine = make_engine(url)
        try:
            await _record(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


async def test_by_thread_groups_each_users_thread_apart(engine: AsyncEngine) -> None:
    await _record(engine)
    async with engine.connect() as conn:
        rows = await usage_report(conn, ReportBy.THREAD)
        tenants = await usage_report(conn, ReportBy.TENANT)
    assert [(r.user_id, r.key, r.cost_usd, r.calls) for r in rows] == [
        ("bob", "main", Decimal("6.00"), 2),
        ("alice", "main", Decimal("1.50"), 2),
        ("bob", "t-9", Decimal("0.25"), 1),
        ("carol", None, Decimal("0.10"), 1),
    ]
    # Other breakdowns name no user beside their key.
    assert {r.user_id for r in tenants} == {None}


async def test_the_chart_by_thread_keeps_each_users_thread_apart(engine: AsyncEngine) -> None:
    await _record(engine)
    days = day_range(DAY, DAY.replace(hour=13))
    async with engine.connect() as conn:
        spend = await daily_spend(conn, ReportBy.THREAD, days)
    assert [(s.name, s.total) for s in spend.series] == [
        ("bob / main", Decimal("6.00")),
        ("alice / main", Decimal("1.50")),
        ("bob / t-9", Decimal("0.25")),
        ("carol / (none)", Decimal("0.10")),
    ]
    assert spend.total == Decimal("7.85")


def test_report_by_thread_shows_the_user_of_each_thread(database_url: str) -> None:
    _record_at(database_url)
    as_json = invoke("report", "--by", "thread", "--format", "json", "--database-url", database_url)
    assert as_json.exit_code == 0, as_json.output
    assert [(r["user_id"], r["key"], r["cost_usd"]) for r in json.loads(as_json.stdout)] == [
        ("bob", "main", "6.00"),
        ("alice", "main", "1.50"),
        ("bob", "t-9", "0.25"),
        ("carol", None, "0.10"),
    ]
    as_csv = invoke("report", "--by", "thread", "--format", "csv", "--database-url", database_url)
    assert as_csv.stdout.splitlines()[:2] == [
        "key,user_id,calls,prompt_tokens,completion_tokens,total_tokens,cached_tokens,cache_creation_tokens,"
        "reasoning_tokens,cost_usd,unpriced_calls,failed_calls,abandoned_calls",
        "main,bob,2,0,0,0,0,0,0,6.00,0,0,0",
    ]
    table = invoke("report", "--by", "thread", "--database-url", database_url)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "thread" in line and "calls" in line)
    assert header.split()[:3] == ["user", "thread", "calls"]
    # Other breakdowns keep their columns: no user_id beside a tenant or a model.
    by_user = invoke("report", "--by", "user", "--format", "json", "--database-url", database_url)
    assert "user_id" not in json.loads(by_user.stdout)[0]


def test_report_filters_by_thread_and_usage_type(database_url: str) -> None:
    url = database_url
    _record_at(database_url)
    main = invoke("report", "--by", "user", "--thread", "main", "--format", "json", "--database-url", database_url)
    assert main.exit_code == 0, main.output
    assert [(r["key"], r["cost_usd"]) for r in json.loads(main.stdout)] == [("bob", "6.00"), ("alice", "1.50")]
    batch = invoke("report", "--by", "user", "--usage-type", "batch", "--format", "json", "--database-url", url)
    assert [(r["key"], r["cost_usd"]) for r in json.loads(batch.stdout)] == [("bob", "4.00")]
    both = invoke(
        "report", "--by", "tenant", "--user", "bob", "--thread", "main", "--usage-type", "chat", "--format", "json",
        "--database-url", database_url,
    )  # fmt: skip
    assert [(r["key"], r["cost_usd"]) for r in json.loads(both.stdout)] == [(None, "2.00")]
    helped = invoke("report", "--help")
    assert "--thread" in helped.stdout and "--usage-type" in helped.stdout

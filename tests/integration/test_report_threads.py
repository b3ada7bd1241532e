"""Threads in reports: a thread belongs to its user, and ``turnledger report`` filters by thread and usage type.

Thread ids such as "main" or "default" are chosen per user by many apps: two users' "main" threads are
two threads, billed to two users, never one group.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.cli_run import invoke
from turnledger import make_engine, record_token_usage, session_factory

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

"""Every breakdown read back with exact figures, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, localcontext

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from turnledger import (
    ReportBy,
    ReportRow,
    SchemaMissingError,
    record_token_usage,
    record_turn,
    session_factory,
    usage_report,
)
from turnledger.cli.chart_data import daily_spend, day_range
from turnledger.store import reports
from turnledger.store.engine import make_engine
from turnledger.store.models import TokenUsage

from .conftest import PG_ADMIN_DSN
from .store_data import DAY1, DAY2, DAY3, call, closed_turn, report_turns

ALICE = ReportRow(
    key="alice",
    calls=4,
    prompt_tokens=3170,
    completion_tokens=1215,
    total_tokens=4385,
    cached_tokens=200,
    reasoning_tokens=50,
    cost_usd=Decimal("0.012941"),
    unpriced_calls=1,
)
CAROL = ReportRow(
    key="carol",
    calls=2,
    prompt_tokens=400,
    completion_tokens=100,
    total_tokens=500,
    cost_usd=Decimal("0.00012"),
    failed_calls=1,
)
BOB = ReportRow(
    key="bob",
    calls=2,
    prompt_tokens=10,
    completion_tokens=5,
    total_tokens=15,
    cost_usd=Decimal("0.0000045"),
    unpriced_calls=1,
    abandoned_calls=1,
)
DAVE = ReportRow(
    key="dave",
    calls=1,
    prompt_tokens=10,
    completion_tokens=5,
    total_tokens=15,
    cache_creation_tokens=7,
    cost_usd=None,
    unpriced_calls=1,
)


def keyed(row: ReportRow, key: str | None, user_id: str | None = None) -> ReportRow:
    return ReportRow(**(row.to_dict() | {"key": key, "cost_usd": row.cost_usd, "user_id": user_id}))


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(engine)() as s:
        for turn, when in report_turns():
            await record_turn(s, turn, usage_type="chat", created_at=when)
        await s.commit()
        yield s


async def test_per_model(session: AsyncSession) -> None:
    assert await usage_report(session, ReportBy.MODEL) == [
        ReportRow(
            key="gpt-4o",
            calls=2,
            prompt_tokens=2010,
            completion_tokens=755,
            total_tokens=2765,
            cache_creation_tokens=7,
            cost_usd=Decimal("0.0125"),
            unpriced_calls=1,
        ),
        ReportRow(
            key="gpt-4o-mini",
            calls=5,
            prompt_tokens=1530,
            completion_tokens=560,
            total_tokens=2090,
            cached_tokens=200,
            reasoning_tokens=50,
            cost_usd=Decimal("0.0005655"),
            failed_calls=1,
        ),
        # Every call unpriced: the cost is unknown, never 0.
        ReportRow(
            key="local-llm",
            calls=2,
            prompt_tokens=50,
            completion_tokens=10,
            total_tokens=60,
            cost_usd=None,
            unpriced_calls=2,
            abandoned_calls=1,
        ),
    ]


async def test_per_user(session: AsyncSession) -> None:
    assert await reports.by_user(session) == [ALICE, CAROL, BOB, DAVE]


async def test_an_applications_decimal_context_does_not_round_a_report(session: AsyncSession) -> None:
    with localcontext() as ctx:
        ctx.prec = 3  # the application's own setting; 0.012941 has 5 significant digits
        rows = await reports.by_user(session)
        per_day = await reports.by_day(session)
    assert rows == [ALICE, CAROL, BOB, DAVE]
    assert sum(r.cost_usd for r in per_day if r.cost_usd is not None) == Decimal("0.0130655")


async def test_per_thread(session: AsyncSession) -> None:
    # Each user's threads are theirs: a thread's row names its user.
    assert await reports.by_thread(session) == [
        keyed(ALICE, "t-a", "alice"),
        keyed(CAROL, None, "carol"),
        keyed(BOB, "t-b", "bob"),
        keyed(DAVE, "t-d", "dave"),
    ]


async def test_per_tenant(session: AsyncSession) -> None:
    globex = ReportRow(
        key="globex",
        calls=3,
        prompt_tokens=20,
        completion_tokens=10,
        total_tokens=30,
        cache_creation_tokens=7,
        cost_usd=Decimal("0.0000045"),
        unpriced_calls=2,
        abandoned_calls=1,
    )
    assert await reports.by_tenant(session) == [keyed(ALICE, "acme"), keyed(CAROL, None), globex]


async def test_per_day_buckets_by_utc_day(session: AsyncSession) -> None:
    assert await reports.by_day(session) == [
        ReportRow(
            key="2026-11-02",
            calls=2,
            prompt_tokens=3000,
            completion_tokens=1175,
            total_tokens=4175,
            cached_tokens=200,
            reasoning_tokens=50,
            cost_usd=Decimal("0.012905"),
        ),
        # 23:59:59.999999 still belongs to its own day.
        ReportRow(
            key="2026-11-03",
            calls=3,
            prompt_tokens=180,
            completion_tokens=45,
            total_tokens=225,
            cache_creation_tokens=7,
            cost_usd=Decimal("0.000036"),
            unpriced_calls=2,
        ),
        ReportRow(
            key="2026-11-04",
            calls=4,
            prompt_tokens=410,
            completion_tokens=105,
            total_tokens=515,
            cost_usd=Decimal("0.0001245"),
            unpriced_calls=1,
            failed_calls=1,
            abandoned_calls=1,
        ),
    ]


async def test_since_is_inclusive_and_until_exclusive(session: AsyncSession) -> None:
    rows = await reports.by_user(session, since=DAY2, until=DAY3)
    alice_day2 = ReportRow(
        key="alice",
        calls=2,
        prompt_tokens=170,
        completion_tokens=40,
        total_tokens=210,
        cost_usd=Decimal("0.000036"),
        unpriced_calls=1,
    )
    assert rows == [alice_day2, DAVE]
    assert await reports.by_user(session, since=DAY3 + timedelta(microseconds=1)) == []


async def test_filters_by_user_tenant_thread_and_usage_type(session: AsyncSession) -> None:
    by_model_alice = await reports.by_model(session, user_id="alice")
    assert [(r.key, r.calls, r.cost_usd, r.unpriced_calls) for r in by_model_alice] == [
        ("gpt-4o", 1, Decimal("0.0125"), 0),
        ("gpt-4o-mini", 2, Decimal("0.000441"), 0),
        ("local-llm", 1, None, 1),
    ]
    assert [r.key for r in await reports.by_day(session, tenant_id="globex")] == ["2026-11-03", "2026-11-04"]
    assert [r.key for r in await reports.by_model(session, thread_id="t-d")] == ["gpt-4o"]
    assert await reports.by_user(session, usage_type="embedding") == []
    assert await reports.by_user(session, since=DAY1, user_id="carol") == [CAROL]


async def test_attribution_is_data_not_sql(session: AsyncSession) -> None:
    # Filters are bound parameters: a hostile value matches nothing and breaks nothing.
    assert await reports.by_model(session, user_id="alice' OR '1'='1") == []
    assert len(await reports.by_model(session)) == 3


async def test_filters_find_ids_that_were_stored_shortened_or_without_nuls(engine: AsyncEngine) -> None:
    # The writers store a 300-character id shortened to its column (and a NUL removed): filtering by
    # the id the application passed must still find that user's spend, not report none.
    long_user, nul_thread, nul_tenant = "ü" * 300, "t\x00-1", "acme\x00"
    turn = closed_turn("long-ids", [call("c-1", "gpt-4o", 1, 1, "0.5")], user_id=long_user, thread_id=nul_thread,
                       tenant_id=nul_tenant)  # fmt: skip
    async with session_factory(engine)() as s:
        await record_turn(s, turn, usage_type="chat\x00", created_at=DAY1)
        record_token_usage(s, usage_type="chat", user_id=long_user, cost_usd="0.25", created_at=DAY1)
        expected = Decimal("0.75")
        if engine.dialect.name == "sqlite":
            # A row record_token_usage wrote before it fitted strings: SQLite kept the id whole.
            legacy = record_token_usage(s, usage_type="chat", user_id="u", cost_usd="0.125", created_at=DAY1)
            assert legacy is not None
            legacy.user_id = long_user
            expected += Decimal("0.125")
        await s.commit()
        for grouping in ReportBy:
            rows = await usage_report(s, grouping, user_id=long_user)
            assert sum((r.cost_usd or Decimal(0) for r in rows), Decimal(0)) == expected, grouping
        only_turn = {"user_id": long_user, "thread_id": nul_thread, "tenant_id": nul_tenant, "usage_type": "chat\x00"}
        assert [(r.key, r.cost_usd) for r in await reports.by_model(s, **only_turn)] == [("gpt-4o", Decimal("0.5"))]
        assert [r.cost_usd for r in await reports.by_day(s, **only_turn)] == [Decimal("0.5")]


FIGURES = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_creation_tokens",
           "reasoning_tokens", "unpriced_calls", "failed_calls", "abandoned_calls")  # fmt: skip


def summed(rows: Sequence[ReportRow | TokenUsage]) -> dict[str, object]:
    """The figures summed over report rows or turn rows (both carry them under the same names)."""
    out: dict[str, object] = {name: sum(getattr(r, name) for r in rows) for name in FIGURES}
    out["cost_usd"] = sum((r.cost_usd for r in rows if r.cost_usd is not None), Decimal(0))
    return out


async def test_every_breakdown_adds_up_to_the_turn_rows_with_record_token_usage_spend(session: AsyncSession) -> None:
    # Spend recorded by hand has a turn row and no call rows: per model it is "(no model)" (key None),
    # never left out, so every breakdown bills the same total.
    record_token_usage(
        session, usage_type="batch", user_id="alice", prompt_tokens=1000, completion_tokens=100,
        cost_usd=Decimal("0.50"), created_at=DAY1,
    )  # fmt: skip
    # Unpriced (no cost given): its 3 calls count as unpriced everywhere.
    record_token_usage(
        session, usage_type="batch", user_id="erin", tenant_id="acme", prompt_tokens=7, calls=3,
        cached_tokens=2, reasoning_tokens=1, created_at=DAY3,
    )  # fmt: skip
    await session.commit()
    expected = summed((await session.scalars(select(TokenUsage))).all())
    assert expected["calls"] == 13 and expected["cost_usd"] == Decimal("0.5130655")
    for grouping in ReportBy:
        assert summed(await usage_report(session, grouping)) == expected, grouping
        assert summed(await usage_report(session, grouping, since=DAY2)) == summed(
            await usage_report(session, ReportBy.DAY, since=DAY2)
        ), grouping
    no_model = ReportRow(
        key=None,
        calls=4,
        prompt_tokens=1007,
        completion_tokens=100,
        total_tokens=1107,
        cached_tokens=2,
        reasoning_tokens=1,
        cost_usd=Decimal("0.50"),
        unpriced_calls=3,
    )
    assert (await usage_report(session, ReportBy.MODEL))[0] == no_model
    assert await reports.by_model(session, user_id="erin") == [
        ReportRow(key=None, calls=3, prompt_tokens=7, total_tokens=7, cached_tokens=2, reasoning_tokens=1,
                  cost_usd=None, unpriced_calls=3)
    ]  # fmt: skip
    assert await reports.by_model(session, user_id="erin", since=DAY3 + timedelta(microseconds=1)) == []


async def test_an_empty_turn_adds_no_no_model_group(session: AsyncSession) -> None:
    record_token_usage(session, usage_type="batch", user_id="alice", calls=0, cost_usd=0)
    await session.commit()
    assert [r.key for r in await reports.by_model(session)] == ["gpt-4o", "gpt-4o-mini", "local-llm"]


async def test_a_turn_without_calls_does_not_price_a_group_of_unpriced_calls(engine: AsyncEngine) -> None:
    # A turn that made no call is stored with an exact $0; beside unpriced calls it must not turn
    # "unknown" into "$0" in any breakdown.
    async with session_factory(engine)() as s:
        await record_turn(s, closed_turn("unpriced", [call("c-1", "local-llm", 10, 5, None)]), usage_type="chat",
                          created_at=DAY1)  # fmt: skip
        await record_turn(s, closed_turn("no-call", []), usage_type="chat", created_at=DAY1)
        record_token_usage(s, usage_type="batch", user_id="u-1", thread_id="t-1", tenant_id="acme", calls=2,
                           created_at=DAY1)  # fmt: skip
        await s.commit()
        for grouping in ReportBy:
            rows = await usage_report(s, grouping)
            assert [(r.calls, r.unpriced_calls, r.cost_usd) for r in rows if r.calls] == (
                [(1, 1, None), (2, 2, None)] if grouping is ReportBy.MODEL else [(3, 3, None)]
            ), grouping
        # Calls that are all free, and a turn without calls: an exact $0, as before.
        record_token_usage(s, usage_type="batch", user_id="u-2", calls=1, cost_usd=0, created_at=DAY1)
        await record_turn(s, closed_turn("no-call-2", [], user_id="u-2"), usage_type="chat", created_at=DAY1)
        await s.commit()
        assert [(r.calls, r.cost_usd) for r in await reports.by_user(s, user_id="u-2")] == [(1, Decimal(0))]


def test_an_unset_key_is_named_for_its_breakdown() -> None:
    assert reports.key_label(ReportBy.MODEL, None) == "(no model)"
    assert reports.key_label(ReportBy.USER, None) == "(none)"
    assert reports.key_label(ReportBy.MODEL, "gpt-4o") == "gpt-4o"


async def test_an_unknown_grouping_is_refused(session: AsyncSession) -> None:
    with pytest.raises(ValueError, match="colour"):
        await usage_report(session, "colour")


async def test_a_bound_without_a_time_zone_is_refused_as_such(session: AsyncSession) -> None:
    # Not "database error: ValueError": the database is fine, the bound is ambiguous (UTC? local?).
    naive = datetime(2026, 11, 2)
    with pytest.raises(ValueError, match="since must carry a time zone"):
        await usage_report(session, ReportBy.DAY, since=naive)
    with pytest.raises(ValueError, match="until must carry a time zone"):
        await reports.by_model(session, since=DAY1, until=naive)


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", PG_ADMIN_DSN], ids=["sqlite", "postgresql"])
async def test_a_database_without_tables_says_migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as s:
            with pytest.raises(SchemaMissingError, match="turnledger migrate"):
                await usage_report(s, ReportBy.DAY)
    finally:
        await engine.dispose()


def test_row_to_dict_keeps_money_exact() -> None:
    assert ALICE.to_dict()["cost_usd"] == "0.012941"
    assert ReportRow(key="m", cost_usd=Decimal("1.5E-7")).to_dict()["cost_usd"] == "0.00000015"
    assert DAVE.to_dict()["cost_usd"] is None


async def test_reports_and_the_chart_sum_stored_costs_exactly_however_many_digits_the_sum_needs(
    engine: AsyncEngine,
) -> None:
    # Each cost as record_token_usage keeps it (at most 60 significant digits); their sum needs 73.
    # PostgreSQL's SUM is exact. Before: SQLite's report and every chart total added them in 60 digits,
    # 1000000000000.1111111111111111111111111111111111111111111111 (rounded), not the sum.
    big, fine = Decimal("1000000000000"), Decimal("0." + "1" * 60)
    with localcontext() as ctx:
        ctx.prec = 100
        exact = big + fine
        both_days = exact + exact
    async with session_factory(engine)() as s:
        for cost, day in ((big, DAY1), (fine, DAY1), (big, DAY2), (fine, DAY2)):
            assert record_token_usage(s, usage_type="chat", user_id="u", cost_usd=cost, created_at=day) is not None
        await s.commit()
        for grouping in ReportBy:
            rows = await usage_report(s, grouping, until=DAY2)
            assert [r.cost_usd for r in rows] == [exact], grouping
        spend = await daily_spend(s, ReportBy.USER, day_range(DAY1, DAY2 + timedelta(days=1)))
    assert [day_total for day_total in map(spend.day_total, spend.days) if day_total] == [exact, exact]
    assert spend.total == both_days
    assert [series.total for series in spend.series] == [both_days]

"""Every breakdown and filter combination against the same figures computed in plain Python, on both databases.

Seeded random turns (odd and over-long ids, unpriced, free and many-decimal costs, instants at
midnight, month and year ends, in several time zones) are recorded with every real writer
(record_turn, the batch writer's COPY, an outbox line replayed, record_token_usage); each
report must equal :func:`report_oracle.expected_report` exactly (Decimal sums, counters, keys, order).
On PostgreSQL the session runs in a far-from-UTC time zone: a UTC day must not move with it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from turnledger import (
    ReportBy,
    TokenCallRecord,
    TurnTokenAccumulator,
    make_engine,
    record_token_usage,
    record_turn,
    session_factory,
    usage_report,
)
from turnledger.cli.app import parse_when
from turnledger.store.entries import Entry, is_entry, make_entry, write_entries
from turnledger.store.lines import encode_line, unpack_entry
from turnledger.store.models import TokenUsage, TokenUsageCall
from turnledger.store.outbox import decode_line
from turnledger.store.record import turn_rows
from turnledger.store.reports import ReportFilters, key_label

from .cli_run import invoke
from .report_oracle import (
    EXACT,
    TENANTS,
    THREADS,
    USAGE_TYPES,
    USERS,
    ZONES,
    Fact,
    Generated,
    boundaries,
    expected_report,
    generate,
)

SEED = 20261126
RECENT_USER = "recent-user"
SESSION_TIME_ZONE = "Pacific/Kiritimati"
"""UTC+14: a turn at 12:00 UTC or later is on the next calendar day there."""


def engine_for(url: str) -> AsyncEngine:
    if url.startswith("postgresql"):
        return make_engine(url, connect_args={"server_settings": {"timezone": SESSION_TIME_ZONE}})
    return make_engine(url)


async def record(engine: AsyncEngine, data: Generated) -> None:
    """Every writer's way in: record_turn, the batch writer's live COPY (PostgreSQL; an INSERT on SQLite),
    an outbox line read back as the replay writes it, and record_token_usage."""
    live: list[Entry] = []
    replayed: list[Entry] = []
    async with session_factory(engine)() as s:
        for i, (turn, usage_type, when) in enumerate(data.turns):
            if i % 3 == 0:
                assert await record_turn(s, turn, usage_type=usage_type, created_at=when) is not None
                continue
            entry = make_entry(turn_rows(turn, usage_type=usage_type, created_at=when))
            if i % 3 == 1:
                live.append(entry)
            else:
                unpacked = unpack_entry(decode_line(encode_line(entry)))
                assert unpacked is not None and is_entry(unpacked)
                replayed.append(unpacked)
        for kwargs in data.by_hand:
            assert record_token_usage(s, **kwargs) is not None  # type: ignore[arg-type]
        await s.commit()
    async with engine.begin() as conn:
        assert await write_entries(conn, live, fresh=True) == len(live)
        assert await write_entries(conn, replayed) == len(replayed)


@pytest.fixture
async def recorded(database_url: str) -> AsyncIterator[tuple[AsyncSession, list[Fact]]]:
    data = generate(SEED, n_turns=120, n_by_hand=30)
    engine = engine_for(database_url)
    try:
        await record(engine, data)
        async with session_factory(engine)() as s:
            if engine.dialect.name == "postgresql":
                assert await s.scalar(select(func.current_setting("TimeZone"))) == SESSION_TIME_ZONE
            yield s, data.facts
    finally:
        await engine.dispose()


def filter_cases(facts: list[Fact]) -> list[ReportFilters]:
    rng = random.Random(SEED)
    # Bounds given in any zone mean the same instant.
    instants: list[datetime | None] = [None, *(b.astimezone(rng.choice(ZONES)) for b in boundaries(facts, rng, 8))]
    cases = [ReportFilters()]
    for _ in range(25):
        cases.append(ReportFilters(since=rng.choice(instants), until=rng.choice(instants)))
    cases += [ReportFilters(user_id=v) for v in USERS if v is not None]
    cases += [ReportFilters(thread_id=v) for v in THREADS if v is not None]
    cases += [ReportFilters(tenant_id=v) for v in TENANTS if v is not None]
    cases += [ReportFilters(usage_type=v) for v in USAGE_TYPES]
    for _ in range(15):
        cases.append(
            ReportFilters(
                since=rng.choice(instants),
                until=rng.choice(instants),
                user_id=rng.choice(USERS),
                thread_id=rng.choice((None, None, *THREADS)),
                tenant_id=rng.choice((None, *TENANTS)),
                usage_type=rng.choice((None, None, *USAGE_TYPES)),
            )
        )
    cases.append(ReportFilters(user_id="nobody"))  # an empty answer
    return cases


def as_kwargs(filters: ReportFilters) -> dict[str, Any]:
    return {name: getattr(filters, name) for name in ReportFilters.__dataclass_fields__}


async def test_every_breakdown_and_filter_matches_plain_python(recorded: tuple[AsyncSession, list[Fact]]) -> None:
    session, facts = recorded
    checked = 0
    for filters in filter_cases(facts):
        for by in ReportBy:
            expected = expected_report(facts, by, filters)
            assert await usage_report(session, by, **as_kwargs(filters)) == expected, (by, filters)
            checked += len(expected)
    assert checked > 1000  # the cases are not mostly empty answers


def totals(rows: list[dict[str, Any]]) -> tuple[Decimal, int, int, int]:
    """Priced cost, calls, unpriced calls and tokens over report rows as JSON (``ReportRow.to_dict``)."""
    cost = Decimal(0)
    for row in rows:
        cost = EXACT.add(cost, Decimal(row["cost_usd"] or 0))
    return cost, *(sum(row[n] for row in rows) for n in ("calls", "unpriced_calls", "total_tokens"))


async def test_every_breakdown_adds_up_to_the_same_totals(recorded: tuple[AsyncSession, list[Fact]]) -> None:
    session, _facts = recorded
    answers = {totals([r.to_dict() for r in await usage_report(session, by)]) for by in ReportBy}
    assert len(answers) == 1, answers


async def test_the_call_rows_micros_add_up_to_their_turns(recorded: tuple[AsyncSession, list[Fact]]) -> None:
    # The rounded micro-USD of a turn's calls add up to the turn's, which is its exact cost rounded once.
    session, _facts = recorded
    turns = {t.id: t for t in (await session.scalars(select(TokenUsage))).all()}
    shares: dict[int, list[int | None]] = {}
    for c in (await session.scalars(select(TokenUsageCall))).all():
        shares.setdefault(c.usage_id, []).append(c.cost_micros)
    for usage_id, micros in shares.items():
        turn = turns[usage_id]
        priced = [m for m in micros if m is not None]
        assert turn.cost_micros == (sum(priced) if priced else None), turn.turn_id
        if turn.cost_usd is not None:
            assert turn.cost_micros == int((turn.cost_usd * 1_000_000).quantize(Decimal(1), context=EXACT))


def test_the_cli_report_agrees_with_the_python_report(database_url: str) -> None:
    data = generate(SEED + 1, n_turns=40, n_by_hand=10)
    now = datetime.now(UTC).replace(microsecond=0)
    # Either side of `--since 7d`, an hour clear of it (the command reads the clock itself).
    for name, hours in (("inside", -1), ("outside", 1)):
        turn = TurnTokenAccumulator(turn_id=f"seven-days-{name}", user_id=RECENT_USER)
        turn.add(TokenCallRecord(call_id=name, model="gpt-4o", cost_usd=Decimal("0.25"), prompt_tokens=hours + 2))
        turn.close(timeout=0)
        data.turns.append((turn, "chat", now - timedelta(days=7, hours=hours)))

    async def python_reports(cases: list[tuple[ReportBy, dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        engine = make_engine(database_url)
        try:
            await record(engine, data)
            async with session_factory(engine)() as s:
                return [[_as_cli(by, r.to_dict()) for r in await usage_report(s, by, **kw)] for by, kw in cases]
        finally:
            await engine.dispose()

    user, tenant = next(u for u in USERS if u and len(u) > 255), "acme"
    cli_cases: list[tuple[list[str], ReportBy, dict[str, Any]]] = [
        *[([], by, {}) for by in ReportBy],
        (["--since", "2026-12-01", "--until", "2027-01-01"], ReportBy.DAY,
         {"since": datetime(2026, 12, 1, tzinfo=UTC), "until": datetime(2027, 1, 1, tzinfo=UTC)}),
        (["--since", "2026-12-31T23:59:59.999999+00:00"], ReportBy.USER,
         {"since": datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)}),
        (["--until", "2026-11-03T01:00+01:00"], ReportBy.MODEL, {"until": datetime(2026, 11, 3, tzinfo=UTC)}),
        (["--user", user], ReportBy.MODEL, {"user_id": user}),
        (["--tenant", tenant], ReportBy.DAY, {"tenant_id": tenant}),
        (["--user", "nobody"], ReportBy.USER, {"user_id": "nobody"}),
        (["--thread", "t-1"], ReportBy.USER, {"thread_id": "t-1"}),
        (["--usage-type", "embedding"], ReportBy.THREAD, {"usage_type": "embedding"}),
        (["--since", "7d", "--user", RECENT_USER], ReportBy.USER,
         {"since": now - timedelta(days=7), "user_id": RECENT_USER}),
    ]  # fmt: skip
    expected = asyncio.run(python_reports([(by, kw) for _, by, kw in cli_cases]))
    # Only the turn inside the last 7 days.
    assert [(r["calls"], r["prompt_tokens"], r["cost_usd"]) for r in expected[-1]] == [(1, 1, "0.25")]
    for (args, by, _kw), rows in zip(cli_cases, expected, strict=True):
        result = invoke("report", "--by", by.value, *args, "--format", "json", "--database-url", database_url)
        assert result.exit_code == 0, result.output
        answered = json.loads(result.stdout)
        assert answered == rows, args
        assert totals(answered) == totals(rows)


def _as_cli(by: ReportBy, row: dict[str, Any]) -> dict[str, Any]:
    """A Python report row as the CLI's JSON has it: ``user_id`` only beside a thread, whose user it names."""
    return row if by is ReportBy.THREAD else {k: v for k, v in row.items() if k != "user_id"}


def test_the_cli_chart_agrees_with_the_python_report_day_by_day(database_url: str) -> None:
    data = generate(SEED + 4, n_turns=60, n_by_hand=10)
    first, days = date(2026, 12, 29), 5  # across the year's end, whose edges the generator favours

    async def per_day() -> list[dict[str, Any]]:
        engine = make_engine(database_url)
        try:
            await record(engine, data)
            async with session_factory(engine)() as s:
                out = []
                for day in (first + timedelta(days=i) for i in range(days)):
                    since = datetime.combine(day, time(0), UTC)
                    for r in await usage_report(s, ReportBy.MODEL, since=since, until=since + timedelta(days=1)):
                        if r.cost_usd is not None or r.unpriced_calls:
                            name, cost = key_label(ReportBy.MODEL, r.key), r.to_dict()["cost_usd"]
                            out.append({"day": day.isoformat(), "model": name, "cost_usd": cost,
                                        "unpriced_calls": r.unpriced_calls})  # fmt: skip
                return out
        finally:
            await engine.dispose()

    expected = asyncio.run(per_day())
    assert len({row["day"] for row in expected}) >= 3
    until = (first + timedelta(days=days)).isoformat()
    result = invoke("chart", "--since", first.isoformat(), "--until", until, "--format", "json",
                    "--database-url", database_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    key = itemgetter("day", "model")
    assert sorted(json.loads(result.stdout), key=key) == sorted(expected, key=key)


def test_relative_since_is_that_long_before_now() -> None:
    now = datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert parse_when("7d", now=now) == datetime(2026, 12, 25, 0, 0, 0, 1, tzinfo=UTC)
    assert parse_when("24h", now=now) == datetime(2026, 12, 31, 0, 0, 0, 1, tzinfo=UTC)
    assert parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)

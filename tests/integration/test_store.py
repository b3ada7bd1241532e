"""Writing turns to the real PostgreSQL and SQLite: schema, migrations, record_turn, record_token_usage."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from turnledger import CallStatus, record_token_usage, record_turn, session_factory
from turnledger.store import migrate
from turnledger.store.engine import make_engine, resolve_url
from turnledger.store.models import TokenUsage, TokenUsageCall
from turnledger.store.record import insert_turn_rows, turn_rows
from turnledger.store.tables import VERSION_TABLE

from .conftest import schema_diffs, table_names
from .store_data import DAY1, DAY2, call, closed_turn

OUR_TABLES = {"token_usage", "token_usage_calls"}

if importlib.util.find_spec("turnledger.credits_models") is not None:
    # The migrations create every team's tables; the metadata must know them all to compare.
    importlib.import_module("turnledger.credits_models")


async def test_migrate_from_empty_down_to_base_and_up_again(empty_database_url: str) -> None:
    url = empty_database_url
    assert await migrate.current_revision_async(url) is None
    await migrate.upgrade_async(url)
    head = migrate.head_revision()
    assert await migrate.current_revision_async(url) == head
    assert await table_names(url) >= OUR_TABLES

    await migrate.downgrade_async(url, "base")
    assert await migrate.current_revision_async(url) is None
    assert await table_names(url) <= {VERSION_TABLE}

    await migrate.upgrade_async(url)
    assert await migrate.current_revision_async(url) == head
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            turn = closed_turn("after-reupgrade", [call("x1", "gpt-4o-mini", 10, 5, "0.0000045")])
            assert await record_turn(session, turn, usage_type="chat") is not None
            await session.commit()
            assert await session.scalar(select(func.count()).select_from(TokenUsageCall)) == 1
    finally:
        await engine.dispose()


async def test_downgrade_to_0001_keeps_our_tables(empty_database_url: str) -> None:
    await migrate.upgrade_async(empty_database_url)
    await migrate.downgrade_async(empty_database_url, "0001")
    assert await migrate.current_revision_async(empty_database_url) == "0001"
    assert await table_names(empty_database_url) == OUR_TABLES | {VERSION_TABLE}


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(schema_diffs, OUR_TABLES) == []


async def test_record_turn_writes_the_turn_and_every_call_exactly(engine: AsyncEngine) -> None:
    turn = closed_turn(
        "turn-exact",
        [
            call("c-1", "gpt-4o-mini", 1000, 425, "0.000405", cached=200, reasoning=50),
            call("c-2", "in-house", 50, 10, None, cache_creation=30),
            call("c-3", "gpt-4o-mini", 0, 0, "0", status=CallStatus.FAILURE),
        ],
        abandoned=["in-house"],
        tags=["beta", "eu"],
    )
    # An abandoned call's token estimate is the cost engine's business; take its figures as given.
    ab = turn.calls[3]
    assert ab.status is CallStatus.ABANDONED and ab.cost_usd is None
    async with session_factory(engine)() as session:
        row_id = await record_turn(session, turn, usage_type="chat", created_at=DAY1)
        await session.commit()
    assert row_id is not None

    async with session_factory(engine)() as session:
        usage = (await session.execute(select(TokenUsage))).scalar_one()
        calls = (await session.execute(select(TokenUsageCall).order_by(TokenUsageCall.seq))).scalars().all()

    assert usage.id == row_id
    assert (usage.turn_id, usage.usage_type, usage.user_id, usage.thread_id, usage.message_id, usage.tenant_id) == (
        "turn-exact",
        "chat",
        "u-1",
        "t-1",
        "m-1",
        "acme",
    )
    assert usage.tags == ["beta", "eu"]
    assert (usage.calls, usage.unpriced_calls, usage.failed_calls, usage.abandoned_calls) == (4, 2, 1, 1)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        1050 + ab.prompt_tokens,
        435 + ab.completion_tokens,
        1485 + ab.total_tokens,
    )
    assert (usage.cached_tokens, usage.cache_creation_tokens, usage.reasoning_tokens) == (200, 30, 50)
    assert usage.cost_usd == Decimal("0.000405")
    assert str(usage.cost_usd) == "0.000405"
    assert usage.cost_micros == 405
    assert usage.created_at == DAY1 and usage.created_at.tzinfo is not None
    assert usage.model_breakdown is not None
    assert usage.model_breakdown["gpt-4o-mini"]["cost_usd"] == "0.000405"
    assert usage.model_breakdown["in-house"]["cost_usd"] is None
    assert usage.call_details is not None and [d["call_id"] for d in usage.call_details] == [
        "c-1",
        "c-2",
        "c-3",
        "turn-exact-abandoned-0",
    ]

    assert [(c.seq, c.call_id, c.model, c.status) for c in calls] == [
        (0, "c-1", "gpt-4o-mini", "success"),
        (1, "c-2", "in-house", "success"),
        (2, "c-3", "gpt-4o-mini", "failure"),
        (3, "turn-exact-abandoned-0", "in-house", "abandoned"),
    ]
    assert [c.cost_usd for c in calls] == [Decimal("0.000405"), None, Decimal("0"), None]
    assert [c.cost_micros for c in calls] == [405, None, 0, None]
    assert [c.cost_source for c in calls[:3]] == ["response_cost", "none", "response_cost"]
    assert "no_callback" in calls[3].flags and calls[3].stream is True
    assert calls[3].prompt_tokens == ab.prompt_tokens
    assert calls[2].error_type == "InternalServerError"
    assert (calls[0].cached_tokens, calls[0].reasoning_tokens, calls[1].cache_creation_tokens) == (200, 50, 30)
    assert calls[0].latency_ms == 12.5 and calls[0].started_at == DAY1
    # Attribution and time are copied onto every call row for index-only per-user reports.
    assert {(c.user_id, c.thread_id, c.tenant_id, c.usage_type, c.created_at) for c in calls} == {
        ("u-1", "t-1", "acme", "chat", DAY1)
    }


async def test_recording_the_same_turn_twice_stores_it_once(engine: AsyncEngine) -> None:
    turn = closed_turn("turn-twice", [call("c-1", "gpt-4o-mini", 10, 5, "0.0000045"), call("c-2", "x", 1, 1, None)])
    sessions = session_factory(engine)
    async with sessions() as session:
        first = await record_turn(session, turn, usage_type="chat")
        again_same_tx = await record_turn(session, turn, usage_type="chat")
        await session.commit()
    async with sessions() as session:
        again_later = await record_turn(session, turn, usage_type="chat")
        await session.commit()
        turns = await session.scalar(select(func.count()).select_from(TokenUsage))
        calls = await session.scalar(select(func.count()).select_from(TokenUsageCall))
    assert first is not None
    assert (again_same_tx, again_later) == (None, None)
    assert (turns, calls) == (1, 2)


async def test_concurrent_writers_of_one_turn_store_it_once(engine: AsyncEngine) -> None:
    turn = closed_turn("turn-race", [call("c-1", "gpt-4o-mini", 10, 5, "0.0000045")])
    sessions = session_factory(engine)

    async def write() -> int | None:
        async with sessions() as session:
            row_id = await record_turn(session, turn, usage_type="chat")
            await session.commit()
            return row_id

    results = await asyncio.gather(*(write() for _ in range(4)))
    assert sum(r is not None for r in results) == 1
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(TokenUsageCall)) == 1


async def test_a_batch_of_turns_skips_the_ones_already_stored(engine: AsyncEngine) -> None:
    turns = [closed_turn(f"batch-{i}", [call(f"c-{i}", "gpt-4o-mini", i, 1, "0.000001")]) for i in range(5)]
    rows = [turn_rows(t, usage_type="chat") for t in turns]
    sessions = session_factory(engine)
    async with sessions() as session:
        first = await insert_turn_rows(session, rows[:2])
        await session.commit()
    async with sessions() as session:
        second = await insert_turn_rows(session, [*rows, rows[4]])
        await session.commit()
        stored = (await session.execute(select(TokenUsage.turn_id).order_by(TokenUsage.turn_id))).scalars().all()
        calls = await session.scalar(select(func.count()).select_from(TokenUsageCall))
    assert set(first) == {"batch-0", "batch-1"}
    assert set(second) == {"batch-2", "batch-3", "batch-4"}
    assert stored == [f"batch-{i}" for i in range(5)]
    assert calls == 5


async def test_attempts_of_a_retried_call_share_its_call_id_and_are_all_kept(engine: AsyncEngine) -> None:
    turn = closed_turn(
        "turn-retry",
        [
            call("same-id", "gpt-4o-mini", 10, 0, "0", status=CallStatus.FAILURE),
            call("same-id", "gpt-4o-mini", 10, 5, "0.0000045"),
        ],
    )
    async with session_factory(engine)() as session:
        await record_turn(session, turn, usage_type="chat")
        await session.commit()
        rows = (await session.execute(select(TokenUsageCall.seq, TokenUsageCall.call_id))).all()
    assert sorted(rows) == [(0, "same-id"), (1, "same-id")]


async def test_an_open_turn_is_refused(engine: AsyncEngine) -> None:
    turn = turnledger.TurnTokenAccumulator(turn_id="still-open")
    async with session_factory(engine)() as session:
        with pytest.raises(ValueError, match="still open"):
            await record_turn(session, turn, usage_type="chat")


async def test_record_token_usage_commits_with_the_callers_transaction(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session:
        kept = record_token_usage(
            session,
            usage_type="embedding",
            user_id="u-7",
            thread_id="t-7",
            tenant_id="acme",
            tags=["batch"],
            prompt_tokens=1200,
            cost_usd=0.0000234,
            turn_id="manual-1",
            created_at=DAY2,
        )
        unpriced = record_token_usage(
            session, usage_type="rerank", user_id="u-7", prompt_tokens=10, completion_tokens=2, calls=3
        )
        await session.commit()
    async with sessions() as session:
        dropped = record_token_usage(session, usage_type="chat", user_id="u-8", prompt_tokens=1)
        await session.rollback()
    assert kept is not None and unpriced is not None and dropped is not None

    async with sessions() as session:
        rows = (await session.execute(select(TokenUsage).order_by(TokenUsage.id))).scalars().all()
    assert [r.user_id for r in rows] == ["u-7", "u-7"]
    first, second = rows
    assert first.cost_usd == Decimal("0.0000234") and first.cost_micros == 23
    assert (first.calls, first.unpriced_calls, first.total_tokens, first.tags) == (1, 0, 1200, ["batch"])
    assert first.created_at == DAY2 and first.turn_id == "manual-1"
    assert second.cost_usd is None and second.cost_micros is None
    assert (second.calls, second.unpriced_calls, second.total_tokens) == (3, 3, 12)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"prompt_tokens": -1}, "non-negative integers"),
        ({"completion_tokens": 1.5}, "non-negative integers"),
        ({"cost_usd": "not money"}, "finite, non-negative"),
        ({"cost_usd": -0.5}, "finite, non-negative"),
        ({"cost_usd": float("nan")}, "finite, non-negative"),
        ({"created_at": datetime(2026, 11, 1)}, "timezone-aware"),
        ({"usage_type": ""}, "usage_type"),
    ],
)
def test_record_token_usage_never_raises_and_says_why(
    kwargs: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    added: list[Any] = []

    class Session:
        def add(self, row: Any) -> None:
            added.append(row)

    arguments: dict[str, Any] = {"usage_type": "chat", "user_id": "u-1"} | kwargs
    with caplog.at_level(logging.WARNING, logger="turnledger"):
        assert record_token_usage(Session(), **arguments) is None
    assert added == []
    assert why in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cost_usd": Decimal("1e13")},
        {"cost_usd": Decimal("1e-20000")},
        {"cost_micros": 2**63},
        {"cost_usd": "9223372036854.7758075"},
        {"prompt_tokens": 2**63},
        {"prompt_tokens": 2**62, "completion_tokens": 2**62},
        {"calls": 2**31},
    ],
)
async def test_record_token_usage_refuses_what_the_database_cannot_hold_and_the_caller_still_commits(
    engine: AsyncEngine, kwargs: dict[str, Any]
) -> None:
    # Added as they came, each made the caller's commit fail (an int past 64 bits, a micro-USD past
    # them, a numeric with 20,000 digits after the point, an INTEGER past 32 bits): its own work too.
    sessions = session_factory(engine)
    async with sessions() as session:
        assert record_token_usage(session, usage_type="chat", user_id="u-1", **kwargs) is None
        kept = record_token_usage(session, usage_type="chat", user_id="u-2", prompt_tokens=1)
        await session.commit()
    async with sessions() as session:
        rows = (await session.execute(select(TokenUsage))).scalars().all()
    assert kept is not None and [r.user_id for r in rows] == ["u-2"]


async def test_record_token_usage_keeps_what_the_database_holds_at_its_bounds(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions() as session:
        row = record_token_usage(
            session,
            usage_type="chat",
            user_id="u-1",
            prompt_tokens=2**63 - 1,
            calls=2**31 - 1,
            total_tokens=2**63 - 1,
            cost_usd="9223372036854.775807" + "4" * 100,
        )
        small = record_token_usage(session, usage_type="chat", user_id="u-2", cost_usd=Decimal("1e-30"))
        # 20,000 digits after the point: PostgreSQL's numeric holds 16,383, and refused the commit.
        long = record_token_usage(session, usage_type="chat", user_id="u-3", cost_usd="0." + "1" * 20_000)
        await session.commit()
    assert row is not None and small is not None and long is not None
    async with sessions() as session:
        stored = {r.user_id: r for r in (await session.execute(select(TokenUsage))).scalars().all()}
    first = stored["u-1"]
    assert (first.prompt_tokens, first.calls, first.cost_micros) == (2**63 - 1, 2**31 - 1, 2**63 - 1)
    # Kept to money's 60 significant digits, as a call's cost is.
    assert first.cost_usd == Decimal("9223372036854.775807" + "4" * 41)
    assert stored["u-2"].cost_usd == Decimal("1e-30")
    assert stored["u-3"].cost_usd == Decimal("0." + "1" * 60)


def test_record_token_usage_cost_micros_ignores_the_applications_decimal_context() -> None:
    added: list[Any] = []

    class Session:
        def add(self, row: Any) -> None:
            added.append(row)

    with localcontext() as ctx:
        ctx.prec = 4  # the application's own setting must not round a stored cost
        row = record_token_usage(Session(), usage_type="chat", user_id="u-1", cost_micros=123456789)
    assert row is not None and added == [row]
    assert (row.cost_usd, row.cost_micros) == (Decimal("123.456789"), 123456789)


def test_record_token_usage_survives_a_broken_session(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def add(self, row: Any) -> None:
            raise RuntimeError("session is closed")

    with caplog.at_level(logging.WARNING, logger="turnledger"):
        assert record_token_usage(Broken(), usage_type="chat", user_id="u-1") is None
    assert "RuntimeError" in caplog.text


async def test_record_token_usage_drops_secret_keys_from_caller_documents(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session:
        row = record_token_usage(
            session,
            usage_type="chat",
            user_id="u-1",
            model_breakdown={"gpt-4o": {"cost_usd": Decimal("0.01"), "api_key": "sk-leak", "messages": ["hi"]}},
            call_details=[{"call_id": "x", "headers": {"Authorization": "Bearer sk-leak"}, "prompt": "secret"}],
        )
        await session.commit()
    assert row is not None
    assert row.model_breakdown == {"gpt-4o": {"cost_usd": "0.01"}}
    assert row.call_details == [{"call_id": "x"}]


async def test_record_token_usage_fits_long_and_nul_strings_as_record_turn_does(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL refuses a 300-character user id in VARCHAR(255), and a NUL anywhere: the caller's whole
    # commit would fail. The row is kept, its strings stored as record_turn stores the same strings.
    long_user, nul_tenant = "ü" * 300, "acme\x00corp"
    turn = closed_turn("fit-turn", [call("c-1", "m", 1, 1, "0.1")], user_id=long_user, tenant_id=nul_tenant)
    expected = turn_rows(turn, usage_type="chat").usage
    caplog.clear()
    sessions = session_factory(engine)
    with caplog.at_level(logging.WARNING, logger="turnledger"):
        async with sessions() as session:
            row = record_token_usage(
                session,
                usage_type="chat",
                user_id=long_user,
                thread_id="t\x00" + "x" * 400,
                tenant_id=nul_tenant,
                tags=["a\x00b"],
                cost_usd="0.25",
                model_breakdown={"m\x00": {"note": "x\x00y"}},
            )
            await session.commit()
    assert row is not None
    async with sessions() as session:
        stored = (await session.execute(select(TokenUsage))).scalars().one()
    assert stored.user_id is not None and stored.user_id == expected["user_id"] and len(stored.user_id) == 255
    assert stored.tenant_id == expected["tenant_id"] == "acmecorp"
    assert stored.thread_id is not None and len(stored.thread_id) == 255 and "\x00" not in stored.thread_id
    assert stored.tags == ["ab"] and stored.model_breakdown == {"m": {"note": "xy"}}
    assert stored.cost_usd == Decimal("0.25")
    assert "shortened" in caplog.text


def test_utc_timestamps_round_trip_from_another_zone() -> None:
    # Pure check of the row builder: a turn opened in another zone is stored in UTC.
    from datetime import timedelta, timezone

    turn = closed_turn("tz", [call("c", "m", 1, 1, "0.1")])
    when = datetime(2026, 11, 3, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    rows = turn_rows(turn, usage_type="chat", created_at=when)
    assert rows.usage["created_at"] == datetime(2026, 11, 2, 23, 30, tzinfo=UTC)
    assert rows.usage["created_at"].tzinfo is UTC
    assert rows.calls[0]["created_at"] == rows.usage["created_at"]


async def test_deleting_a_turn_deletes_its_calls(engine: AsyncEngine) -> None:
    # Foreign keys are enforced on SQLite too (its default is to ignore them).
    turn = closed_turn("turn-cascade", [call("c-1", "m", 1, 1, "0.1"), call("c-2", "m", 1, 1, "0.2")])
    async with session_factory(engine)() as session:
        row_id = await record_turn(session, turn, usage_type="chat")
        await session.commit()
        await session.execute(delete(TokenUsage).where(TokenUsage.id == row_id))
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(TokenUsageCall)) == 0


async def test_a_call_without_its_turn_is_refused(engine: AsyncEngine) -> None:
    row = turn_rows(closed_turn("orphan", [call("c-1", "m", 1, 1, "0.1")]), usage_type="chat").calls[0]
    async with engine.connect() as conn:
        with pytest.raises(IntegrityError):
            await conn.execute(insert(TokenUsageCall), [{**row, "usage_id": 999_999}])


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        await engine.dispose()


def test_the_default_database_is_sqlite_turnledger_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNLEDGER_DATABASE_URL", raising=False)
    assert str(resolve_url()) == "sqlite+aiosqlite:///./turnledger.db"
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", "postgresql://u@db.example/billing")
    assert str(resolve_url()) == "postgresql+asyncpg://u@db.example/billing"
    with pytest.raises(turnledger.ConfigurationError, match="mysql"):
        resolve_url("mysql://u@h/db")


async def test_a_count_no_column_can_hold_is_a_storage_error_the_writer_sets_aside(engine: AsyncEngine) -> None:
    """A record built by hand can carry any int; SQLite's driver refuses one past 64 bits with a bare
    OverflowError before any SQL runs. Both backends must raise StorageError, classed as a data error
    (a BatchWriter sets the turn aside rather than retrying it forever)."""
    from turnledger.store.rejects import is_data_error

    turn = closed_turn("turn-huge", [call("c-1", "gpt-4o-mini", 2**64, 1, "0.001")])
    async with session_factory(engine)() as session:
        with pytest.raises(turnledger.StorageError) as raised:
            await record_turn(session, turn, usage_type="chat")
        await session.rollback()
    assert is_data_error(raised.value)

"""The pure row builder the store and the batch writer share: a closed turn -> rows, no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Numeric, Text
from sqlalchemy.ext.asyncio import create_async_engine

from turnledger import CallStatus, CostSource, RecordFlag, TokenCallRecord, TurnTokenAccumulator, turn_rows
from turnledger.store.models import ExactDecimal, TokenUsage, TokenUsageCall

WHEN = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _turn() -> TurnTokenAccumulator:
    turn = TurnTokenAccumulator(turn_id="t-1", user_id=cast(Any, 42), thread_id="th", tenant_id="acme", tags=["a", "b"])
    turn.add(
        TokenCallRecord(
            call_id="c1",
            model="gpt-4o-mini",
            prompt_tokens=1000,
            completion_tokens=425,
            total_tokens=1425,
            cached_tokens=200,
            cost_usd=Decimal("0.0004055"),
            cost_source=CostSource.RESPONSE_COST,
        )
    )
    turn.add(
        TokenCallRecord(
            call_id="c2",
            model="mystery",
            status=CallStatus.FAILURE,
            prompt_tokens=7,
            total_tokens=7,
            error_type="APIError",
            flags=(RecordFlag.USAGE_MISSING,),
        )
    )
    turn.close(timeout=0)
    return turn


def test_turn_row_holds_exact_totals_and_string_attribution() -> None:
    rows = turn_rows(_turn(), usage_type="chat", created_at=WHEN)
    usage = rows.usage
    assert rows.turn_id == usage["turn_id"] == "t-1"
    assert usage["user_id"] == "42"  # any application's ids fit: stored as strings
    assert (usage["calls"], usage["unpriced_calls"], usage["failed_calls"], usage["abandoned_calls"]) == (2, 1, 1, 0)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (1007, 425, 1432)
    assert usage["cost_usd"] == Decimal("0.0004055")
    assert usage["cost_micros"] == 406  # rounded half-even, once
    assert usage["tags"] == ["a", "b"]
    assert usage["created_at"] == WHEN
    # The JSON documents hold money as strings and survive json.dumps unchanged.
    assert json.loads(json.dumps(usage["model_breakdown"]))["gpt-4o-mini"]["cost_usd"] == "0.0004055"
    assert usage["model_breakdown"]["mystery"]["cost_usd"] is None
    assert [d["call_id"] for d in usage["call_details"]] == ["c1", "c2"]
    assert set(usage) == {c.name for c in TokenUsage.__table__.columns} - {"id"}


def test_call_rows_carry_the_turns_attribution_and_every_column() -> None:
    rows = turn_rows(_turn(), usage_type="chat", created_at=WHEN)
    first, second = rows.calls
    assert (first["seq"], second["seq"]) == (0, 1)
    assert first["cost_usd"] == Decimal("0.0004055") and first["cost_micros"] == 406
    assert second["cost_usd"] is None and second["cost_micros"] is None
    assert second["status"] == "failure" and second["flags"] == ["usage_missing"]
    assert {(r["user_id"], r["tenant_id"], r["usage_type"], r["created_at"]) for r in rows.calls} == {
        ("42", "acme", "chat", WHEN)
    }
    assert set(first) == {c.name for c in TokenUsageCall.__table__.columns} - {"usage_id"}


def test_an_all_unpriced_turn_has_no_cost_and_an_empty_turn_costs_zero() -> None:
    unpriced = TurnTokenAccumulator(turn_id="u")
    unpriced.add(TokenCallRecord(call_id="x", model="mystery"))
    unpriced.close(timeout=0)
    assert turn_rows(unpriced, usage_type="chat").usage["cost_usd"] is None

    empty = TurnTokenAccumulator(turn_id="e")
    empty.close(timeout=0)
    usage = turn_rows(empty, usage_type="chat").usage
    assert (usage["cost_usd"], usage["cost_micros"], usage["calls"]) == (Decimal(0), 0, 0)


def test_open_turns_and_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="still open"):
        turn_rows(TurnTokenAccumulator(turn_id="open"), usage_type="chat")
    with pytest.raises(ValueError, match="timezone-aware"):
        turn_rows(_turn(), usage_type="chat", created_at=datetime(2026, 11, 2))


def test_exact_decimal_is_text_on_sqlite_and_numeric_on_postgresql() -> None:
    money = ExactDecimal()
    lite = create_async_engine("sqlite+aiosqlite://").dialect
    pg = create_async_engine("postgresql+asyncpg://u@localhost/db").dialect  # no connection is made
    assert money.process_bind_param(Decimal("0.000000123456789012345"), lite) == "0.000000123456789012345"
    assert money.process_bind_param(Decimal("0.1"), pg) == Decimal("0.1")
    assert money.process_bind_param(Decimal("1.5E-7"), lite) == "0.00000015"
    assert money.process_result_value("0.0004055", lite) == Decimal("0.0004055")
    assert isinstance(money.load_dialect_impl(lite), Text)
    assert isinstance(money.load_dialect_impl(pg), Numeric)
    with pytest.raises(ValueError, match="finite Decimal"):
        money.process_bind_param(Decimal("NaN"), pg)


def test_call_rows_micros_add_up_to_the_turns() -> None:
    turn = TurnTokenAccumulator(turn_id="micros")
    for i in range(3):
        turn.add(TokenCallRecord(call_id=f"c{i}", model="m", cost_usd=Decimal("0.0000005")))
    turn.close(timeout=0)
    rows = turn_rows(turn, usage_type="chat")
    assert rows.usage["cost_micros"] == 2
    assert sum(c["cost_micros"] for c in rows.calls) == 2
    assert sum(d["cost_micros"] for d in rows.usage["call_details"]) == 2


def test_caller_documents_lose_every_key_that_could_hold_a_secret_or_text() -> None:
    from turnledger.store.record import _scrub

    document = {
        "x-api-key": "sk-1",
        "openai_api_key": "sk-2",
        "bearer_token": "t",
        "user_prompt": "hi",
        "messages_preview": "hi",
        "Authorization": "Bearer x",
        "nested": [{"system_message": "s", "prompt_tokens": 3}],
        "prompt_tokens": 10,
        "cost_usd": "0.1",
        "model": "gpt-4o-mini",
    }
    assert _scrub(document) == {
        "nested": [{"prompt_tokens": 3}],
        "prompt_tokens": 10,
        "cost_usd": "0.1",
        "model": "gpt-4o-mini",
    }

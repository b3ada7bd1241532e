"""Another turn under a stored ``turn_id`` on the paths that write one turn at a time: never a silent success.

A caller naming turns by a request id, and a client that retried the request: both turns' calls were
billed. The same turn recorded twice stays a quiet no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, stored_call_count, stored_turn_ids
from turnledger import (
    CreditError,
    CreditLedger,
    StorageError,
    TurnIdReused,
    TurnKeyReused,
    TurnTokenAccumulator,
    credit_scope,
    record_token_usage,
    record_turn,
    session_factory,
)
from turnledger.records import CostSource, TokenCallRecord
from turnledger.store.models import TokenUsage


async def test_record_turn_refuses_another_turn_under_a_stored_turn_id(engine: AsyncEngine) -> None:
    first, retried = closed_turn("req-42", calls=1), closed_turn("req-42", calls=2)
    async with session_factory(engine)() as session:
        assert await record_turn(session, first, usage_type="chat") is not None
        await session.commit()
    async with session_factory(engine)() as session:
        # The same turn again: stored once, quietly.
        assert await record_turn(session, first, usage_type="chat") is None
        with pytest.raises(TurnIdReused, match="req-42") as refused:
            await record_turn(session, retried, usage_type="chat")
        assert isinstance(refused.value, StorageError)
        # The caller's transaction is still usable: nothing failed in the database.
        await session.commit()
    assert await stored_turn_ids(engine) == {"req-42": 1}
    assert await stored_call_count(engine) == 1


async def test_record_turn_of_the_same_turn_at_the_same_created_at_is_the_same_turn(engine: AsyncEngine) -> None:
    turn = closed_turn("req-9", calls=2)
    when = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat", created_at=when) is not None
        assert await record_turn(session, turn, usage_type="chat", created_at=when) is None
        await session.commit()
    assert await stored_turn_ids(engine) == {"req-9": 1}


def _unpriced_turn(turn_id: str, call_id: str, prompt_tokens: int) -> TurnTokenAccumulator:
    turn = TurnTokenAccumulator(turn_id=turn_id, user_id="u-1")
    turn.add(
        TokenCallRecord(
            call_id=call_id,
            model="in-house-model",
            provider="openai",
            prompt_tokens=prompt_tokens,
            completion_tokens=10,
            total_tokens=prompt_tokens + 10,
            cost_source=CostSource.NONE,
        )
    )
    turn._finalize()
    return turn


@pytest.mark.parametrize("retried_tokens", [5000, 100], ids=["other-tokens", "same-tokens"])
async def test_record_turn_refuses_another_turn_with_the_same_created_at_calls_and_cost(
    engine: AsyncEngine, retried_tokens: int
) -> None:
    # A caller passing a message's time as created_at, and a retried request of one call to an unpriced
    # model: one call, no cost, one created_at for both turns. Before, the retried turn (5,010 tokens,
    # or as many as the first: another call all the same) was taken for the first one written again:
    # record_turn returned None and its tokens were in no report.
    when = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    first, retried = _unpriced_turn("msg-1", "call-a", 100), _unpriced_turn("msg-1", "call-b", retried_tokens)
    async with session_factory(engine)() as session:
        assert await record_turn(session, first, usage_type="chat", created_at=when) is not None
        await session.commit()
    async with session_factory(engine)() as session:
        assert await record_turn(session, first, usage_type="chat", created_at=when) is None
        with pytest.raises(TurnIdReused, match="msg-1"):
            await record_turn(session, retried, usage_type="chat", created_at=when)
        await session.commit()
    async with engine.connect() as conn:
        assert (await conn.execute(select(TokenUsage.prompt_tokens))).scalars().all() == [100]


async def test_record_token_usage_under_a_stored_turn_id_fails_the_callers_commit(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session:
        assert record_token_usage(session, usage_type="chat", user_id="u-1", turn_id="req-42", cost_usd="1.00")
        await session.commit()
    async with session_factory(engine)() as session:
        assert record_token_usage(session, usage_type="chat", user_id="u-1", turn_id="req-42", cost_usd="2.00")
        with pytest.raises(IntegrityError):
            await session.commit()
    async with engine.connect() as conn:
        assert (await conn.execute(select(TokenUsage.cost_usd))).scalars().all() == [Decimal("1.00")]


def _priced_call(turn_id: str, cost: str) -> TokenCallRecord:
    return TokenCallRecord(
        call_id=f"{turn_id}-{cost}",
        model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        cost_usd=Decimal(cost),
        cost_source=CostSource.RESPONSE_COST,
        started_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        latency_ms=4.5,
    )


async def test_credit_scope_under_a_reused_turn_id_is_refused_before_its_block_and_debits_once(
    engine: AsyncEngine,
) -> None:
    # The reservation key defaults to turn:<turn_id>: a second turn under the id is refused on entry,
    # before it can make calls that no settle could charge; the first is charged once.
    ledger = CreditLedger(engine)
    await ledger.grant("u-1", Decimal("5"), "initial")
    async with credit_scope(ledger, account="u-1", estimate=Decimal("1"), turn_id="req-42") as turn:
        turn.add(_priced_call("req-42", "1.00"))
    ran = False
    with pytest.raises(TurnKeyReused):
        async with credit_scope(ledger, account="u-1", estimate=Decimal("1"), turn_id="req-42"):
            ran = True
    # Another estimate under the same key: the ledger's idempotency check refuses it, as loudly.
    with pytest.raises(CreditError, match="already used"):
        async with credit_scope(ledger, account="u-1", estimate=Decimal("2"), turn_id="req-42"):
            ran = True
    assert not ran
    balance = await ledger.balance("u-1")
    assert (balance.balance, balance.held) == (Decimal("4.00"), Decimal(0))
    assert (await ledger.verify()).ok

"""Turns with known figures for the store tests, built through the turn's own API (add, begin_call, close)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

from turnledger import (
    CallKind,
    CallStatus,
    CostSource,
    ModelMetadata,
    PendingCall,
    RecordFlag,
    TokenCallRecord,
    TurnTokenAccumulator,
    make_engine,
    record_turn,
    session_factory,
)

DAY1 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
DAY2 = datetime(2026, 11, 3, 23, 59, 59, 999999, tzinfo=UTC)
DAY3 = datetime(2026, 11, 4, 0, 0, tzinfo=UTC)


def call(
    call_id: str,
    model: str,
    prompt: int,
    completion: int,
    cost: str | None,
    *,
    status: CallStatus = CallStatus.SUCCESS,
    cached: int = 0,
    cache_creation: int = 0,
    reasoning: int = 0,
) -> TokenCallRecord:
    return TokenCallRecord(
        call_id=call_id,
        model=model,
        provider="openai",
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cached,
        cache_creation_tokens=cache_creation,
        reasoning_tokens=reasoning,
        cost_usd=None if cost is None else Decimal(cost),
        cost_source=CostSource.NONE if cost is None else CostSource.RESPONSE_COST,
        started_at=DAY1,
        latency_ms=12.5,
        error_type="InternalServerError" if status is CallStatus.FAILURE else None,
    )


def abandoned_record(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord:
    """An abandoned call as the store sees it: unpriced, no tokens (estimates are the cost engine's concern)."""
    return TokenCallRecord(
        call_id=pending.call_id,
        model=pending.model,
        provider=pending.provider,
        status=CallStatus.ABANDONED,
        stream=pending.stream,
        started_at=pending.started_at,
        flags=(RecordFlag.NO_CALLBACK,),
    )


def closed_turn(
    turn_id: str,
    records: Sequence[TokenCallRecord],
    *,
    user_id: str | None = "u-1",
    thread_id: str | None = "t-1",
    tenant_id: str | None = "acme",
    abandoned: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> TurnTokenAccumulator:
    """A closed turn holding ``records``, plus one abandoned call per model named in ``abandoned``."""
    turn = TurnTokenAccumulator(
        turn_id=turn_id,
        user_id=user_id,
        thread_id=thread_id,
        tenant_id=tenant_id,
        tags=tags,
        message_id="m-1",
        abandoned_record_factory=abandoned_record,
    )
    for record in records:
        turn.add(record)
    for i, model in enumerate(abandoned):
        turn.begin_call(
            PendingCall(
                call_id=f"{turn_id}-abandoned-{i}",
                model=model,
                provider="openai",
                call_kind=CallKind.CHAT,
                stream=True,
                started_at=DAY1,
                started_monotonic=0.0,
            )
        )
    turn.close(timeout=0)
    return turn


def report_turns() -> list[tuple[TurnTokenAccumulator, datetime]]:
    """Five turns over three days, four users, two tenants, three models (one never priced).

    Per model: gpt-4o-mini 5 calls (one failed, free), $0.000405 + $0.000036 + $0.0000045 + $0.00012 =
    $0.0005655; gpt-4o 2 calls: $0.0125 and 1 unpriced; local-llm 2 calls, all unpriced (one abandoned).
    Per user: dave's only turn is all unpriced.
    """
    return [
        (
            closed_turn(
                "r-1",
                [
                    call("a1", "gpt-4o-mini", 1000, 425, "0.000405", cached=200, reasoning=50),
                    call("a2", "gpt-4o", 2000, 750, "0.0125"),
                ],
                user_id="alice",
                thread_id="t-a",
                tenant_id="acme",
            ),
            DAY1,
        ),
        (
            closed_turn(
                "r-2",
                [call("b1", "gpt-4o-mini", 120, 30, "0.000036"), call("b2", "local-llm", 50, 10, None)],
                user_id="alice",
                thread_id="t-a",
                tenant_id="acme",
            ),
            DAY2,
        ),
        (
            closed_turn(
                "r-3",
                [call("c1", "gpt-4o", 10, 5, None, cache_creation=7)],
                user_id="dave",
                thread_id="t-d",
                tenant_id="globex",
            ),
            DAY2,
        ),
        (
            closed_turn(
                "r-4",
                [call("d1", "gpt-4o-mini", 10, 5, "0.0000045")],
                user_id="bob",
                thread_id="t-b",
                tenant_id="globex",
                abandoned=["local-llm"],
            ),
            DAY3,
        ),
        (
            closed_turn(
                "r-5",
                [
                    call("e1", "gpt-4o-mini", 400, 100, "0.00012"),
                    call("e2", "gpt-4o-mini", 0, 0, "0", status=CallStatus.FAILURE),
                ],
                user_id="carol",
                thread_id=None,
                tenant_id=None,
            ),
            DAY3,
        ),
    ]


async def record_report_turns(url: str) -> None:
    """Record :func:`report_turns` into the database at ``url`` (migrated), each on its own day."""
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            for turn, when in report_turns():
                await record_turn(session, turn, usage_type="chat", created_at=when)
            await session.commit()
    finally:
        await engine.dispose()

"""credit_scope: a turn reserves on entry and settles its exact cost on exit, through real LiteLLM HTTP."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import litellm
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger import CreditLedger, InsufficientCredits, TurnKeyReused, UnpricedCallsError, credit_scope, credits
from turnledger.credits import EntryKind
from turnledger.errors import StorageError
from turnledger.fake_provider import FakeProvider
from turnledger.records import CallStatus, CostSource

MESSAGES: Any = [{"role": "user", "content": "say hello"}]
# gpt-4o-mini in LiteLLM's bundled map: $0.15 / 1M input, $0.60 / 1M output.
GPT4O_MINI_IN = Decimal("0.00000015")
GPT4O_MINI_OUT = Decimal("0.0000006")
ESTIMATE = Decimal("0.01")

pytestmark = pytest.mark.usefixtures("tracker")


@pytest.fixture
async def ledger(engine: AsyncEngine) -> CreditLedger:
    ledger = CreditLedger(engine)
    await ledger.grant("u-1", Decimal("1"), "initial")
    return ledger


async def _request_with_a_call_in_flight(scope: credit_scope, provider_kwargs: dict[str, Any]) -> asyncio.Task[None]:
    """A request's task that opened ``scope`` and is waiting for a call the provider holds up: returned
    once the turn knows of the call."""
    started = asyncio.Event()

    async def handler() -> None:
        async with scope as turn:
            call = asyncio.create_task(
                litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=0, **provider_kwargs)
            )
            while turn.pending_calls == 0:
                await asyncio.sleep(0.01)
            started.set()
            await call

    task = asyncio.create_task(handler())
    await started.wait()
    return task


async def test_a_turn_is_charged_its_exact_cost_once(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150})
    fake_provider.script("gpt-4o", usage={"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010})
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE, key="req-1", user_id="u-1")
    async with scope as turn:
        assert (await ledger.balance("u-1")).held == ESTIMATE
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)

    assert scope.charge is not None
    # 2 x (120 x 0.15/1M + 30 x 0.60/1M)
    assert scope.charge.charged == turn.total_cost_usd == Decimal("0.000072")
    assert (scope.charge.unpriced_calls, scope.charge.abandoned_calls) == (0, 0)
    assert scope.charge.entry.turn_id == turn.turn_id
    balance = await ledger.balance("u-1")
    assert (balance.balance, balance.held) == (Decimal("0.999928"), Decimal(0))

    # The same request retried: refused before its block runs, so it spends nothing it cannot charge.
    requests_before = len(fake_provider.requests)
    retry = credit_scope(ledger, account="u-1", estimate=ESTIMATE, key="req-1")
    with pytest.raises(TurnKeyReused) as refused:
        async with retry:
            await litellm.acompletion(model="openai/gpt-4o", messages=MESSAGES, **provider_kwargs)
    assert refused.value.reservation.turn_id == turn.turn_id
    assert len(fake_provider.requests) == requests_before
    assert (await ledger.balance("u-1")).balance == Decimal("0.999928")
    assert (await ledger.verify()).ok


async def test_a_broken_off_stream_is_settled_at_its_estimated_cost(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", content=" ".join(["word"] * 50), chunk_delay_s=0.02)
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE, settle_timeout=0.3)
    async with scope as turn:
        stream = await litellm.acompletion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        )
        async for _chunk in stream:
            break  # the caller walks away; LiteLLM never logs this call, the provider still bills it

    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    # What is true today: the cost engine estimates the prompt (the completion was never seen),
    # so the abandoned call is priced, as a lower bound, and that is what is charged.
    assert record.cost_source is CostSource.ESTIMATED
    assert record.prompt_tokens > 0 and record.completion_tokens == 0
    assert record.cost_usd == record.prompt_tokens * GPT4O_MINI_IN
    assert scope.charge is not None
    assert (scope.charge.charged, scope.charge.abandoned_calls, scope.charge.unpriced_calls) == (
        record.cost_usd,
        1,
        0,
    )
    assert (await ledger.balance("u-1")).balance == Decimal(1) - record.cost_usd


async def test_a_cancelled_turn_still_settles_the_call_it_started(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", delay_s=5)
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE, settle_timeout=0.2)
    task = await _request_with_a_call_in_flight(scope, provider_kwargs)
    task.cancel()  # the client disconnected; the server cancels the request's task
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scope.charge is not None
    [record] = scope.turn.calls
    assert record.status is CallStatus.ABANDONED and record.cost_usd is not None
    assert scope.charge.charged == record.cost_usd == record.prompt_tokens * GPT4O_MINI_IN
    assert (await ledger.balance("u-1")).balance == Decimal(1) - record.cost_usd


async def test_calls_made_before_the_body_raised_are_still_paid_for(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150})
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE)
    with pytest.raises(RuntimeError, match="tool failed"):
        async with scope:
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
            raise RuntimeError("tool failed")
    assert scope.charge is not None and scope.charge.charged == Decimal("0.000036")
    balance = await ledger.balance("u-1")
    assert (balance.balance, balance.held) == (Decimal("0.999964"), Decimal(0))


async def test_a_turn_the_account_cannot_cover_never_starts(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    ran = False
    with pytest.raises(InsufficientCredits):
        async with credit_scope(ledger, account="u-1", estimate=Decimal("1.01")):
            ran = True
    assert not ran
    assert [e.kind for e in await ledger.history("u-1")] == [EntryKind.GRANT]


@pytest.mark.parametrize(
    ("policy", "charged"),
    [("free", Decimal("0.000036")), ("estimate", ESTIMATE), ("error", Decimal("0.000036"))],
)
async def test_unpriced_calls_follow_the_policy_and_are_reported(
    ledger: CreditLedger,
    fake_provider: FakeProvider,
    provider_kwargs: dict[str, Any],
    policy: Any,
    charged: Decimal,
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150})
    fake_provider.script("acme-llm-7b", usage={"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20})
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE, unpriced=policy)

    async def body() -> None:
        async with scope:
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
            await litellm.acompletion(model="openai/acme-llm-7b", messages=MESSAGES, **provider_kwargs)

    if policy == "error":
        with pytest.raises(UnpricedCallsError, match="1 unpriced call") as info:
            await body()
        assert info.value.charge is scope.charge
    else:
        await body()
    assert scope.charge is not None
    assert (scope.charge.charged, scope.charge.priced_cost, scope.charge.unpriced_calls) == (
        charged,
        Decimal("0.000036"),
        1,
    )
    # The journal says why the charge is not the priced calls' sum.
    assert scope.charge.entry.note == f"1 unpriced call(s), settled under unpriced={policy!r}"
    assert (await ledger.history("u-1"))[-1].note == scope.charge.entry.note
    balance = await ledger.balance("u-1")
    assert (balance.balance, balance.held) == (Decimal(1) - charged, Decimal(0))


async def test_a_turn_cancelled_again_and_again_while_it_closes_is_still_settled(
    ledger: CreditLedger, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # anyio (so Starlette and FastAPI) cancels a request's task at every await once its scope is
    # cancelled, the wait for the call in flight and the settle included, not just once.
    fake_provider.script("gpt-4o-mini", delay_s=5)
    scope = credit_scope(ledger, account="u-1", estimate=ESTIMATE, settle_timeout=30)
    task = await _request_with_a_call_in_flight(scope, provider_kwargs)
    loop = asyncio.get_running_loop()
    cancels = 0

    def cancel_until_done() -> None:
        nonlocal cancels
        if not task.done():
            task.cancel()
            cancels += 1
            loop.call_soon(cancel_until_done)

    cancel_until_done()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancels > 2  # the body, the wait for the call in flight, the settle
    assert scope.charge is not None
    [record] = scope.turn.calls
    assert record.status is CallStatus.ABANDONED and record.cost_usd is not None
    assert scope.charge.charged == record.cost_usd == record.prompt_tokens * GPT4O_MINI_IN
    balance = await ledger.balance("u-1")
    assert (balance.balance, balance.held) == (Decimal(1) - record.cost_usd, Decimal(0))


class _StalledLedger(CreditLedger):
    """A ledger whose settle does not answer until released (a database that hangs: a lock held by a
    stuck session, a connection whose peer is gone)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.answer = asyncio.Event()
        self.fail = False

    async def settle(self, *args: Any, **kwargs: Any) -> Any:
        await self.answer.wait()
        if self.fail:
            raise StorageError("the database went away")
        return await super().settle(*args, **kwargs)


async def _cancelled_while_settling(ledger: _StalledLedger, caplog: pytest.LogCaptureFixture) -> asyncio.Task[None]:
    entered = asyncio.Event()

    async def handler() -> None:
        async with credit_scope(ledger, account="u-1", estimate=ESTIMATE, key="stalled"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(handler())
    await entered.wait()
    task.cancel()  # the client went away: the body is cancelled, the scope settles
    while not any("could not settle" in r.getMessage() for r in caplog.records) and not task.done():
        if ledger.fail:
            ledger.answer.set()
        await asyncio.sleep(0.01)
        task.cancel()  # and again, at every await (anyio)
    return task


async def test_a_cancelled_turn_whose_settle_never_answers_still_ends(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once cancelled, a scope waits a bounded grace for its settle: without one, a request whose
    # database hangs could never be cancelled at all (a server could not even shut down).
    monkeypatch.setattr(credits, "CANCELLED_SETTLE_GRACE", timedelta(0), raising=False)
    ledger = _StalledLedger(engine)
    await ledger.grant("u-1", Decimal("1"), "initial")
    try:
        task = await asyncio.wait_for(_cancelled_while_settling(ledger, caplog), 5)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    finally:
        ledger.answer.set()  # let a hung settle go, so a failing run does not hang the loop's teardown
    [logged] = [r for r in caplog.records if "could not settle" in r.getMessage()]
    assert "'u-1' owes 0" in logged.getMessage()  # what is owed and where, to settle it by hand
    balance = await ledger.balance("u-1")
    assert balance.held == ESTIMATE  # nothing settled behind the log's back: the hold stays until it lapses


async def test_a_settle_that_fails_after_a_cancellation_still_raises_the_cancellation(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # The failure is logged with what is owed; the cancellation the caller asked for is not
    # turned into an ordinary error that an error handler would catch and carry on from.
    ledger = _StalledLedger(engine)
    ledger.fail = True
    await ledger.grant("u-1", Decimal("1"), "initial")
    task = await asyncio.wait_for(_cancelled_while_settling(ledger, caplog), 5)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    [logged] = [r for r in caplog.records if "could not settle" in r.getMessage()]
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], StorageError)

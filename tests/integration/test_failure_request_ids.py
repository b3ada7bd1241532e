"""A failure row's ``provider_request_id``: the request-id header of the error answer that failed it.

Real HTTP to the fake provider, which answers every request with an ``x-request-id`` of its own and
keeps it (:class:`~turnledger.fake_provider.Answer`): the ground truth each stored row is checked
against, on PostgreSQL and SQLite. A failure's id is that of the last request of its attempt (the
openai SDK retries a refused request itself, twice by default: its exception is the last one's), and
``None`` when the attempt got no answer; never an earlier attempt's of a call LiteLLM retried itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import litellm
import pytest
from litellm.exceptions import InternalServerError, MidStreamFallbackError, RateLimitError, Timeout
from litellm.router import Router
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from tests.integration.writer_support import stored_turn
from turnledger import CallStatus, RecordFlag, TurnTokenAccumulator, record_turn, session_factory
from turnledger.fake_provider import FakeProvider, Script

pytestmark = pytest.mark.usefixtures("tracker")


def _messages(key: str) -> Any:
    return [{"role": "user", "content": f"say hello [[plan:{key}]]"}]


async def _store(engine: AsyncEngine, turn: TurnTokenAccumulator) -> list[str | None]:
    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat") is not None
        await session.commit()
    _usage, calls = await stored_turn(engine, turn.turn_id)
    assert [c["status"] for c in calls] == ["failure"] * len(calls)
    return [c["provider_request_id"] for c in calls]


async def test_a_stored_failure_carries_the_request_id_of_its_error_answer(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine
) -> None:
    # Before: None in every row, although LiteLLM had each id (the exception's headers).
    async def chat(model: str, key: str, **call: Any) -> Any:
        return await litellm.acompletion(model=model, messages=_messages(key), **call, **provider_kwargs)

    async def stream(model: str, key: str) -> None:
        async for _chunk in await chat(model, key, stream=True):
            pass

    async def embedding(key: str) -> Any:
        return await litellm.aembedding(
            model="openai/text-embedding-3-small", input=[f"hello [[plan:{key}]]"], **provider_kwargs
        )

    calls: dict[str, tuple[Script, Callable[[str], Awaitable[Any]]]] = {
        # Through the openai SDK (three requests: it retries a 500 and a 429 itself) ...
        "openai-500": (Script(status=500), lambda key: chat("openai/gpt-4o-mini", key)),
        "openai-429": (Script(status=429), lambda key: chat("openai/gpt-4o-mini", key)),
        # ... and through LiteLLM's own HTTP handler (one request).
        "deepseek-500": (Script(status=500), lambda key: chat("deepseek/deepseek-chat", key)),
        "deepseek-429": (Script(status=429), lambda key: chat("deepseek/deepseek-chat", key)),
        "openai-stream-500": (Script(status=500), lambda key: stream("openai/gpt-4o-mini", key)),
        "deepseek-stream-500": (Script(status=500), lambda key: stream("deepseek/deepseek-chat", key)),
        "embedding-500": (Script(status=500), embedding),
    }
    async with turnledger.scoped_turn(turn_id="refused", settle_timeout=0.2, logging_timeout=1) as turn:
        for key, (script, call) in calls.items():
            fake_provider.plan(key, [script])
            with pytest.raises((InternalServerError, RateLimitError)):
                await call(key)
    sent = [fake_provider.answers_for(key)[-1] for key in calls]
    assert [a.status for a in sent] == [500, 429, 500, 429, 500, 500, 500]
    assert await _store(engine, turn) == [a.request_id for a in sent]


async def test_a_failure_that_got_no_answer_has_no_request_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # A timeout, and a stream broken off mid-answer (its exception is the lost connection's): the
    # error carries no header, and no other request's id is taken for it.
    fake_provider.plan("slow", [Script(delay_s=0.6)])
    fake_provider.plan("broken", [Script(break_after_chunks=2)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(Timeout):
            await litellm.acompletion(
                model="deepseek/deepseek-chat", messages=_messages("slow"), timeout=0.2, **provider_kwargs
            )
        with pytest.raises(MidStreamFallbackError):
            async for _chunk in await litellm.acompletion(
                model="deepseek/deepseek-chat", messages=_messages("broken"), stream=True, **provider_kwargs
            ):
                pass
    assert [(r.status, r.provider_request_id) for r in turn.calls] == [(CallStatus.FAILURE, None)] * 2


def _read_broken_stream(key: str, provider_kwargs: dict[str, Any], *, sync: bool) -> TurnTokenAccumulator:
    messages = _messages(key)
    if sync:
        with (
            turnledger.scoped_turn(turn_id=key, settle_timeout=0.2, logging_timeout=1) as turn,
            pytest.raises(MidStreamFallbackError),
        ):
            for _chunk in litellm.completion(
                model="openai/gpt-4o-mini", messages=messages, stream=True, **provider_kwargs
            ):
                pass
        return turn

    async def read() -> TurnTokenAccumulator:
        async with turnledger.scoped_turn(turn_id=key, settle_timeout=0.2, logging_timeout=1) as turn:
            with pytest.raises(MidStreamFallbackError):
                async for _chunk in await litellm.acompletion(
                    model="openai/gpt-4o-mini", messages=messages, stream=True, **provider_kwargs
                ):
                    pass
        return turn

    return asyncio.run(read())


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("chunks", [0, 2])
async def test_a_stream_broken_off_stores_the_request_id_its_answer_began_with(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine, chunks: int, sync: bool
) -> None:
    # The lost connection's exception carries no header, but the stream's success status did, and
    # LiteLLM keeps its headers in the call details (the openai SDK path). Before: None.
    key = f"broken-{chunks}-{'sync' if sync else 'async'}"
    fake_provider.plan(key, [Script(break_after_chunks=chunks)])
    turn = await asyncio.to_thread(_read_broken_stream, key, provider_kwargs, sync=sync)
    (answer,) = fake_provider.answers_for(key)
    assert answer.broken_off
    assert await _store(engine, turn) == [answer.request_id]


def test_a_failure_after_an_answered_attempt_never_takes_that_attempts_request_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The first attempt was answered (200, its headers kept in the shared call details) and LiteLLM
    # failed to read the answer; the logged second one timed out with no answer: unknown, never the
    # first attempt's id, which the details still hold.
    fake_provider.plan("answered-then-slow", [Script(extra_response={"choices": 7}), Script(delay_s=0.6)])
    with (
        turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn,
        pytest.raises(Timeout),
    ):
        litellm.completion(
            model="openai/gpt-4o-mini",
            messages=_messages("answered-then-slow"),
            num_retries=1,
            timeout=0.2,
            **provider_kwargs,
        )
    answered = fake_provider.answers_for("answered-then-slow")[0]
    unlogged, logged = turn.calls
    assert (logged.status, logged.error_type, logged.provider_request_id) == (CallStatus.FAILURE, "Timeout", None)
    # The first attempt, never logged, keeps its own: the details held it when the second one started.
    # Before: None.
    assert (unlogged.status, unlogged.provider_request_id) == (CallStatus.ABANDONED, answered.request_id)
    assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in unlogged.flags and answered.status == 200


def _sync_retried_turn(model: str, provider_kwargs: dict[str, Any], **call: Any) -> TurnTokenAccumulator:
    with (
        turnledger.scoped_turn(turn_id="retried", settle_timeout=0.2, logging_timeout=1) as turn,
        pytest.raises((InternalServerError, Timeout)),
    ):
        litellm.completion(model=model, messages=_messages("retried"), num_retries=1, **call, **provider_kwargs)
    return turn


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "deepseek/deepseek-chat"])
async def test_a_call_litellm_retried_stores_the_request_id_of_the_attempt_it_logged(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine, model: str
) -> None:
    # Sync ``completion`` (1.106.12) logs the second (last) attempt's failure, not the first's: its id
    # is the second attempt's last request's.
    fake_provider.plan("retried", [Script(status=500)])
    turn = await asyncio.to_thread(_sync_retried_turn, model, provider_kwargs)
    first, *_, last = fake_provider.answers_for("retried")
    unlogged, logged = turn.calls
    assert (unlogged.status, logged.status) == (CallStatus.ABANDONED, CallStatus.FAILURE)
    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat") is not None
        await session.commit()
    _usage, rows = await stored_turn(engine, "retried")
    assert [r["provider_request_id"] for r in rows] == [None, last.request_id]
    assert first.request_id != last.request_id


def test_an_attempt_that_timed_out_after_a_refused_one_has_no_request_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The first attempt was refused with an id; the logged second one timed out with none: it is
    # unknown, never the refused attempt's id, though the two attempts share LiteLLM's call details.
    fake_provider.plan("retried", [Script(status=500), Script(delay_s=0.6)])
    turn = _sync_retried_turn("deepseek/deepseek-chat", provider_kwargs, timeout=0.2)
    (refused,) = [a for a in fake_provider.answers_for("retried") if a.status == 500]
    unlogged, logged = turn.calls
    assert (logged.status, logged.error_type) == (CallStatus.FAILURE, "Timeout")
    assert (unlogged.provider_request_id, logged.provider_request_id) == (None, None)
    assert refused.request_id.startswith("req_fake_")


async def test_each_failed_attempt_of_a_router_call_stores_its_own_request_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine
) -> None:
    # A Router retries the deployment (an attempt with a call id of its own), then falls back to the
    # other: four refused attempts, four rows, each with the id its answer carried.
    primary = {"model": "openai/gpt-4o-mini", "max_retries": 0, **provider_kwargs}
    router = Router(
        model_list=[
            {"model_name": "primary", "litellm_params": primary},
            {"model_name": "backup", "litellm_params": {"model": "deepseek/deepseek-chat", **provider_kwargs}},
        ],
        num_retries=1,
        retry_after=0,
        fallbacks=[{"primary": ["backup"]}],
    )
    fake_provider.plan("routed", [Script(status=500)])
    async with turnledger.scoped_turn(turn_id="routed", settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(InternalServerError):
            await router.acompletion(model="primary", messages=_messages("routed"))
    answers = fake_provider.answers_for("routed")
    assert [a.model for a in answers] == ["gpt-4o-mini"] * 2 + ["deepseek-chat"] * 2
    assert len({r.call_id for r in turn.calls}) == 4
    assert await _store(engine, turn) == [a.request_id for a in answers]

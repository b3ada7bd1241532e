"""A closing scope's in-place readings give what the functions they stand in for give.

A scope's exit reads whether its pending calls have their response (response_arrived reads the usual
answer without provider_refused), asks a call that has its response no more whether it is finished,
makes its future without the loop's create_future when the loop is asyncio's own, and a turn leaves
the fields most turns never change to class-level defaults. Each is checked against the long way.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Mapping
from typing import Any

import litellm
import pytest

import turnledger
from tests.unit.pending_calls import pending_call
from turnledger import TokenCallRecord, TurnTokenAccumulator
from turnledger import accumulator as acc
from turnledger.accumulator import PendingCall
from turnledger.call_details import provider_refused, response_arrived
from turnledger.callback import TokenTrackingCallback, _StartedCall


def _arrived_the_long_way(details: Mapping[str, Any] | None, stream: bool) -> bool:
    """response_arrived as it read before its in-place reading of the usual answer."""
    if details is None:
        return False
    if stream:
        return "async_complete_streaming_response" in details or "complete_streaming_response" in details
    answer = details.get("original_response")
    if answer is None or (type(answer) is not str and inspect.isawaitable(answer)):
        return False
    return not provider_refused(details)


class _Text(str):
    pass


_ANSWERS: list[object] = [
    "{...}",
    '{"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 1}}',
    '   {"id": "x", "choices": []}',
    '{"error": {"message": "overloaded", "code": 529}}',
    '  \n{"error": "bad request"}',
    '{"error": {}}',
    '{"error": ""}',
    '{"error": "x", "choices": []}',
    '{"error": x}',
    "{" + " " * 300 + '"error": "late key"}',
    '{"id": "' + "x" * 80 + '", "error": "within the first 200 characters"}',
    '{"error": "' + "a" * 70_000 + '"}',
    "Error code: 500 - {'error': {'message': 'boom'}}",
    "Error code: 429",
    "Error code: 200 - fine",
    "hello",
    "",
    "   ",
    "first stream response received",
    _Text('{"error": "a str subclass"}'),
    _Text("a str subclass answer"),
    {"error": "a dict"},
    litellm.ModelResponse(),
    b'{"error": "bytes"}',
    0,
]


@pytest.mark.parametrize("answer", _ANSWERS, ids=lambda a: repr(a)[:40])
@pytest.mark.parametrize("stream", [False, True])
def test_response_arrived_reads_an_answer_as_provider_refused_does(answer: object, stream: bool) -> None:
    details = {"original_response": answer}
    assert response_arrived(details, stream) == _arrived_the_long_way(details, stream)


def test_response_arrived_of_an_awaitable_none_or_no_details_is_the_long_way() -> None:
    async def request() -> None:
        return None

    pending_request = request()
    try:
        for details in ({"original_response": pending_request}, {"original_response": None}, {}, None):
            assert response_arrived(details, False) is _arrived_the_long_way(details, False) is False
    finally:
        pending_request.close()


def _started_calls() -> list[_StartedCall]:
    callback = TokenTrackingCallback(name="exit-equivalence")
    calls = []
    answers = [None, "{...}", '{"error": "refused"}', "Error code: 500", "earlier attempt's"]
    for never_logged, at_start, answer, stream, assembled in itertools.product(
        (False, True), (None, "earlier attempt's"), answers, (False, True), (False, True)
    ):
        kwargs: dict[str, Any] = {"original_response": answer, "stream": stream}
        if assembled:
            kwargs["complete_streaming_response"] = object()
        calls.append(_StartedCall((callback, "c", "m", [], None, at_start, None, kwargs, 0.0, None, never_logged)))
    return calls


def test_a_started_call_that_has_its_response_is_never_finished() -> None:
    # A closing scope that finds a call responded takes it as not finished without asking.
    calls = _started_calls()
    assert any(c.responded for c in calls) and any(c.finished for c in calls)
    assert not any(c.responded and c.finished for c in calls)


def _pending(call_id: str, answer: object) -> PendingCall:
    return pending_call(call_id, call_details={"original_response": answer})


def test_the_wait_state_is_what_asking_every_pending_call_both_gives() -> None:
    # Pending under distinct ids, and several under one id (the caller passed one litellm_call_id to each).
    calls: list[Any] = [*_started_calls()[::7], _pending("p1", None), _pending("p2", "{...}")]
    for n in (1, 2, 3):
        for group in itertools.combinations(calls, n):
            for shared_id in (False, True):
                turn = TurnTokenAccumulator()
                if shared_id:
                    turn._pending["id"] = group[0]
                    if group[1:]:
                        turn._more_pending = {"id": list(group[1:])}
                else:
                    turn._pending.update((f"id-{i}", c) for i, c in enumerate(group))
                expected = (any(not c.finished for c in group), any(c.responded for c in group))
                assert turn._wait_state_locked() == expected


class _OwnFutureLoop(asyncio.SelectorEventLoop):
    made = 0

    def create_future(self) -> asyncio.Future[Any]:
        type(self).made += 1
        return super().create_future()


def test_a_loop_that_makes_its_own_futures_is_asked_for_the_wait_s() -> None:
    async def exit_that_waits() -> asyncio.AbstractEventLoop:
        async with turnledger.scoped_turn(settle_timeout=5) as turn:
            turn.begin_call(_pending("c1", "{...}"))
            asyncio.get_running_loop().call_later(0.02, turn.add, TokenCallRecord(call_id="c1", model="m"))
        return asyncio.get_running_loop()

    loop = _OwnFutureLoop()
    try:
        loop.run_until_complete(exit_that_waits())
    finally:
        loop.close()
    assert _OwnFutureLoop.made >= 1


async def test_asyncio_s_own_loop_gets_the_future_its_create_future_makes() -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).create_future is acc._BASE_CREATE_FUTURE
    made: asyncio.Future[None] = acc._Future(loop=loop)
    assert type(made) is type(loop.create_future()) and made.get_loop() is loop


def test_a_scope_entered_without_an_asyncio_loop_is_current_with_no_loop() -> None:
    # __aenter__ activates the turn in place of _activate: as _activate, with no loop running (trio).
    entering = turnledger.scoped_turn().__aenter__()
    with pytest.raises(StopIteration) as entered:
        entering.send(None)
    turn: TurnTokenAccumulator = entered.value.value
    try:
        assert turn._loop is None and turnledger.get_current_accumulator() is turn
    finally:
        turn._deactivate()
    assert turnledger.get_current_accumulator() is None


async def test_a_scope_entered_on_a_loop_holds_that_loop() -> None:
    async with turnledger.scoped_turn() as turn:
        assert turn._loop is asyncio.get_running_loop() and turnledger.get_current_accumulator() is turn
    assert turnledger.get_current_accumulator() is None


_CLASS_DEFAULTS = (
    "_abandoned_factory",
    "_idle",
    "_wake_if_unanswered",
    "_bare_metadata",
    "_loop",
    "_token",
)
# Read on every event: a turn's own from the start (a class attribute read through an instance costs
# some 230 instructions more).
_OWN_FROM_THE_START = ("_closed", "_subscribers", "_more_pending", "_waiters", "_sync_waiters")


async def test_turns_write_their_own_fields_never_the_class_defaults() -> None:
    # By repr: a shared list or dict written into would be the same object, and equal, afterwards.
    before = {name: repr(getattr(TurnTokenAccumulator, name)) for name in _CLASS_DEFAULTS}
    fresh = TurnTokenAccumulator()
    assert not set(_CLASS_DEFAULTS) & set(vars(fresh)), "a new turn stores none of them"
    # Except the fields every call reads: the turn's own from the start (a class field is read the long
    # way), each the one shared immutable default.
    own = vars(fresh)
    assert own["_closed"] is False and own["_subscribers"] == () and own["_waiters"] == ()
    assert own["_sync_waiters"] == 0 and own["_more_pending"] is acc._NO_MORE_PENDING
    assert own["_metadata"] is acc._NO_METADATA
    async with turnledger.scoped_turn(settle_timeout=5) as turn:
        turn.register_model_metadata("openai/gpt-4o", model_id="7")
        turn.on_call(lambda record, t: None)
        turn.begin_call(_pending("c1", "{...}"))
        asyncio.get_running_loop().call_later(0.02, turn.add, TokenCallRecord(call_id="c1", model="gpt-4o"))
    assert turn.closed and turn.metadata_for("gpt-4o") is not None
    assert {name: repr(getattr(TurnTokenAccumulator, name)) for name in _CLASS_DEFAULTS} == before
    assert dict(acc._NO_METADATA) == {} and dict(acc._NO_MORE_PENDING) == {}
    assert fresh.metadata_for("gpt-4o") is None and not fresh.closed and fresh._waiters == ()
    assert fresh._subscribers == () and fresh._sync_waiters == 0 and not fresh._more_pending
    # The factory given is the turn's own; none given, the default one is used.
    factory: Any = len
    assert TurnTokenAccumulator(abandoned_record_factory=factory)._abandoned_factory is factory
    assert fresh._abandoned_factory is None


async def test_a_turn_closed_by_another_task_is_current_no_more_where_it_closed() -> None:
    # aclose deactivates the turn in place of _deactivate: from another context the token cannot be
    # reset, and the turn is taken off that context's copy of the var, as _deactivate does.
    turn = turnledger.start_turn()

    async def close_elsewhere() -> TurnTokenAccumulator | None:
        assert turnledger.get_current_accumulator() is turn
        await turn.aclose()
        return turnledger.get_current_accumulator()

    try:
        assert await asyncio.create_task(close_elsewhere()) is None
        assert turn.closed and turn._token is None
        # The opener's own context is its own business (as with _deactivate).
        assert turnledger.get_current_accumulator() is turn
    finally:
        acc._current_turn.set(None)


def test_a_turn_takes_its_id_as_new_turn_id_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # __init__ takes the next id of the batch in place of new_turn_id, which reads a batch when it ran out.
    from turnledger import turn_ids

    monkeypatch.setattr(turn_ids, "_ids", iter(["0" * 32, "1" * 32]))
    assert [TurnTokenAccumulator().turn_id for _ in range(2)] == ["0" * 32, "1" * 32]
    refilled = TurnTokenAccumulator().turn_id
    assert len(refilled) == 32 and refilled not in ("0" * 32, "1" * 32)
    assert next(turn_ids._ids) != refilled, "the rest of the new batch is handed out next"
    assert TurnTokenAccumulator(turn_id="given").turn_id == "given"

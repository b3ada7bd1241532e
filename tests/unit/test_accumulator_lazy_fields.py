"""Fields a turn makes only when it first writes them, and the exit that hands back the close itself:
each turn must still behave as if it had made its own."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

import turnledger
from tests.unit.pending_calls import pending_call
from turnledger import TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import _NO_MORE_PENDING, PendingCall, StartedCall
from turnledger.records import RecordFlag


@dataclass
class _Started:
    """A started call bound by one callback instance (``binder``), as the callback's own are."""

    call_id: str
    binder: object
    call_details: Any = None
    responded: bool = False
    finished: bool = False
    ended: int = 0

    def pending_call(self) -> PendingCall:
        return pending_call(self.call_id)

    def abandoned(self) -> None:
        self.ended += 1


def _record(call_id: str) -> TokenCallRecord:
    return TokenCallRecord(call_id=call_id, model="m", prompt_tokens=1, completion_tokens=1, total_tokens=2)


def test_calls_under_one_id_are_the_turns_own() -> None:
    binder = object()
    one, other = TurnTokenAccumulator(), TurnTokenAccumulator()
    first, second = _Started("id", binder, {}), _Started("id", binder, {})
    one.begin_call(first, bind=False)
    one.begin_call(second, bind=False, new_call=True)
    assert one.pending_calls == 2
    # Another turn, and a new one, see none of them.
    assert other.pending_calls == 0 and TurnTokenAccumulator().pending_calls == 0
    assert not other._more_pending and not _NO_MORE_PENDING
    assert other.started_call("id") is None
    # Each end event hands the id to the next call; the turn waits for both.
    one.add(_record("id"), event_key=("id", "s", 1), call_details=first.call_details)
    assert one.pending_calls == 1 and one.started_call("id") is second
    one.close(timeout=0)
    assert [r.status for r in one.calls][1:] == ["abandoned"] and second.ended == 1
    other.begin_call(_Started("id", binder), bind=False)
    other.close(timeout=0)
    assert len(other.calls) == 1


def test_a_turn_with_calls_under_one_id_still_pending_closes_with_them_abandoned() -> None:
    binder = object()
    turn = TurnTokenAccumulator()
    calls = [_Started("id", binder, {}) for _ in range(3)]
    for call in calls:
        turn.begin_call(call, bind=False, new_call=True)
    turn.close(timeout=0)
    assert [c.ended for c in calls] == [1, 1, 1]
    assert len(turn.calls) == 3 and not turn._more_pending
    assert not _NO_MORE_PENDING


def test_the_shared_default_of_calls_under_one_id_cannot_be_written() -> None:
    # A write that reached it would put one turn's calls in every turn.
    with pytest.raises(TypeError):
        _NO_MORE_PENDING["id"] = []
    with pytest.raises(TypeError):
        TurnTokenAccumulator()._more_pending["id"] = []


def test_retried_ids_are_the_turns_own() -> None:
    one, other = TurnTokenAccumulator(), TurnTokenAccumulator()
    details: dict[str, Any] = {}
    one.begin_call(_Started("r", None, details), bind=False, retry=True)
    one.begin_call(_Started("r", None, details), bind=False, retry=True)
    assert "r" in one._retried_ids and isinstance(one._retried_ids, set)
    assert not other._retried_ids and not TurnTokenAccumulator._retried_ids
    # A call of the same id in another turn is no retried call there: abandoned, not an unlogged attempt.
    other.begin_call(_Started("r", None, details), bind=False)
    other.close(timeout=0)
    assert [RecordFlag.UNLOGGED_RETRY_ATTEMPT in r.flags for r in other.calls] == [False]
    one.close(timeout=0)
    assert [RecordFlag.UNLOGGED_RETRY_ATTEMPT in r.flags for r in one.calls] == [True, True]


def test_the_build_lock_is_re_entrant() -> None:
    # Reading an event may log, and a logging handler may read the turn's totals on the same thread.
    lock = TurnTokenAccumulator()._build_lock
    assert type(lock) is type(threading.RLock())
    assert lock.acquire(blocking=False) and lock.acquire(blocking=False)
    lock.release()
    lock.release()


class _Writer:
    def __init__(self) -> None:
        self.turns: list[TurnTokenAccumulator] = []

    async def persist_turn(self, turn: TurnTokenAccumulator) -> None:
        assert turn.closed
        self.turns.append(turn)

    def submit_threadsafe(self, turn: TurnTokenAccumulator) -> None:
        self.turns.append(turn)


def test_the_async_exit_closes_restores_and_hands_over() -> None:
    async def main() -> None:
        outer = turnledger.start_turn()
        with pytest.raises(KeyError):
            async with turnledger.scoped_turn() as turn:
                assert turnledger.get_current_accumulator() is turn
                raise KeyError("the block's own")
        assert turn.closed and turnledger.get_current_accumulator() is outer
        writer = _Writer()
        with pytest.raises(KeyError):
            async with turnledger.scoped_turn(persist=writer) as persisted:
                raise KeyError("the block's own")
        assert writer.turns == [persisted] and persisted.closed
        assert turnledger.get_current_accumulator() is outer
        await outer.aclose()

    asyncio.run(main())


def test_the_async_exit_hands_over_a_turn_whose_wait_was_cancelled() -> None:
    async def main() -> None:
        writer = _Writer()

        async def scope() -> None:
            async with turnledger.scoped_turn(persist=writer, settle_timeout=30) as turn:
                turn.begin_call(_Started("c", None), bind=False)

        task = asyncio.create_task(scope())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(writer.turns) == 1 and writer.turns[0].closed

    asyncio.run(main())


# -- a closing scope reads whether a call has its response only once settle_timeout has passed ------


class _Counted(_Started):
    """A started call that counts how often a wait asks whether its response has arrived."""

    reads = 0

    def __init__(self, call_id: str, *, answered: bool) -> None:
        super().__init__(call_id, None)
        self._answered = answered

    @property
    def responded(self) -> bool:
        type(self).reads += 1
        return self._answered

    @responded.setter
    def responded(self, value: bool) -> None:
        pass


def _close_after(
    calls: list[_Counted], events: list[tuple[float, str]], *, settle_timeout: float, logging_timeout: float
) -> tuple[TurnTokenAccumulator, float]:
    async def main() -> tuple[TurnTokenAccumulator, float]:
        loop = asyncio.get_running_loop()
        async with turnledger.scoped_turn(settle_timeout=settle_timeout, logging_timeout=logging_timeout) as turn:
            for call in calls:
                turn.begin_call(call, bind=False)
            for delay, call_id in events:
                loop.call_later(delay, functools.partial(turn.add, _record(call_id), event_key=(call_id, "s", 0)))
            started = time.monotonic()
        return turn, time.monotonic() - started

    return asyncio.run(main())


def test_a_wait_that_ends_within_settle_timeout_never_asks_whether_a_response_arrived() -> None:
    _Counted.reads = 0
    calls = [_Counted("a", answered=True), _Counted("b", answered=True)]
    turn, _ = _close_after(calls, [(0.0, "a"), (0.01, "b")], settle_timeout=5, logging_timeout=30)
    assert [r.status for r in turn.calls] == ["success", "success"]
    assert _Counted.reads == 0


def test_an_answered_call_still_gets_logging_timeout() -> None:
    _Counted.reads = 0
    turn, waited = _close_after([_Counted("a", answered=True)], [(0.4, "a")], settle_timeout=0.05, logging_timeout=30)
    assert [r.status for r in turn.calls] == ["success"], "waited for past settle_timeout"
    assert 0.35 < waited < 10 and _Counted.reads >= 1


def test_a_call_without_its_response_gets_settle_timeout_only() -> None:
    turn, waited = _close_after([_Counted("a", answered=False)], [], settle_timeout=0.1, logging_timeout=30)
    assert [r.status for r in turn.calls] == ["abandoned"]
    assert 0.05 < waited < 5


def test_once_the_answered_call_is_in_an_unanswered_one_has_had_its_settle_timeout() -> None:
    calls = [_Counted("a", answered=True), _Counted("b", answered=False)]
    turn, waited = _close_after(calls, [(0.3, "a")], settle_timeout=0.2, logging_timeout=30)
    assert [r.status for r in turn.calls] == ["success", "abandoned"]
    assert 0.25 < waited < 5


def test_an_event_wakes_a_short_wait_exactly_when_no_pending_call_may_still_report() -> None:
    # With no call known to have its response (the flag unset), a waiter is woken once nothing
    # pending may still report (asked of every pending call, the long way), under distinct ids and under one.
    loop = asyncio.new_event_loop()
    try:
        for finished in ([], [False], [True], [True, True], [True, False], [False, True]):
            for shared_id in (False, True):
                turn = TurnTokenAccumulator()
                calls: list[StartedCall] = [
                    _Started("id" if shared_id else f"id-{i}", None, finished=f) for i, f in enumerate(finished)
                ]
                if shared_id and calls:
                    turn._pending["id"] = calls[0]
                    if calls[1:]:
                        turn._more_pending = {"id": calls[1:]}
                else:
                    turn._pending.update((c.call_id, c) for c in calls)
                fut: asyncio.Future[None] = loop.create_future()
                turn._waiters = [(loop, fut)]
                woken = turn._wake_waiters_locked()
                may_still_report = any(not c.finished for c in calls)
                assert bool(woken) is not may_still_report, (finished, shared_id)
                assert turn._awaited_locked() is may_still_report, (finished, shared_id)
    finally:
        loop.close()

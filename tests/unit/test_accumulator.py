"""The turn accumulator without LiteLLM: context isolation, thread safety, exact totals."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import types
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import turnledger
from tests.unit.pending_calls import pending_call
from turnledger import CallStatus, CostSource, RecordFlag, TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import PendingCall, call_bindings


def record(
    call_id: str, model: str = "m", cost: str | None = "0.001", prompt: int = 10, completion: int = 5
) -> TokenCallRecord:
    return TokenCallRecord(
        call_id=call_id,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=None if cost is None else Decimal(cost),
        cost_source=CostSource.NONE if cost is None else CostSource.RESPONSE_COST,
    )


def pending(call_id: str, model: str = "m") -> PendingCall:
    return pending_call(call_id, model=model)


def begin_answered_and_in_flight(turn: TurnTokenAccumulator) -> None:
    """Two calls pending: "answered" (its response arrived: an end event is on its way) and "in-flight"."""
    answered = pending("answered")
    answered.call_details = {"original_response": "{...}"}
    in_flight = pending("in-flight")
    in_flight.call_details = {}
    turn.begin_call(answered)
    turn.begin_call(in_flight)


async def test_two_concurrent_tasks_each_see_only_their_own_turn() -> None:
    seen: dict[str, list[TurnTokenAccumulator | None]] = {"a": [], "b": []}
    both_inside = asyncio.Barrier(2)

    async def worker(name: str) -> TurnTokenAccumulator:
        async with turnledger.scoped_turn(user_id=name) as turn:
            await both_inside.wait()
            seen[name].append(turnledger.get_current_accumulator())
            turn.add(record(f"{name}-1"))
            await asyncio.sleep(0)
            seen[name].append(turnledger.get_current_accumulator())
        seen[name].append(turnledger.get_current_accumulator())
        return turn

    a, b = await asyncio.gather(worker("a"), worker("b"))
    assert seen["a"] == [a, a, None] and seen["b"] == [b, b, None]
    assert [r.call_id for r in a.calls] == ["a-1"] and [r.call_id for r in b.calls] == ["b-1"]
    assert turnledger.get_current_accumulator() is None


def test_sync_scope_restores_the_outer_turn() -> None:
    with turnledger.scoped_turn() as outer:
        with turnledger.scoped_turn() as inner:
            assert turnledger.get_current_accumulator() is inner
        assert turnledger.get_current_accumulator() is outer
    assert turnledger.get_current_accumulator() is None


async def test_scope_resets_context_and_keeps_calls_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with turnledger.scoped_turn() as turn:
            turn.add(record("c1"))
            raise RuntimeError("boom")
    assert turnledger.get_current_accumulator() is None
    assert turn.closed and [r.call_id for r in turn.calls] == ["c1"]


def test_totals_are_exact_and_unpriced_is_not_free() -> None:
    turn = TurnTokenAccumulator()
    turn.add(record("1", model="a", cost="0.0000015"))
    turn.add(record("2", model="a", cost="0.0000015"))
    turn.add(record("3", model="b", cost=None))
    assert turn.total_cost_usd == Decimal("0.000003")
    assert turn.unpriced_calls == 1
    summary = turn.per_message_summary()
    assert summary["a"]["cost_usd"] == Decimal("0.000003") and summary["a"]["unpriced_calls"] == 0
    assert summary["b"]["cost_usd"] is None and summary["b"]["unpriced_calls"] == 1
    assert summary["b"]["cost_micros"] is None
    assert turn.grand_total["calls"] == 3 and turn.grand_total["cost_micros"] == 3
    only_unpriced = TurnTokenAccumulator()
    only_unpriced.add(record("x", cost=None))
    assert only_unpriced.total_cost_usd is None and only_unpriced.total_cost_micros is None
    assert TurnTokenAccumulator().total_cost_usd == Decimal(0)


def test_per_model_micros_add_up_to_the_total() -> None:
    turn = TurnTokenAccumulator()
    # Each model alone rounds to 0 or 1 micro; together they are 2 micros, and the parts must say so.
    for i, model in enumerate(["a", "b", "c", "d"]):
        turn.add(record(str(i), model=model, cost="0.0000005"))
    summary = turn.per_message_summary()
    assert turn.total_cost_micros == 2
    assert sum(s["cost_micros"] for s in summary.values()) == 2


def test_million_calls_of_one_and_a_half_micro_usd_are_exactly_a_dollar_fifty() -> None:
    turn = TurnTokenAccumulator()
    one = record("c", cost="0.0000015")
    turn.calls.extend([one] * 1_000_000)
    assert turn.total_cost_usd == Decimal("1.5")
    assert turn.total_cost_micros == 1_500_000


def test_the_same_event_is_added_once() -> None:
    turn = TurnTokenAccumulator()
    key = ("c1", "success", "2026-01-01T00:00:00+00:00")
    assert turn.add(record("c1"), event_key=key) is True
    assert turn.add(record("c1"), event_key=key) is False
    assert len(turn.calls) == 1


def test_concurrent_adds_from_threads_are_all_kept() -> None:
    turn = TurnTokenAccumulator()
    threads_n, per_thread = 8, 500

    def work(t: int) -> None:
        for i in range(per_thread):
            turn.add(record(f"{t}-{i}", cost="0.000001"), event_key=(f"{t}-{i}", "success", ""))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(turn.calls) == threads_n * per_thread
    assert turn.total_cost_usd == Decimal("0.004")


async def test_exit_waits_for_a_pending_call_and_wakes_when_it_lands() -> None:
    async with turnledger.scoped_turn(settle_timeout=5) as turn:
        turn.begin_call(pending("c1"))
        loop = asyncio.get_running_loop()
        # The end event arrives from another thread shortly after the body finished.
        loop.call_later(0.05, lambda: threading.Thread(target=turn.add, args=(record("c1"),)).start())
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS]
    assert not turn.late_calls


async def test_exit_wakes_when_the_event_lands_on_its_own_loop() -> None:
    # An async call's event is logged on the loop the scope waits on. The deadline is an hour: only
    # the event itself can end the wait before the test's own hang guard.
    async def scope() -> TurnTokenAccumulator:
        async with turnledger.scoped_turn(settle_timeout=3600) as turn:
            turn.begin_call(pending("c1"))
            asyncio.get_running_loop().call_later(0.05, turn.add, record("c1"))
        return turn

    turn = await asyncio.wait_for(scope(), 60)
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS]


async def test_a_cancelled_exit_still_closes_the_turn() -> None:
    turn = TurnTokenAccumulator(settle_timeout=5)
    turn._activate()
    turn.begin_call(pending("cancelled-exit"))
    closing = asyncio.ensure_future(turn.aclose())
    await asyncio.sleep(0.02)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert turn.closed
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED]


async def test_a_call_still_pending_at_the_deadline_is_abandoned_not_dropped() -> None:
    async with turnledger.scoped_turn(settle_timeout=0.05) as turn:
        turn.begin_call(pending("never-ends", model="m-x"))
    [abandoned] = turn.calls
    assert abandoned.status is CallStatus.ABANDONED and abandoned.model == "m-x"
    assert RecordFlag.NO_CALLBACK in abandoned.flags
    # Its binding outlives the turn so that a late event finds this turn, not another.
    assert call_bindings.lookup("never-ends") is turn


def test_sync_close_waits_for_pending_calls() -> None:
    with turnledger.scoped_turn(settle_timeout=5) as turn:
        turn.begin_call(pending("c1"))
        threading.Timer(0.05, turn.add, args=(record("c1"),)).start()
    assert [r.call_id for r in turn.calls] == ["c1"] and turn.calls[0].status is CallStatus.SUCCESS


def test_metadata_is_found_by_prefixed_and_bare_name() -> None:
    turn = TurnTokenAccumulator()
    turn.register_model_metadata("openrouter/anthropic/claude-sonnet-4-5", model_id="42", display_name="Sonnet")
    meta = turn.metadata_for("claude-sonnet-4-5")
    assert meta is not None and (meta.model_id, meta.display_name) == ("42", "Sonnet")
    assert turn.metadata_for("openrouter/anthropic/claude-sonnet-4-5") is meta
    assert turn.metadata_for("gpt-4o") is None


def test_register_model_usage_metadata_needs_an_open_turn() -> None:
    assert turnledger.register_model_usage_metadata("openai/gpt-4o") is False
    with turnledger.scoped_turn() as turn:
        assert turnledger.register_model_usage_metadata("openai/gpt-4o", model_id="7") is True
    meta = turn.metadata_for("gpt-4o")
    assert meta is not None and meta.model_id == "7"


async def test_start_turn_then_aclose() -> None:
    turn = turnledger.start_turn(user_id="u")
    assert turnledger.get_current_accumulator() is turn
    turn.add(record("c1"))
    await turn.aclose()
    assert turn.closed and turnledger.get_current_accumulator() is None


async def test_subscribers_sync_async_and_a_failing_one() -> None:
    got_sync: list[str] = []
    got_async: list[str] = []

    def sync_sub(r: TokenCallRecord, t: TurnTokenAccumulator | None) -> None:
        got_sync.append(r.call_id)

    async def async_sub(r: TokenCallRecord, t: TurnTokenAccumulator | None) -> None:
        await asyncio.sleep(0)
        got_async.append(r.call_id)

    def broken(r: TokenCallRecord, t: TurnTokenAccumulator | None) -> None:
        raise ValueError("subscriber bug")

    async with turnledger.scoped_turn() as turn:
        turn.on_call(broken)
        turn.on_call(sync_sub)
        turn.on_call(async_sub)
        turn.add(record("c1"))
        turn.add(record("c2"))
    from turnledger.subscribers import drain_subscribers

    await drain_subscribers()
    assert got_sync == ["c1", "c2"] and got_async == ["c1", "c2"]


def test_bindings_of_open_turns_survive_eviction() -> None:
    from turnledger.accumulator import _CallBindings

    bindings = _CallBindings(max_entries=3)
    open_turn = TurnTokenAccumulator()
    closed_turn = TurnTokenAccumulator()
    closed_turn.close(timeout=0)
    bindings.bind("open-1", open_turn)
    for i in range(5):
        bindings.bind(f"closed-{i}", closed_turn)
    assert bindings.lookup("open-1") is open_turn
    assert bindings.lookup("closed-0") is None
    assert bindings.lookup("closed-4") is closed_turn
    assert len(bindings) == 3


async def test_a_call_whose_response_arrived_is_waited_for_past_the_settle_deadline() -> None:
    """LiteLLM always logs a returned non-stream call, only late when busy: wait for it, don't abandon it."""
    async with turnledger.scoped_turn(settle_timeout=0.05, logging_timeout=5) as turn:
        responded = pending("slow-log")
        responded.call_details = {"original_response": "{...}"}
        turn.begin_call(responded)
        asyncio.get_running_loop().call_later(0.3, turn.add, record("slow-log"))
    assert [(r.call_id, r.status) for r in turn.calls] == [("slow-log", CallStatus.SUCCESS)]


async def test_a_stream_or_in_flight_call_gets_only_the_settle_deadline() -> None:
    async with turnledger.scoped_turn(settle_timeout=0.05, logging_timeout=30) as turn:
        in_flight = pending("in-flight")
        in_flight.call_details = {}
        stream = pending("stream")
        stream.stream = True
        stream.call_details = {"original_response": "{...}"}
        turn.begin_call(in_flight)
        turn.begin_call(stream)
    assert sorted((r.call_id, r.status) for r in turn.calls) == [
        ("in-flight", CallStatus.ABANDONED),
        ("stream", CallStatus.ABANDONED),
    ]


async def test_the_wait_shortens_to_the_settle_deadline_once_the_answered_call_is_in() -> None:
    """The exit waits up to logging_timeout while a call with its response is pending; once that call's
    event is in and only a call without a response is left, the wait ends at the settle deadline."""
    async with turnledger.scoped_turn(settle_timeout=0.3, logging_timeout=30) as turn:
        begin_answered_and_in_flight(turn)
        asyncio.get_running_loop().call_later(0.05, turn.add, record("answered"))
        started = time.monotonic()
    waited = time.monotonic() - started
    assert sorted((r.call_id, r.status) for r in turn.calls) == [
        ("answered", CallStatus.SUCCESS),
        ("in-flight", CallStatus.ABANDONED),
    ]
    # The settle deadline (0.3 s from the exit), not logging_timeout's 30 s.
    assert 0.25 < waited < 10, waited


@pytest.mark.parametrize("second_on", ["same loop", "another thread's loop"])
async def test_a_second_closer_does_not_keep_the_first_waiting_past_its_shortened_deadline(second_on: str) -> None:
    """Two closers of one turn: the second has an explicit timeout, so the answered call's event changes
    nothing for it; the first's deadline shortens to settle_timeout with it. Both shared one wake flag,
    the second's overwrote the first's, and the first slept until logging_timeout."""
    turn = TurnTokenAccumulator(settle_timeout=0.1, logging_timeout=30)
    begin_answered_and_in_flight(turn)
    first = asyncio.ensure_future(turn.aclose())
    await asyncio.sleep(0.02)
    if second_on == "same loop":
        second: object = asyncio.ensure_future(turn.aclose(timeout=30))
    else:
        second = threading.Thread(target=asyncio.run, args=(turn.aclose(timeout=30),))
        second.start()
    for _ in range(500):  # until both wait
        if len(turn._waiters) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(turn._waiters) == 2
    started = time.monotonic()
    turn.add(record("answered"))
    try:
        await asyncio.wait({first}, timeout=5)
        # settle_timeout (0.1 s from the first's start, past already), not logging_timeout's 30 s.
        assert first.done() and time.monotonic() - started < 5
    finally:
        # The last call's event, late or not, wakes every closer still waiting.
        turn.add(record("in-flight"))
        await asyncio.wait_for(first, 10)
        if isinstance(second, threading.Thread):
            await asyncio.to_thread(second.join, 10)
            assert not second.is_alive()
        else:
            await asyncio.wait_for(second, 10)  # type: ignore[arg-type]
    assert sorted((r.call_id, r.status) for r in turn.calls) == [
        ("answered", CallStatus.SUCCESS),
        ("in-flight", CallStatus.ABANDONED),
    ]


@pytest.mark.parametrize("second_closer", ["async", "sync on a thread"])
async def test_a_closer_still_waiting_when_another_closes_the_turn_ends_with_it(second_closer: str) -> None:
    """The first closer's deadline passes and it closes the turn (the call in flight is abandoned):
    nothing is left to wait for, yet the second closer slept until its own timeout."""
    turn = TurnTokenAccumulator(settle_timeout=0.05, logging_timeout=30)
    turn.begin_call(pending("in-flight"))
    if second_closer == "async":
        second: asyncio.Future[None] = asyncio.ensure_future(turn.aclose(timeout=30))
    else:
        second = asyncio.ensure_future(asyncio.to_thread(turn.close, 30))
    await asyncio.sleep(0.02)  # the second waits
    await asyncio.wait_for(turn.aclose(), 10)
    try:
        await asyncio.wait({second}, timeout=5)
        assert second.done()
    finally:
        # The call's late event wakes a closer still waiting.
        turn.add(record("in-flight"))
        await asyncio.wait_for(second, 10)
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED]


async def test_a_call_answered_during_the_wait_gets_the_logging_deadline() -> None:
    """An in-flight call whose response arrives while the exit waits is waited for past the settle
    deadline (its event is on its way), with no other event to wake the wait."""
    async with turnledger.scoped_turn(settle_timeout=0.1, logging_timeout=5) as turn:
        call = pending("late-answer")
        details: dict[str, object] = {}
        call.call_details = details
        turn.begin_call(call)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, details.__setitem__, "original_response", "{...}")
        loop.call_later(0.4, turn.add, record("late-answer"))
    assert [(r.call_id, r.status) for r in turn.calls] == [("late-answer", CallStatus.SUCCESS)]


def test_sync_close_applies_the_same_two_deadlines() -> None:
    with turnledger.scoped_turn(settle_timeout=0.05, logging_timeout=5) as turn:
        responded = pending("slow-log")
        responded.call_details = {"original_response": "{...}"}
        turn.begin_call(responded)
        threading.Timer(0.3, turn.add, args=(record("slow-log"),)).start()
    assert [(r.call_id, r.status) for r in turn.calls] == [("slow-log", CallStatus.SUCCESS)]


async def test_a_sync_scope_inside_a_running_event_loop_is_refused() -> None:
    with pytest.raises(RuntimeError, match="async with scoped_turn"), turnledger.scoped_turn():
        pass
    assert turnledger.get_current_accumulator() is None
    turn = turnledger.start_turn()
    turn.begin_call(pending("c1"))
    with pytest.raises(RuntimeError, match=r"await turn\.aclose"):
        turn.close()
    await turn.aclose(timeout=0)
    assert turn.closed


class _Sink:
    """A turn sink that takes the turn at once, as a BatchWriter does, then waits as for durability."""

    def __init__(self) -> None:
        self.turns: list[TurnTokenAccumulator] = []

    async def persist_turn(self, turn: TurnTokenAccumulator) -> None:
        self.turns.append(turn)
        await asyncio.sleep(0)

    def submit_threadsafe(self, turn: TurnTokenAccumulator) -> None:
        self.turns.append(turn)


async def test_a_scope_cancelled_while_it_waits_for_a_call_still_hands_its_turn_over() -> None:
    sink = _Sink()
    inside = asyncio.Event()

    async def request() -> None:
        async with turnledger.scoped_turn(settle_timeout=30, persist=sink) as turn:
            turn.add(record("billed"))
            turn.begin_call(pending("in-flight"))
            inside.set()
        pytest.fail("the exit was cancelled: it must not get here")

    task = asyncio.ensure_future(request())
    await inside.wait()
    await asyncio.sleep(0.02)  # the exit is now waiting for the call in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [turn] = sink.turns
    assert turn.closed
    assert [(r.call_id, r.status) for r in turn.calls] == [
        ("billed", CallStatus.SUCCESS),
        ("in-flight", CallStatus.ABANDONED),
    ]


async def test_a_cancelled_exit_waits_for_an_answered_call_no_longer_than_the_settle_deadline() -> None:
    # A request cancelled (a server shutting down) while LiteLLM's logging is stuck must not wait out
    # logging_timeout: the answered call is abandoned after settle_timeout.
    turn = TurnTokenAccumulator(settle_timeout=0.05, logging_timeout=600)
    turn._activate()
    stuck = pending("stuck-log")
    stuck.call_details = {"original_response": "{...}"}
    turn.begin_call(stuck)
    closing = asyncio.ensure_future(turn.aclose())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 60)
    assert [(r.call_id, r.status) for r in turn.calls] == [("stuck-log", CallStatus.ABANDONED)]


async def test_a_cancelled_exit_ends_when_the_answered_call_is_in_not_at_the_settle_deadline() -> None:
    # Cancelled, the exit waits for answered calls only: once the answered call's event is in, a call
    # still in flight is abandoned at once.
    turn = TurnTokenAccumulator(settle_timeout=5, logging_timeout=600)
    turn._activate()
    begin_answered_and_in_flight(turn)
    closing = asyncio.ensure_future(turn.aclose())
    await asyncio.sleep(0.01)
    closing.cancel()
    await asyncio.sleep(0.01)
    started = time.monotonic()
    turn.add(record("answered"))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closing, 60)
    assert time.monotonic() - started < 2.5
    assert sorted((r.call_id, r.status) for r in turn.calls) == [
        ("answered", CallStatus.SUCCESS),
        ("in-flight", CallStatus.ABANDONED),
    ]


def test_a_turn_makes_its_condition_only_for_a_sync_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every turn used to make a threading.Condition (several microseconds over a plain Lock); only a
    # sync close that has to wait needs one.
    made: list[threading.Condition] = []
    real_condition = threading.Condition

    def counting_condition(lock: threading.Lock) -> threading.Condition:
        made.append(real_condition(lock))
        return made[-1]

    turn = TurnTokenAccumulator(settle_timeout=5)
    ends_later = threading.Timer(0.05, turn.add, args=(record("c1"),))  # made first: a Timer makes Conditions
    monkeypatch.setattr(threading, "Condition", counting_condition)
    with turnledger.scoped_turn():
        pass
    assert made == []
    with turnledger.scoped_turn(turn=turn):
        turn.begin_call(pending("c1"))
        ends_later.start()
    assert len(made) == 1, "the sync close waited on one Condition"
    assert [r.call_id for r in turn.calls] == ["c1"]


def test_a_turn_id_is_a_random_version_4_uuid_in_hex() -> None:
    ids = [TurnTokenAccumulator().turn_id for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for turn_id in ids:
        parsed = uuid.UUID(hex=turn_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, turn_id)


def test_a_sync_close_waits_logging_timeout_in_all_not_per_answered_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The docs bound the wait at scope exit by logging_timeout. Three answered calls, two of whose
    # events come in just before each would have had its own full deadline: a wait per call would add
    # up to 1.8 x logging_timeout. Measured on a clock the test drives, so no real time is asserted.
    logging_timeout = 10.0
    now = [0.0]
    turn = TurnTokenAccumulator(settle_timeout=0.05, logging_timeout=logging_timeout)
    late_events = [record("a"), record("b")]

    class DrivenCondition:
        def __init__(self, lock: threading.Lock) -> None:
            self.lock = lock

        def notify_all(self) -> None:
            pass

        def wait(self, timeout: float) -> bool:
            # A close that waits on and on fails here instead of hanging the run.
            assert now[0] < 5 * logging_timeout, "the close kept waiting"
            self.lock.release()
            try:
                if late_events:
                    now[0] += min(timeout, 0.4 * logging_timeout)
                    turn.add(late_events.pop(0))
                else:
                    now[0] += timeout
            finally:
                self.lock.acquire()
            return True

    monkeypatch.setattr(threading, "Condition", DrivenCondition)
    # The module's own name only: patching time.monotonic itself would drive every thread's clock.
    # (Wall-clock time is the real one: the turn stamps when it closed.)
    monkeypatch.setattr("turnledger.accumulator.time", types.SimpleNamespace(monotonic=lambda: now[0], time=time.time))
    with turnledger.scoped_turn(turn=turn):
        for call_id in ("a", "b", "never-logged"):
            answered = pending(call_id)
            answered.call_details = {"original_response": "{...}"}
            turn.begin_call(answered)
    assert now[0] == logging_timeout
    assert [(r.call_id, r.status) for r in turn.calls] == [
        ("a", CallStatus.SUCCESS),
        ("b", CallStatus.SUCCESS),
        ("never-logged", CallStatus.ABANDONED),
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_turn_ids_of_its_own() -> None:
    # Turn ids are read from the OS in batches: a child handing out its parent's unread ones would
    # give two turns, in two processes, the same id.
    TurnTokenAccumulator()  # a batch is read, and most of it is left
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_end, TurnTokenAccumulator().turn_id.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as child:
        child_id = child.read().decode()
    assert child_id and child_id != TurnTokenAccumulator().turn_id


async def test_a_turn_tells_when_it_opened_and_closed_in_utc() -> None:
    before = datetime.now(UTC)
    async with turnledger.scoped_turn() as turn:
        assert turn.closed_at is None
        opened = turn.created_at
    after = datetime.now(UTC)
    assert opened.tzinfo is not None and opened.utcoffset() == timedelta(0)
    assert turn.closed_at is not None and turn.closed_at.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= opened <= turn.closed_at <= after + timedelta(milliseconds=1)
    turn.created_at = datetime(2026, 1, 2, tzinfo=UTC)
    assert turn.created_at == datetime(2026, 1, 2, tzinfo=UTC)

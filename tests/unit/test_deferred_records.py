"""End events read into records later, in batches (callback.py ``_EndEvent``, accumulator.py
``add_deferred``): nothing lost, nothing doubled, arrival order kept, memory bounded, bad events
flagged when read."""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from turnledger import CallStatus, CostSource, RecordFlag, TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import MAX_DEFERRED_RECORDS, call_bindings
from turnledger.records import CallKind

_T0 = datetime(2026, 11, 25, 12, 0, 0)


def event(call_id: str, prompt: int = 10, completion: int = 5) -> tuple[dict[str, Any], litellm.ModelResponse]:
    kwargs: dict[str, Any] = {
        "litellm_call_id": call_id,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": 0.000015,
    }
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return kwargs, litellm.ModelResponse(model="gpt-4o-mini", usage=usage)


def deliver(cb: turnledger.TokenTrackingCallback, call_id: str, end: datetime | None = None, prompt: int = 10) -> Any:
    kwargs, response = event(call_id, prompt=prompt)
    cb.log_success_event(kwargs, response, _T0, end or _T0 + timedelta(seconds=1))
    return response


def test_deferred_and_immediate_records_keep_the_order_their_events_arrived_in() -> None:
    cb = turnledger.TokenTrackingCallback(name="order")
    heard: list[str] = []
    with turnledger.scoped_turn() as turn:
        deliver(cb, "c1")
        deliver(cb, "c2")
        # A subscriber hears of each record as it lands: with one, events are read at once.
        unsubscribe = turn.on_call(lambda record, _turn: heard.append(record.call_id))
        deliver(cb, "c3")
        unsubscribe()
        deliver(cb, "c4")
    assert [r.call_id for r in turn.calls] == ["c1", "c2", "c3", "c4"]
    assert heard == ["c3"]
    assert turn.total_tokens == 4 * 15
    assert cb.stats["captured"] == 4


def test_a_turn_holds_at_most_max_deferred_events() -> None:
    cb = turnledger.TokenTrackingCallback(name="bounded")
    with turnledger.scoped_turn() as turn:
        held = [weakref.ref(deliver(cb, f"c{i}")) for i in range(MAX_DEFERRED_RECORDS - 1)]
        gc.collect()
        assert all(ref() is not None for ref in held), "fewer than the maximum: still unread"
        held.append(weakref.ref(deliver(cb, "last-of-batch")))
        gc.collect()
        # The batch was read when it filled up: LiteLLM's responses are no longer held by the turn.
        assert all(ref() is None for ref in held)
        assert len(turn.calls) == MAX_DEFERRED_RECORDS


def test_reading_a_total_reads_the_deferred_events_first() -> None:
    cb = turnledger.TokenTrackingCallback(name="totals")
    with turnledger.scoped_turn() as turn:
        deliver(cb, "c1", prompt=7)
        assert [r.prompt_tokens for r in turn.calls] == [7]
        deliver(cb, "c0", prompt=3)
        assert turn.total_prompt_tokens == 10
        assert len(turn) == 2
        deliver(cb, "c2", prompt=11)
        assert turn.total_cost_usd == Decimal("0.000045")
        assert [r.prompt_tokens for r in turn] == [7, 3, 11]


def test_an_event_that_cannot_be_read_is_flagged_when_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = turnledger.TokenTrackingCallback(name="unreadable")

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("usage parser bug")

    monkeypatch.setattr("turnledger.callback.usage_counts", explode)
    with turnledger.scoped_turn() as turn:
        deliver(cb, "bad")
        assert cb.stats["captured"] == 1
    [record] = turn.calls
    assert record.call_id == "bad" and RecordFlag.MALFORMED_EVENT in record.flags
    assert record.cost_usd is None  # unpriced, never free
    assert cb.stats["errors"] == 1


def test_a_failure_is_read_at_once() -> None:
    cb = turnledger.TokenTrackingCallback(name="failure")
    kwargs, _ = event("failed")
    kwargs["exception"] = TimeoutError("provider timed out")
    with turnledger.scoped_turn() as turn:
        cb.log_failure_event(kwargs, None, _T0, _T0 + timedelta(seconds=1))
        # LiteLLM may retry with the same call details: what the failure said must be read now.
        kwargs["exception"] = None
        [record] = turn.calls
    assert (record.status, record.error_type) == (CallStatus.FAILURE, "TimeoutError")


def test_two_instances_defer_one_event_once() -> None:
    first, second = turnledger.TokenTrackingCallback(name="a"), turnledger.TokenTrackingCallback(name="b")
    kwargs, response = event("shared")
    end = _T0 + timedelta(seconds=1)
    with turnledger.scoped_turn() as turn:
        first.log_success_event(kwargs, response, _T0, end)
        second.log_success_event(kwargs, response, _T0, end)
    assert [r.call_id for r in turn.calls] == ["shared"]
    assert (first.stats["captured"], second.stats["duplicate"]) == (1, 1)


def test_an_event_after_the_turn_closed_is_read_at_once_as_late() -> None:
    cb = turnledger.TokenTrackingCallback(name="late")
    turn = TurnTokenAccumulator()
    turn.close()
    kwargs, response = event("late-one")
    # The call was bound to this turn when it started: its event finds the turn after it closed.
    call_bindings.bind("late-one", turn)
    cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
    assert turn.calls == []
    [late] = turn.late_calls
    assert late.call_id == "late-one" and RecordFlag.LATE in late.flags
    assert cb.stats["late"] == 1


def test_events_from_many_threads_while_others_read_are_each_kept_once() -> None:
    cb = turnledger.TokenTrackingCallback(name="threads")
    threads_n, per_thread = 6, 300
    turn = TurnTokenAccumulator()
    stop = threading.Event()
    read_totals: list[int] = []

    def produce(t: int) -> None:
        for i in range(per_thread):
            kwargs, response = event(f"t{t}-{i:04d}", prompt=1, completion=0)
            # A thread has no copy of the caller's context: the event finds its turn by the binding
            # the pre-call hook made.
            call_bindings.bind(kwargs["litellm_call_id"], turn)
            cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(microseconds=i))

    def read() -> None:
        while not stop.is_set():
            read_totals.append(turn.total_prompt_tokens)

    reader = threading.Thread(target=read)
    reader.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    reader.join()
    turn.close()
    ids = [r.call_id for r in turn.calls]
    assert len(ids) == len(set(ids)) == threads_n * per_thread
    assert turn.total_prompt_tokens == threads_n * per_thread
    # Each producer's events arrived in order, so its records are in that order.
    for t in range(threads_n):
        mine = [i for i in ids if i.startswith(f"t{t}-")]
        assert mine == sorted(mine)
    assert read_totals == sorted(read_totals), "a total never goes backwards"


def test_a_started_call_that_never_reports_is_read_from_what_litellm_passed() -> None:
    cb = turnledger.TokenTrackingCallback(name="started")
    started = datetime(2026, 11, 25, 9, 30, 0, tzinfo=UTC)
    kwargs: dict[str, Any] = {
        "litellm_call_id": "never-ends",
        "model": "gpt-4o-mini",
        "litellm_params": {"custom_llm_provider": "openai"},
        "call_type": "aembedding",
        "stream": False,
        "start_time": started,
        "input": ["some text"],
    }
    with turnledger.scoped_turn(settle_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", None, kwargs)
        assert turn.pending_calls == 1
    [record] = turn.calls
    assert isinstance(record, TokenCallRecord)
    assert (record.call_id, record.model, record.provider) == ("never-ends", "gpt-4o-mini", "openai")
    assert (record.call_kind, record.status, record.started_at) == (CallKind.EMBEDDING, CallStatus.ABANDONED, started)
    assert RecordFlag.NO_CALLBACK in record.flags
    assert record.prompt_tokens > 0, "estimated from the embedding input LiteLLM passed"


def test_a_log_handler_that_reads_the_turn_while_a_batch_is_read_does_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading an event that cannot be read logs a warning; a handler adding the turn's cost to
    each log line reads the turn on the same thread, inside the batch read."""
    cb = turnledger.TokenTrackingCallback(name="reentrant")
    seen_costs: list[object] = []

    class TurnCost(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            current = turnledger.get_current_accumulator()
            seen_costs.append(current.total_cost_usd if current is not None else "no turn")
            return True

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("usage parser bug")

    monkeypatch.setattr("turnledger.callback.usage_counts", explode)
    log_filter = TurnCost()
    logging.getLogger("turnledger").addFilter(log_filter)
    outcome: list[list[TokenCallRecord]] = []

    def run_turn() -> None:
        with turnledger.scoped_turn() as turn:
            deliver(cb, "unreadable")
            turn.total_cost_usd  # noqa: B018  reads the batch
        outcome.append(turn.calls)

    try:
        worker = threading.Thread(target=run_turn, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the thread deadlocked on its own turn"
    finally:
        logging.getLogger("turnledger").removeFilter(log_filter)
    [records] = outcome
    assert [r.call_id for r in records] == ["unreadable"] and RecordFlag.MALFORMED_EVENT in records[0].flags
    assert seen_costs, "the handler ran inside the batch read"


def test_an_interrupt_while_a_batch_is_read_loses_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    from turnledger.usage import usage_counts as real

    cb = turnledger.TokenTrackingCallback(name="interrupted")
    reads = 0

    def interrupt_the_third(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:
            # An event that arrives while the batch is read (a log handler's call, another thread's)
            # is behind every event of the batch.
            deliver(cb, "during")
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("turnledger.callback.usage_counts", interrupt_the_third)
    with turnledger.scoped_turn() as turn:
        for i in range(5):
            deliver(cb, f"c{i}")
        with pytest.raises(KeyboardInterrupt):
            turn.total_tokens  # noqa: B018  reads the batch
    assert [r.call_id for r in turn.calls] == [*(f"c{i}" for i in range(5)), "during"]
    assert turn.total_tokens == 6 * 15


def test_an_interrupt_while_the_exit_reads_the_batch_keeps_the_calls_that_never_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cb = turnledger.TokenTrackingCallback(name="exit-interrupted")

    def interrupt(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), turnledger.scoped_turn(settle_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", None, event("never-ends")[0])
        deliver(cb, "ended")
        monkeypatch.setattr("turnledger.callback.usage_counts", interrupt)
    assert turn.closed
    monkeypatch.undo()
    assert sorted((r.call_id, r.status) for r in turn.calls) == [
        ("ended", CallStatus.SUCCESS),
        ("never-ends", CallStatus.ABANDONED),
    ]


@pytest.mark.parametrize(
    ("response_cost", "tokens"),
    [(None, 15), (0.0, 15), (float("inf"), 15)],
    ids=["unpriced", "zero", "infinite"],
)
def test_an_event_not_priced_by_litellm_is_priced_by_the_map_as_it_was_then(
    response_cost: float | None, tokens: int
) -> None:
    cb = turnledger.TokenTrackingCallback(name="unpriced")
    model = "turnledger-test-unmapped-model"
    with turnledger.scoped_turn() as turn:
        kwargs, response = event("c1", prompt=tokens, completion=0)
        kwargs.update(model=model, response_cost=response_cost)
        cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
        # Written into LiteLLM's global map later in the turn (register_model, another call's prices):
        litellm.model_cost[model] = {
            "input_cost_per_token": 1.0,
            "output_cost_per_token": 1.0,
            "litellm_provider": "openai",
            "mode": "chat",
        }
    try:
        [record] = turn.calls
        assert record.cost_source not in (CostSource.COST_PER_TOKEN, CostSource.ESTIMATED), (
            "priced by a map entry written after the call ended"
        )
    finally:
        litellm.model_cost.pop(model, None)


def test_a_success_without_tokens_is_estimated_from_the_messages_as_they_were() -> None:
    """Its usage is estimated from the caller's messages, a list the caller goes on appending to."""

    def prompt_tokens_estimated(read_at_once: bool) -> int:
        cb = turnledger.TokenTrackingCallback(name=f"estimate-{read_at_once}")
        messages = [{"role": "user", "content": "hello"}]
        kwargs, _ = event("no-usage")
        kwargs.update(messages=messages, response_cost=0.0005)
        response = litellm.ModelResponse(
            model="gpt-4o-mini",
            choices=[{"message": {"role": "assistant", "content": "hi there"}}],
            usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        )
        unsubscribe = turnledger.subscribe(lambda record, turn: None) if read_at_once else None
        try:
            with turnledger.scoped_turn() as turn:
                cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
                messages.append({"role": "assistant", "content": "hi there " * 200})
        finally:
            if unsubscribe is not None:
                unsubscribe()
        [record] = turn.calls
        assert record.usage_estimated
        return record.prompt_tokens

    assert prompt_tokens_estimated(read_at_once=False) == prompt_tokens_estimated(read_at_once=True)


def test_metadata_registered_after_a_call_ended_is_not_given_to_that_call() -> None:
    cb = turnledger.TokenTrackingCallback(name="metadata")
    with turnledger.scoped_turn() as turn:
        deliver(cb, "before")
        turn.register_model_metadata("openai/gpt-4o-mini", model_id="m-2")
        deliver(cb, "after")
    assert [(r.call_id, r.model_id) for r in turn.calls] == [("before", None), ("after", "m-2")]


def test_a_call_that_started_and_ended_is_one_success_record() -> None:
    cb = turnledger.TokenTrackingCallback(name="lifecycle")
    with turnledger.scoped_turn(settle_timeout=0) as turn:
        kwargs, response = event("c1")
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hi"}], kwargs)
        cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hi"}], event("never-ends")[0])
    assert [(r.call_id, r.status) for r in turn.calls] == [
        ("c1", CallStatus.SUCCESS),
        ("never-ends", CallStatus.ABANDONED),
    ]


def test_subscribers_hear_of_every_record_as_it_lands() -> None:
    own: list[str] = []
    everyone: list[str] = []
    cb = turnledger.TokenTrackingCallback(name="subscribed", on_record=lambda record, _turn: own.append(record.call_id))
    plain = turnledger.TokenTrackingCallback(name="plain")
    unsubscribe = turnledger.subscribe(lambda record, _turn: everyone.append(record.call_id))
    try:
        with turnledger.scoped_turn():
            deliver(cb, "c1")
            deliver(plain, "c2")
            assert (own, everyone) == (["c1"], ["c1", "c2"]), "heard at once, not when the turn is read"
    finally:
        unsubscribe()


def test_the_exit_waits_for_a_call_whose_response_arrived() -> None:
    cb = turnledger.TokenTrackingCallback(name="responded")
    kwargs, response = event("slow-to-log")
    # LiteLLM writes the provider's answer into its call details before it returns the response.
    kwargs["original_response"] = "{}"

    def log_later() -> None:
        time.sleep(0.3)
        cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))

    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=30) as turn:
        cb.log_pre_api_call("gpt-4o-mini", None, kwargs)
        threading.Thread(target=log_later).start()
    [record] = turn.calls
    assert (record.call_id, record.status) == ("slow-to-log", CallStatus.SUCCESS)


def test_a_call_that_never_reported_and_cannot_be_priced_is_kept_with_what_could_be_read() -> None:
    def failing_factory(pending: Any, meta: Any) -> TokenCallRecord:
        raise RuntimeError("estimator bug")

    class Unreadable:
        call_id = "unreadable"
        responded = False
        finished = False
        binder = None
        call_details = None

        def pending_call(self) -> Any:
            raise RuntimeError("LiteLLM changed its call details")

        def abandoned(self) -> None:
            raise RuntimeError("nor can it be counted")

    started = datetime(2026, 11, 25, 9, 30, 0, tzinfo=UTC)
    kwargs: dict[str, Any] = {
        "litellm_call_id": "readable",
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "aembedding",
        "stream": True,
        "start_time": started,
    }
    turn = TurnTokenAccumulator(abandoned_record_factory=failing_factory, settle_timeout=0)
    turn._activate()
    cb = turnledger.TokenTrackingCallback(name="abandoned")
    cb.log_pre_api_call("gpt-4o-mini", None, kwargs)
    turn.begin_call(Unreadable())
    turn.close()
    assert cb.stats["abandoned"] == 1
    readable, unreadable = turn.calls
    flags = (RecordFlag.NO_CALLBACK, RecordFlag.PRICING_ERROR)
    assert (readable.call_id, readable.model, readable.provider, readable.call_kind) == (
        "readable",
        "gpt-4o-mini",
        "openai",
        CallKind.EMBEDDING,
    )
    assert (readable.stream, readable.started_at, readable.status, readable.flags) == (
        True,
        started,
        CallStatus.ABANDONED,
        flags,
    )
    assert (unreadable.call_id, unreadable.model, unreadable.status, unreadable.flags) == (
        "unreadable",
        "unknown",
        CallStatus.ABANDONED,
        flags,
    )
    assert readable.cost_usd is None and unreadable.cost_usd is None


def test_deferring_an_event_reads_its_usage_without_pydantics_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM keeps a response's usage among the model's extras, where plain attribute access goes
    # through pydantic's __getattr__ (1.8 us): the success hook reads it from the extras directly.
    looked_up: list[str] = []
    pydantic_getattr = litellm.ModelResponse.__getattr__

    def spying_getattr(self: Any, name: str) -> Any:
        looked_up.append(name)
        return pydantic_getattr(self, name)

    cb = turnledger.TokenTrackingCallback(name="no-getattr")
    kwargs, response = event("c1", prompt=12)
    with turnledger.scoped_turn() as turn:
        monkeypatch.setattr(litellm.ModelResponse, "__getattr__", spying_getattr)
        cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
        monkeypatch.undo()
        assert len(turn._deferred) == 1, "a priced success that used tokens is deferred"
    assert looked_up == []
    assert [(r.prompt_tokens, r.cost_usd) for r in turn.calls] == [(12, Decimal("0.000015"))]


def test_the_stats_count_as_a_counter_does() -> None:
    # TokenTrackingCallback.stats stores its items as a dict's (a Counter's own __delitem__ makes every
    # store a Python-level call): the same operations give the same counts as a Counter, and reading a
    # missing key gives 0; only ``del`` of a missing key differs (it raises, as a dict's does).
    stats = turnledger.TokenTrackingCallback().stats
    assert isinstance(stats, Counter) and not stats
    plain: Counter[str] = Counter()
    for counter in (stats, plain):
        for key in ("captured", "duplicate", "captured", "errors", "late", "captured"):
            counter[key] += 1
        counter["late"] -= 1
        counter.update(["unscoped", "captured"])
        counter.subtract({"errors": 2})
        del counter["duplicate"]
        assert counter["never"] == 0 and "never" not in counter
    assert stats == plain and dict(stats) == dict(plain) and repr(stats) == repr(plain).replace("Counter", "_Stats")
    assert stats.most_common() == plain.most_common() and stats.total() == plain.total()
    assert +stats == +plain and stats.copy() == plain.copy()
    with pytest.raises(KeyError):
        del stats["never"]
    stats.clear()
    assert stats == Counter()

"""Capture overhead: what installing turnledger adds to a LiteLLM call, and the callback's own cost per event.

1. LiteLLM's per-call time with ``mock_response`` (no network), in one run, interleaved block by block
   so that machine noise hits every arm alike: a round is one block of each arm, back to back, the
   arm that goes first rotating. A block is ``TURNS`` turns of 3 sequential ``acompletion`` calls;
   every block ends by waiting for LiteLLM's logging worker to go idle, so the callback's deferred
   work is inside the timing. Before each block its arm's logger is registered and one untimed call
   made (and logged): LiteLLM's one-off work of taking up a newly registered logger (~100 us) is not
   a per-call cost, and short blocks would otherwise carry it. Arms:
   - ``without``: no callback installed, no scope;
   - ``no-op logger``: a logger that does nothing (any logger switches on LiteLLM's own logging work);
   - ``callback``: the callback installed, the whole block in one ``scoped_turn`` (the capture cost);
   - ``scope per turn``: the callback installed and a ``scoped_turn`` per 3-call turn, whose exit waits
     for the turn's last success event (LiteLLM logs it ~1 ms after the await returns): capture cost
     plus that wait, which is latency (bench/scope_exit_bench.py measures it), not CPU.
   Judged: (callback - without) / without per call in this process's CPU time (other processes on a
   shared machine inflate the wall clock, printed too), target < 1%; the no-op arm splits it into
   LiteLLM's share and turnledger's, each judged against 1% the same way (the no-op logger's share is
   the floor: what LiteLLM adds for any logger at all). Each round gives one paired ratio; the judged
   figure is their median, judged by its 95% bootstrap interval (how much a rerun could move it):
   PASS under 1%, OVER at or above, UNDECIDED when it spans 1%. Many short rounds (default 1000 of 15
   calls per arm, some 2.5 minutes) rather than few long ones: a pair's blocks run milliseconds apart, so
   the machine's drift (a neighbour's load, CPU frequency) hits both alike, and the median has more
   pairs to settle on. 120 rounds left the interval some 6 points wide, UNDECIDED in every run; 2000
   rounds (2026-11-27, each block still after a full collection) gave +3.92%, interval +3.07% .. +4.78%:
   OVER. Printed beside it: the ratio of the arms' medians.
   Then where the callback's extra CPU goes: ``acompletion`` runs LiteLLM's ``completion()`` in an
   executor thread (about 40% of a call's CPU), and the pre-call hook with it; the success hook, the
   reading of events and the scope run on the event loop's thread. The paired difference is split
   between the two (this thread's CPU time), beside the garbage collections of each arm's blocks
   (``gc.callbacks``: count by generation, time per call).
   Then turnledger's own work timed where it runs (in situ: caches cold after LiteLLM's own work): the
   hooks as LiteLLM calls them, and the reading of each event into its record, which the turn defers
   and does in batches (when read, when a batch of 8 fills up, at scope exit), with its stages; and
   the reading of an event by its position in its batch: the first is read with the caches cold from
   LiteLLM's own work (measured 2026-11-27: 44 us, the next ones 12, 10, 9 ... 7 us).
2. The callback's own time per event, calling its hooks directly with arguments recorded from a real
   ``acompletion``: the pre-call hook (binds the call to its turn) and the success hook (keeps the
   event; usage, pricing and the record as the turn reads it, all inside the timing), then each
   stage of reading an event timed alone with the same arguments. Judged: microseconds per call
   (both hooks and the reading), target < 25 us.

Size knobs: ``BENCH_CAPTURE_ROUNDS`` (interleaved rounds, default 1000), ``BENCH_CAPTURE_TURNS`` (turns per
block, default 5), ``BENCH_CAPTURE_REPEATS`` (direct repeats, default 30), ``BENCH_CAPTURE_EVENTS`` (direct
events per repeat, default 2000).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import gc
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

import turnledger
from bench._verdicts import TARGET_SHARE, interval_verdict
from turnledger.accumulator import TurnTokenAccumulator
from turnledger.callback import _LITELLM_CALLBACK_LISTS, _TURN_OF_CALL
from turnledger.records import record_from_fields

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello."}]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def fmt(values: list[float], unit: str, scale: float = 1.0) -> str:
    scaled = [v * scale for v in values]
    return (
        f"min {min(scaled):8.2f} {unit}   median {statistics.median(scaled):8.2f} {unit}   "
        f"max {max(scaled):8.2f} {unit}   (n={len(values)})"
    )


_IDLE_STEPS = 4
"""Loop iterations the worker must stay idle for. A finished call hands its success log over in two
steps (a task of its own, then the worker's queue), each one loop iteration: an idle worker seen once
may be about to get work, and then the call's logging runs in the next block, another arm's (measured:
about one 15-call block in two)."""


async def _logging_idle() -> None:
    # LiteLLM runs success callbacks from a background worker; a block is over when that has caught up.
    queue = GLOBAL_LOGGING_WORKER._queue
    idle = 0
    for _ in range(100_000):
        busy = (queue is not None and not queue.empty()) or GLOBAL_LOGGING_WORKER._running_tasks
        idle = 0 if busy else idle + 1
        if idle >= _IDLE_STEPS:
            break
        await asyncio.sleep(0)


async def _call() -> None:
    await litellm.acompletion(model=MODEL, messages=MESSAGES, mock_response="Hello!")


ARMS = ("without", "no-op logger", "callback", "scope per turn")


class _NoopLogger(CustomLogger):
    """Any registered logger switches on LiteLLM's own logging work; this one adds nothing to it."""

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        return None


_noop = _NoopLogger()


class _TimedCallback(turnledger.TokenTrackingCallback):
    """turnledger's callback, timing its own work where it runs (in situ, no differencing): the hooks as
    LiteLLM calls them, and the reading of events into records, which a turn defers and does in
    batches (when the turn is read, a batch fills up, or the scope exits)."""

    def __init__(self) -> None:
        super().__init__(name="bench-timed")
        self.spent = 0.0
        self.pre_spent = 0.0
        self.read_spent = 0.0
        self.events = 0
        self._in_hook = False

    def build_record(
        self,
        kwargs: Any,
        response_obj: Any,
        start_time: Any,
        end_time: Any,
        status: turnledger.CallStatus,
        turn: TurnTokenAccumulator | None,
    ) -> turnledger.TokenCallRecord:
        t0 = time.perf_counter()
        try:
            return super().build_record(kwargs, response_obj, start_time, end_time, status, turn)
        finally:
            took = time.perf_counter() - t0
            self.read_spent += took
            if not self._in_hook:  # a batch read inside a hook is already in the hook's time
                self.spent += took

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        t0 = time.perf_counter()
        super().log_pre_api_call(model, messages, kwargs)
        took = time.perf_counter() - t0
        self.spent += took
        self.pre_spent += took

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        t0 = time.perf_counter()
        self._in_hook = True
        try:
            self._on_end(kwargs, response_obj, start_time, end_time, turnledger.CallStatus.SUCCESS)
        finally:
            self._in_hook = False
        self.spent += time.perf_counter() - t0
        self.events += 1


_timed = _TimedCallback()


def _register(arm: str) -> None:
    if arm == "no-op logger":
        litellm.callbacks.append(_noop)
    elif arm != "without":
        turnledger.install(_timed)


def forget_logger(logger: CustomLogger) -> None:
    """Take ``logger`` out of every list LiteLLM copies a registered logger into, the failure lists
    too: left in ``_async_failure_callback``, the no-op logger stayed registered in every later block
    of every arm, the ``without`` arm included."""
    for name in _LITELLM_CALLBACK_LISTS:
        current = getattr(litellm, name, None)
        if isinstance(current, list):
            current[:] = [c for c in current if c is not logger]


def _unregister() -> None:
    turnledger.uninstall(_timed)
    forget_logger(_noop)


async def _take_up(arm: str) -> None:
    """One untimed call (logged) right after registering: LiteLLM takes a new logger up on the next call."""
    if arm != "without":
        await _call()
        await _logging_idle()


async def _block(turns: int, arm: str) -> tuple[float, float, float]:
    """Seconds per call: wall clock, this process's CPU time (what other processes on a shared
    machine cannot inflate), and the part of it spent in this thread, the event loop's."""
    start, start_cpu, start_loop = time.perf_counter(), time.process_time(), time.thread_time()
    if arm in ("without", "no-op logger"):
        for _ in range(3 * turns):
            await _call()
    elif arm == "callback":
        async with turnledger.scoped_turn(user_id="bench"):
            for _ in range(3 * turns):
                await _call()
    else:
        for _ in range(turns):
            async with turnledger.scoped_turn(user_id="bench"):
                for _ in range(3):
                    await _call()
    await _logging_idle()
    calls = 3 * turns
    return (
        (time.perf_counter() - start) / calls,
        (time.process_time() - start_cpu) / calls,
        (time.thread_time() - start_loop) / calls,
    )


def _paired(per_call: dict[str, list[float]], arm: str, base: str) -> tuple[list[float], list[float]]:
    deltas = [a - b for a, b in zip(per_call[arm], per_call[base], strict=True)]
    return deltas, [d / b for d, b in zip(deltas, per_call[base], strict=True)]


def _ratios(ratios: list[float]) -> str:
    return f"min {min(ratios):+.2%}  median {statistics.median(ratios):+.2%}  max {max(ratios):+.2%}"


def _median_interval(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95% bootstrap interval of the median: how far the judged figure could move on a rerun."""
    rnd = random.Random(0)
    medians = sorted(statistics.median(rnd.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def _of_medians(per_call: dict[str, list[float]], arm: str, base: str) -> str:
    return f"{statistics.median(per_call[arm]) / statistics.median(per_call[base]) - 1:+.2%}"


class _GcTally:
    """Garbage collections during the timed blocks, by arm: how many of each generation, and their time."""

    def __init__(self) -> None:
        self.arm: str | None = None
        self.counts: dict[str, list[int]] = {}
        self.seconds: dict[str, float] = {}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if self.arm is None:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.counts.setdefault(self.arm, [0, 0, 0])[info["generation"]] += 1
        self.seconds[self.arm] = self.seconds.get(self.arm, 0.0) + time.perf_counter() - self._started


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The heap as it is now left out of every collection until the block ends.

    Each timed block starts after a full collection (no garbage of the block before in it). LiteLLM's heap,
    some 370,000 objects, made that 186 ms a block, several times the block itself; frozen, the collections
    see only what was made since. Collections inside the blocks (young ones) are the same either way.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def litellm_overhead(repeats: int, turns: int) -> None:
    # Warm every path (imports, price map, first-call setup) before anything is timed.
    for arm in ARMS:
        _register(arm)
        await _block(5, arm)
        _unregister()

    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    loop_cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    tally = _GcTally()
    gc.callbacks.append(tally)
    in_situ: list[float] = []
    in_situ_pre: list[float] = []
    in_situ_read: list[float] = []
    with frozen_heap():
        for i in range(repeats):
            # Rotate which arm goes first so a drifting machine favours none.
            shift = i % len(ARMS)
            for arm in ARMS[shift:] + ARMS[:shift]:
                _register(arm)
                await _take_up(arm)
                gc.collect()
                _timed.spent, _timed.pre_spent, _timed.read_spent, _timed.events = 0.0, 0.0, 0.0, 0
                tally.arm = arm
                w, c, lc = await _block(turns, arm)
                tally.arm = None
                wall[arm].append(w)
                cpu[arm].append(c)
                loop_cpu[arm].append(lc)
                if arm == "callback":
                    # An event of the previous block may land in this one: time per event, not per block.
                    if _timed.events < 3 * turns:
                        raise RuntimeError(f"callback saw {_timed.events} events, expected {3 * turns}")
                    in_situ.append(_timed.spent / _timed.events)
                    in_situ_pre.append(_timed.pre_spent / _timed.events)
                    in_situ_read.append(_timed.read_spent / _timed.events)
                _unregister()
    print(f"LiteLLM acompletion(mock_response), {repeats} interleaved rounds x {3 * turns} calls per arm")
    for clock, per_call in (("wall clock", wall), ("process CPU", cpu)):
        print(f" {clock}:")
        for arm in ARMS:
            print(f"  {arm:<16} per call: {fmt(per_call[arm], 'ms', 1e3)}")
        for arm, base, note in (
            ("no-op logger", "without", "LiteLLM's own logging work, switched on by any logger"),
            ("callback", "no-op logger", "turnledger's callback itself, on top of that"),
            ("scope per turn", "callback", "a scope per 3-call turn, its exit waiting for LiteLLM's worker"),
        ):
            deltas, ratios = _paired(per_call, arm, base)
            low, high = _median_interval(ratios)
            # LiteLLM's share (the floor: what it does for any logger) and turnledger's own are each
            # judged as the whole is, in CPU time.
            judged = (
                f" -> against 1%: {interval_verdict(low, high, TARGET_SHARE)}"
                if clock == "process CPU" and arm != "scope per turn"
                else ""
            )
            print(f"  {arm} - {base} per call (paired): {fmt(deltas, 'us', 1e6)}  [{note}]")
            print(
                f"      as a share of {base}: {_ratios(ratios)}   (95% interval of the median {low:+.2%} .. "
                f"{high:+.2%}; ratio of the medians: {_of_medians(per_call, arm, base)}){judged}"
            )
        _, ratios = _paired(per_call, "callback", "without")
        of_medians = _of_medians(per_call, "callback", "without")
        if clock == "process CPU":
            low, high = _median_interval(ratios)
            print(
                f"  JUDGED (callback - without) / without, CPU: {_ratios(ratios)}   target < 1% -> "
                f"{interval_verdict(low, high, TARGET_SHARE)}"
                f"   (95% interval of the median {low:+.2%} .. {high:+.2%}; ratio of the medians: {of_medians})"
            )
        else:
            print(f"  (callback - without) / without, wall: {_ratios(ratios)}   (ratio of the medians: {of_medians})")
    gc.callbacks.remove(tally)
    print(" where (callback - no-op logger) goes, process CPU per call (paired):")
    # acompletion runs LiteLLM's completion() in an executor thread, and the pre-call hook with it; the
    # success hook, the reading of events and the scope run on the event loop's thread.
    other = {arm: [c - lc for c, lc in zip(cpu[arm], loop_cpu[arm], strict=True)] for arm in ARMS}
    for name, per_call in (("the event loop's thread", loop_cpu), ("LiteLLM's executor threads", other)):
        deltas, _ = _paired(per_call, "callback", "no-op logger")
        low, high = _median_interval(deltas)
        own = statistics.median(per_call["no-op logger"]) * 1e6
        print(
            f"  {name:<27} median {statistics.median(deltas) * 1e6:+8.2f} us   (95% interval of the median "
            f"{low * 1e6:+.2f} .. {high * 1e6:+.2f} us; the no-op logger arm's: {own:.0f} us)"
        )
    calls = repeats * 3 * turns
    print(f" garbage collections in the timed blocks, per arm ({calls} calls each): gen0/gen1/gen2, time per call")
    for arm in ARMS:
        counts = tally.counts.get(arm, [0, 0, 0])
        print(f"  {arm:<16} {counts[0]}/{counts[1]}/{counts[2]}   {tally.seconds.get(arm, 0.0) / calls * 1e6:.2f} us")
    share = [h / base for h, base in zip(in_situ, cpu["without"], strict=True)]
    print(f" turnledger's own work timed in situ, per call (hooks + reading the event): {fmt(in_situ, 'us', 1e6)}")
    print(f"  of which the pre-call hook:                 {fmt(in_situ_pre, 'us', 1e6)}")
    print(f"  of which reading events into records:       {fmt(in_situ_read, 'us', 1e6)}")
    print(f"  as a share of LiteLLM's per-call CPU without a callback: {_ratios(share)}")


class _Recorder(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.pre: tuple[Any, Any, dict[str, Any]] | None = None
        self.success: tuple[dict[str, Any], Any, Any, Any] | None = None

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self.pre = (model, messages, kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self.success = (kwargs, response_obj, start_time, end_time)


async def _record_event() -> _Recorder:
    recorder = _Recorder()
    litellm.callbacks.append(recorder)
    try:
        await _call()
        for _ in range(1000):
            if recorder.success is not None:
                break
            await asyncio.sleep(0.001)
    finally:
        litellm.callbacks.remove(recorder)
        for name in ("success_callback", "_async_success_callback", "input_callback", "failure_callback"):
            current = getattr(litellm, name, None)
            if isinstance(current, list):
                current[:] = [c for c in current if c is not recorder]
    if recorder.pre is None or recorder.success is None:
        raise RuntimeError("LiteLLM did not deliver the events to record")
    return recorder


async def callback_per_event(repeats: int, events: int) -> None:
    recorder = await _record_event()
    assert recorder.pre is not None and recorder.success is not None
    model, messages, pre_kwargs = recorder.pre
    kwargs, response_obj, start_time, end_time = recorder.success
    cb = turnledger.TokenTrackingCallback(name="bench-direct")

    pre_times: list[float] = []
    end_times: list[float] = []
    for _ in range(repeats):
        # Distinct call ids, prepared outside the timing, so no event is short-cut as a duplicate.
        ids = [f"bench-{i}-{time.monotonic_ns()}" for i in range(events)]
        pre_args = [{**pre_kwargs, "litellm_call_id": cid} for cid in ids]
        end_args = [{**kwargs, "litellm_call_id": cid} for cid in ids]
        turn = TurnTokenAccumulator(user_id="bench")
        turn._activate()
        try:
            gc.collect()
            t0 = time.perf_counter()
            for a in pre_args:
                cb.log_pre_api_call(model, messages, a)
            t1 = time.perf_counter()
            # LiteLLM hands the end event the very details the pre-call hook marked with the call's turn.
            for pre, end in zip(pre_args, end_args, strict=True):
                end[_TURN_OF_CALL] = pre[_TURN_OF_CALL]
            t_end = time.perf_counter()
            for a in end_args:
                await cb.async_log_success_event(a, response_obj, start_time, end_time)
            # The turn reads events into records in batches; the last, partial one when it is read.
            len(turn.calls)
            t2 = time.perf_counter()
        finally:
            turn._deactivate()
        if len(turn.calls) != events:
            raise RuntimeError(f"expected {events} records, got {len(turn.calls)}")
        pre_times.append((t1 - t0) / events)
        end_times.append((t2 - t_end) / events)
    sample = copy.copy(turn.calls[0])
    stages = _stage_times(cb, kwargs, response_obj, start_time, end_time, events)
    totals = [p + e for p, e in zip(pre_times, end_times, strict=True)]
    print(f"TokenTrackingCallback hooks called directly, recorded real event, {repeats} repeats x {events} events")
    print(f"  (sample record: {sample.prompt_tokens}+{sample.completion_tokens} tokens, cost {sample.cost_usd})")
    print(f"  log_pre_api_call         per event: {fmt(pre_times, 'us', 1e6)}")
    print(f"  async_log_success_event  per event: {fmt(end_times, 'us', 1e6)}")
    median_total = statistics.median(totals) * 1e6
    print(
        f"  JUDGED both hooks per call: {fmt(totals, 'us', 1e6)}"
        f"   target < 25 us -> {'PASS' if median_total < 25 else 'OVER'}"
    )
    print("  the success hook's stages, each timed alone with the same event (median of 5, us/event):")
    for name, us in stages.items():
        print(f"    {name:<64} {us:7.2f} us")


def _stage_times(
    cb: turnledger.TokenTrackingCallback, kwargs: dict[str, Any], response_obj: Any, start: Any, end: Any, n: int
) -> dict[str, float]:
    """Where the success hook's time goes: its stages called alone, as ``build_record`` calls them."""
    from turnledger import callback as cbm
    from turnledger.pricing import estimate_missing_usage, price_call
    from turnledger.request_ids import response_request_id
    from turnledger.usage import normalize_usage, usage_counts

    model = kwargs.get("model")
    provider = kwargs.get("custom_llm_provider")
    pricing_kw: dict[str, Any] = {
        "model": model,
        "provider": provider,
        "call_kind": cbm.call_kind_of(kwargs.get("call_type")),
        "price_table": None,
    }
    counts = normalize_usage(response_obj)
    turn = TurnTokenAccumulator()
    record = cb.build_record(kwargs, response_obj, start, end, turnledger.CallStatus.SUCCESS, turn)
    keys = [(f"k{i}", "success", "") for i in range(n)]
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    # The turn as the pre-call hook leaves it in LiteLLM's details of a call.
    marked = {**kwargs, cbm._TURN_OF_CALL: turn._weak_self}
    stages: dict[str, Callable[[int], object]] = {
        "usage_counts (usage.py)": lambda i: usage_counts(response_obj),
        "estimate_missing_usage (pricing.py)": lambda i: estimate_missing_usage(
            kwargs, response_obj, counts, **pricing_kw
        ),
        "price_call (pricing.py)": lambda i: price_call(kwargs, response_obj, counts, **pricing_kw),
        "response_request_id (request_ids.py) + 3x _utc (callback.py)": lambda i: (
            response_request_id(response_obj),
            cbm._utc(start),
            cbm._utc(end),
            cbm._utc(kwargs.get("completion_start_time")),
        ),
        "TokenCallRecord(...) construction (records.py)": lambda i: turnledger.TokenCallRecord(**fields),
        "record_from_fields(...), a draft filled and sealed (records.py)": lambda i: record_from_fields(**fields),
        "build_record, whole (callback.py)": lambda i: cb.build_record(
            kwargs, response_obj, start, end, turnledger.CallStatus.SUCCESS, turn
        ),
        "_turn_of_call, a call its pre-call hook marked (callback.py)": lambda i: cbm._turn_of_call(marked, "m"),
        "turn.add, dedup + dispatch (accumulator.py)": lambda i: turn.add(record, event_key=keys[i]),
    }
    out: dict[str, float] = {}
    for name, fn in stages.items():
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            runs.append((time.perf_counter() - t0) / n * 1e6)
        out[name] = statistics.median(runs)
    return out


# The helpers build_record calls, each wrapped with a timer. build_record does the usual case of
# several in place (price_call's float response_cost, _utc, call_kind_of, _ms_between...): those show
# only the events that fell back to them, and the rest of their time is in build_record's own line.
_IN_SITU_STAGES = (
    "usage_counts",
    "estimate_missing_usage",
    "price_call",
    "response_request_id",
    "_utc",
    "_metadata",
    "call_kind_of",
    "_ms_between",
)


async def in_situ_stages(turns: int) -> None:
    """The success hook's stages as LiteLLM really calls the hook: the callback module's helpers are
    wrapped with timers for one block, then restored. ``build_record`` is the reading of an event into
    its record; the rest of the success hook is the turn's lookup, keeping the event, and counting."""
    from turnledger import callback as cbm

    spent: dict[str, float] = dict.fromkeys((*_IN_SITU_STAGES, "build_record (all of the above)"), 0.0)
    originals = {name: getattr(cbm, name) for name in _IN_SITU_STAGES}
    original_build = cbm.TokenTrackingCallback.build_record

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return wrapper

    for name, fn in originals.items():
        setattr(cbm, name, timed(name, fn))
    cbm.TokenTrackingCallback.build_record = timed("build_record (all of the above)", original_build)  # type: ignore[method-assign]
    _register("callback")
    try:
        await _block(5, "callback")
        for name in spent:
            spent[name] = 0.0
        _timed.spent, _timed.pre_spent, _timed.read_spent, _timed.events = 0.0, 0.0, 0.0, 0
        await _block(turns, "callback")
    finally:
        _unregister()
        for name, fn in originals.items():
            setattr(cbm, name, fn)
        cbm.TokenTrackingCallback.build_record = original_build  # type: ignore[method-assign]
    n = _timed.events
    print(f"The hooks in situ, {n} events, stages timed by wrapping them (adds ~1 us per wrapped call):")
    print(
        f"  all of it {_timed.spent / n * 1e6:7.2f} us/call: pre-call hook {_timed.pre_spent / n * 1e6:.2f} us, "
        f"reading the event {_timed.read_spent / n * 1e6:.2f} us"
    )
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<28} {seconds / n * 1e6:7.2f} us/event")
    rest = _timed.spent - _timed.pre_spent - _timed.read_spent
    note = "(turn lookup, keeping the event, counting)"
    print(f"    {'rest of the success hook':<28} {rest / n * 1e6:7.2f} us/event  {note}")


async def reading_by_batch_position(turns: int) -> None:
    """Why reading in situ costs more than reading directly: a turn reads its deferred events in a
    batch, and the batch's first event is read with the caches cold from LiteLLM's own work, the rest
    with them warm. Each event's reading timed by its position in its batch (this thread's CPU time)."""
    from turnledger import accumulator as accm
    from turnledger import callback as cbm

    by_position: dict[int, list[float]] = {}
    position = [0]
    original_read = accm.TurnTokenAccumulator._read_deferred_locked
    original_build = cbm._EndEvent.build

    def read(self: TurnTokenAccumulator) -> None:
        position[0] = 0
        original_read(self)

    def build(self: Any, turn: TurnTokenAccumulator) -> turnledger.TokenCallRecord:
        t0 = time.thread_time()
        try:
            return original_build(self, turn)
        finally:
            by_position.setdefault(position[0], []).append(time.thread_time() - t0)
            position[0] += 1

    accm.TurnTokenAccumulator._read_deferred_locked = read  # type: ignore[method-assign]
    cbm._EndEvent.build = build  # type: ignore[method-assign]
    _register("callback")
    try:
        await _block(5, "callback")
        by_position.clear()
        await _block(turns, "callback")
    finally:
        _unregister()
        accm.TurnTokenAccumulator._read_deferred_locked = original_read  # type: ignore[method-assign]
        cbm._EndEvent.build = original_build  # type: ignore[method-assign]
    print(f"Reading an event in situ by its position in its batch ({3 * turns} events, thread CPU, median us):")
    print("  " + "  ".join(f"#{i + 1} {statistics.median(v) * 1e6:.1f}" for i, v in sorted(by_position.items())))


async def _main() -> None:
    repeats = _env_int("BENCH_CAPTURE_REPEATS", 30)
    turns = _env_int("BENCH_CAPTURE_TURNS", 5)
    await litellm_overhead(_env_int("BENCH_CAPTURE_ROUNDS", 1000), turns)
    print()
    await in_situ_stages(200)
    print()
    await reading_by_batch_position(200)
    print()
    await callback_per_event(repeats, _env_int("BENCH_CAPTURE_EVENTS", 2000))


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()

"""The floor under the capture target: what LiteLLM itself spends per call once any logger is registered.

The capture target (bench/capture_bench.py) is under 1% of LiteLLM's per-call time. Any ``CustomLogger``
switches on some of LiteLLM's own logging work, whatever the logger then does. This bench measures that
share alone, with more rounds than capture_bench gives it, so the figure the 1% is judged against has a
tight interval.

What that share is, counted in instructions (callgrind, LiteLLM 1.106.12, commit 19c623c, 60 mock
``acompletion`` calls per run, 30 for parts; parts counted with collection switched on only inside each function):
``without`` 8,178,000 per call (two runs, 1,600 apart), the no-op logger +118,000 (1.4%). LiteLLM runs
its async success handler, its cost calculation and the standard logging payload with no logger at all
(939,500 of the 8,178,000 are that handler); a logger adds only the work LiteLLM does per logger:
- delivering the async success event to it (the loop over ``_async_success_callback``: redaction
  helpers, ``async_logging_hook``, ``should_run_callback``, an import, the hook): 42,000;
- ``function_setup``'s per-call pass over ``input_callback``, ``success_callback`` and
  ``failure_callback``: 35,200 (``is_async_callable``, 5,500 each; ``callback in
  litellm._known_custom_logger_compatible_callbacks``, 55 names, in the success and failure passes:
  9,000 each, measured alone);
- a logger in ``litellm.callbacks``: its promotion into the five lists on every call (10,100), the
  deployment hooks and the agentic-loop gate awaited for it (6,400);
- ``pre_call``'s loop over ``input_callback``: 2,600;
- the sync success handler for async calls: 200. LiteLLM never submits it to its thread pool for a
  ``CustomLogger`` (``_remove_internal_custom_logger_callbacks``), whether or not it overrides
  ``log_success_event`` (a logger that does: 6,300 over the no-op, whose two runs were 4,900 apart).
The remaining 21,500 are outside these functions, not attributed.
turnledger needs all five lists: ``input_callback`` binds a call to its turn, the sync lists carry sync
calls and sync streams, the async lists async ones. Registered in those five lists directly, not
in ``litellm.callbacks``, it costs LiteLLM 21,100 less per call (8,389,600 -> 8,368,500). ``install``
keeps ``litellm.callbacks`` even so: LiteLLM promotes its entries again on every call, which is what
keeps turnledger registered after ``Router.reset()`` (it empties the success and failure lists) or an
application's ``litellm.success_callback = [...]``. Registered by lists alone, the calls of a turn after
``Router.reset()`` were recorded ``abandoned``, their end events lost (measured).

Arms, interleaved block by block exactly as in capture_bench (same call, same idle wait, arm order rotating):
- ``without``: no logger;
- ``no-op logger``: a logger whose hook returns at once;
- ``minimal recorder``: a logger that keeps what the least possible capture would keep (call id, two
  token counts, LiteLLM's float cost) in a list: no turn, no pricing, no flags. What any logger that
  records usage per call costs at the very least.
Each round gives one paired ratio per arm against ``without``; printed: their median, its 95% bootstrap
interval, min/max, in this process's CPU time and in wall-clock time; in CPU time, each judged against
the 1% target by that interval (``bench._verdicts.interval_verdict``).

Size knobs: ``BENCH_FLOOR_ROUNDS`` (default 1000, some 1.6 minutes), ``BENCH_FLOOR_TURNS`` (3-call turns per
block, default 5).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.integrations.custom_logger import CustomLogger

from bench._verdicts import TARGET_SHARE, interval_verdict
from bench.capture_bench import (
    _call,
    _logging_idle,
    _median_interval,
    _noop,
    _ratios,
    fmt,
    forget_logger,
    frozen_heap,
)

ARMS = ("without", "no-op logger", "minimal recorder")


class _MinimalRecorder(CustomLogger):
    """The least a per-call usage logger can do: read two counts and the cost, keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[Any, Any, Any, Any]] = []

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        usage = getattr(response_obj, "usage", None)
        self.kept.append(
            (
                kwargs.get("litellm_call_id"),
                getattr(usage, "prompt_tokens", None),
                getattr(usage, "completion_tokens", None),
                kwargs.get("response_cost"),
            )
        )


_recorder = _MinimalRecorder()


def _logger_of(arm: str) -> CustomLogger | None:
    return {"no-op logger": _noop, "minimal recorder": _recorder}.get(arm)


async def _block(calls: int) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await _call()
    await _logging_idle()
    return (time.perf_counter() - start) / calls, (time.process_time() - start_cpu) / calls


async def _run(rounds: int, turns: int) -> None:
    calls = 3 * turns
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for arm in ARMS:  # warm every path before anything is timed
        logger = _logger_of(arm)
        if logger is not None:
            litellm.callbacks.append(logger)
        await _block(calls)
        if logger is not None:
            forget_logger(logger)
    with frozen_heap():
        for i in range(rounds):
            shift = i % len(ARMS)
            for arm in ARMS[shift:] + ARMS[:shift]:
                logger = _logger_of(arm)
                if logger is not None:
                    litellm.callbacks.append(logger)
                    await _call()  # LiteLLM takes a newly registered logger up on the next call: untimed
                    await _logging_idle()
                gc.collect()
                w, c = await _block(calls)
                wall[arm].append(w)
                cpu[arm].append(c)
                if logger is not None:
                    forget_logger(logger)
            _recorder.kept.clear()
    print(f"LiteLLM acompletion(mock_response), {rounds} interleaved rounds x {calls} calls per arm")
    for clock, per_call in (("process CPU", cpu), ("wall clock", wall)):
        print(f" {clock}:")
        for arm in ARMS:
            print(f"  {arm:<17} per call: {fmt(per_call[arm], 'ms', 1e3)}")
        for arm in ARMS[1:]:
            deltas = [a - b for a, b in zip(per_call[arm], per_call["without"], strict=True)]
            ratios = [d / b for d, b in zip(deltas, per_call["without"], strict=True)]
            low, high = _median_interval(ratios)
            print(f"  {arm} - without per call (paired): {fmt(deltas, 'us', 1e6)}")
            of_medians = statistics.median(per_call[arm]) / statistics.median(per_call["without"]) - 1
            print(
                f"      as a share of without: {_ratios(ratios)}   (95% interval of the median {low:+.2%} .. "
                f"{high:+.2%}; ratio of the medians: {of_medians:+.2%})"
            )
            if clock == "process CPU":
                print(f"      -> against 1%: {interval_verdict(low, high, TARGET_SHARE)}")


def main() -> None:
    asyncio.run(_run(int(os.environ.get("BENCH_FLOOR_ROUNDS", 1000)), int(os.environ.get("BENCH_FLOOR_TURNS", 5))))


if __name__ == "__main__":
    main()

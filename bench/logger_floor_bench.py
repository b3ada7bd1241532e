"""The floor under the capture target: what LiteLLM itself spends per call once any logger is registered.

The capture target (bench/capture_bench.py) is under 1% of LiteLLM's per-call time. Any ``CustomLogger``
switches on LiteLLM's own logging work (the logging worker, the standard logging payload, its cost
calculation), whatever the logger then does. This bench measures that share alone, with more rounds
than capture_bench gives it, so the figure the 1% is judged against has a tight interval. Arms,
interleaved block by block exactly as in capture_bench (same call, same idle wait, arm order rotating):
- ``without``: no logger;
- ``no-op logger``: a logger whose hook returns at once;
- ``minimal recorder``: a logger that keeps what the least possible capture would keep (call id, two
  token counts, LiteLLM's float cost) in a list: no turn, no pricing, no flags. What any logger that
  records usage per call costs at the very least.
Each round gives one paired ratio per arm against ``without``; printed: their median, its 95% bootstrap
interval, min/max, in this process's CPU time and in wall-clock time.

Size knobs: ``BENCH_FLOOR_ROUNDS`` (default 200), ``BENCH_FLOOR_TURNS`` (3-call turns per block, default 5).
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

from bench.capture_bench import _call, _logging_idle, _median_interval, _noop, _ratios, fmt, forget_logger

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


def main() -> None:
    asyncio.run(_run(int(os.environ.get("BENCH_FLOOR_ROUNDS", 200)), int(os.environ.get("BENCH_FLOOR_TURNS", 5))))


if __name__ == "__main__":
    main()

"""What the bounded wait at scope exit costs an ordinary turn, and what skipping it loses.

For turns of three real LiteLLM calls to the local fake provider, measures the time from the
return of the turn's last ``await`` to the end of ``async with scoped_turn(...)``: that is the
latency the wait adds. Sequential turns and 50 concurrent turns, p50 / p99 / max, side by side with
both deadlines at 0 (no wait), whose lost last-calls show why the wait exists.

    python -m bench.scope_exit_bench        (TURNLEDGER_BENCH_TURNS=N to resize)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import litellm

import turnledger
from turnledger.fake_provider import FakeProvider

MESSAGES: Any = [{"role": "user", "content": "hello"}]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _turn(kwargs: dict[str, Any], settle_timeout: float | None) -> tuple[float, int, int]:
    """(exit wait ms, calls in the turn, calls that arrived late). ``None``: the default deadlines."""
    turn = turnledger.TurnTokenAccumulator()
    if settle_timeout is not None:
        turn.settle_timeout = turn.logging_timeout = settle_timeout
    async with turnledger.scoped_turn(turn=turn):
        for _ in range(3):
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **kwargs)
        before_exit = time.perf_counter()
    wait_ms = (time.perf_counter() - before_exit) * 1000
    succeeded = sum(1 for r in turn.calls if r.status is turnledger.CallStatus.SUCCESS)
    return wait_ms, succeeded, len(turn.late_calls)


async def _run(kwargs: dict[str, Any], turns: int, concurrency: int, settle_timeout: float | None) -> dict[str, float]:
    waits: list[float] = []
    captured = 0
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal captured
        async with semaphore:
            wait_ms, ok, _late = await _turn(kwargs, settle_timeout)
            waits.append(wait_ms)
            captured += ok

    await asyncio.gather(*(one() for _ in range(turns)))
    await asyncio.sleep(0.2)  # let late events land before the next configuration runs
    return {
        "p50": statistics.median(waits),
        "p99": _pct(waits, 0.99),
        "max": max(waits),
        "captured": captured,
        "expected": turns * 3,
    }


async def _main() -> None:
    turns = int(os.environ.get("TURNLEDGER_BENCH_TURNS", "300"))
    with FakeProvider() as provider:
        kwargs = {"api_base": provider.base_url, "api_key": "sk-bench"}
        turnledger.install()
        await _run(kwargs, 20, 5, None)  # warm-up: LiteLLM's first calls are slow
        print(f"{turns} turns x 3 calls each; exit wait = last await returned -> scope exited")
        print(f"{'mode':<34}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'calls kept in turn':>22}")
        for concurrency in (1, 50):
            for label, timeout in (("wait (default deadlines)", None), ("no wait (both deadlines 0)", 0.0)):
                r = await _run(kwargs, turns, concurrency, timeout)
                name = f"{label}, conc={concurrency}"
                kept = f"{int(r['captured'])}/{int(r['expected'])}"
                print(f"{name:<34}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['max']:>9.2f}{kept:>22}")
        turnledger.uninstall()


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()

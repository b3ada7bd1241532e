"""The cost engine's own time per event: usage normalization + the cost chain, per path.

Each path is timed on a realistic LiteLLM object (built in-process, no network):

- ``response_cost``: the usual event, LiteLLM priced it (stops at stage 2).
- ``anthropic cache``: a folded Anthropic usage with cache read and 5m/1h writes, LiteLLM priced it.
- ``provider inline``: OpenRouter's ``usage.cost`` (stage 1).
- ``price_table``: a model LiteLLM does not know (its stages 4-5 fail), priced by the user's table.
- ``missing usage``: a stream that reported 0 tokens, estimated with ``litellm.token_counter``.

Judged: the median per-event time of the ``response_cost`` path through ``build_record`` (usage +
pricing + record), target < 25 us of our own time per event; the other paths are reported for what
they cost when they happen. Size knobs: ``BENCH_COST_REPEATS`` (default 9), ``BENCH_COST_EVENTS``
(events per repeat, default 2000; the slow paths use a tenth).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.types.utils import ModelResponse, Usage

import turnledger
from turnledger.pricing import price_call
from turnledger.records import CallStatus
from turnledger.usage import normalize_usage


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def _response(model: str, content: str = "Hello there.", **usage: Any) -> ModelResponse:
    return ModelResponse(
        model=model, choices=[{"message": {"role": "assistant", "content": content}}], usage=Usage(**usage)
    )


def _kwargs(model: str, provider: str, response_cost: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "custom_llm_provider": provider,
        "call_type": "acompletion",
        "litellm_call_id": "bench-call",
        "response_cost": response_cost,
        "stream": False,
        "messages": [{"role": "user", "content": "Say hello."}],
        **extra,
    }


def _paths() -> dict[str, tuple[dict[str, Any], ModelResponse]]:
    return {
        "response_cost": (
            _kwargs("gpt-4o-mini", "openai", 1.35e-05),
            _response("gpt-4o-mini", prompt_tokens=10, completion_tokens=20, total_tokens=30),
        ),
        "anthropic cache": (
            _kwargs("claude-sonnet-4-5-20250929", "anthropic", 0.0027),
            _response(
                "claude-sonnet-4-5-20250929",
                prompt_tokens=1400,
                completion_tokens=50,
                total_tokens=1450,
                prompt_tokens_details={
                    "cached_tokens": 1000,
                    "cache_creation_tokens": 300,
                    "cache_creation_token_details": {
                        "ephemeral_5m_input_tokens": 200,
                        "ephemeral_1h_input_tokens": 100,
                    },
                },
                cache_read_input_tokens=1000,
                cache_creation_input_tokens=300,
            ),
        ),
        "provider inline": (
            _kwargs("openai/gpt-4o-mini", "openrouter", 0.00027),
            _response("openai/gpt-4o-mini", prompt_tokens=1000, completion_tokens=200, total_tokens=1200, cost=0.00027),
        ),
        "price_table": (
            _kwargs("acme-7b", "openai", None),
            _response("acme-7b", prompt_tokens=100, completion_tokens=20, total_tokens=120),
        ),
        "missing usage": (
            _kwargs("gpt-4o-mini", "openai", 0.0, stream=True),
            _response("gpt-4o-mini", "Hello from the fake provider.", prompt_tokens=0, completion_tokens=0),
        ),
    }


def _fmt(values: list[float]) -> str:
    us = [v * 1e6 for v in values]
    return f"min {min(us):8.2f} us   median {statistics.median(us):8.2f} us   max {max(us):8.2f} us   (n={len(us)})"


def _time(fn: Callable[[], object], events: int, repeats: int) -> list[float]:
    fn()  # warm caches (tokenizer load, LiteLLM lookups) outside the timing
    out: list[float] = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(events):
            fn()
        out.append((time.perf_counter() - t0) / events)
    return out


def main() -> None:
    repeats = _env_int("BENCH_COST_REPEATS", 9)
    events = _env_int("BENCH_COST_EVENTS", 2000)
    table = turnledger.PriceTable(
        {"acme-7b": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}}
    )
    cb = turnledger.TokenTrackingCallback(name="bench-cost", price_table=table)
    start, end = datetime(2026, 1, 1, 12, 0, 0), datetime(2026, 1, 1, 12, 0, 1)
    print(f"TokenTrackingCallback.build_record per event (usage + cost chain + record), {repeats} repeats")
    judged: list[float] = []
    for name, (kwargs, response) in _paths().items():
        n = events if name in ("response_cost", "anthropic cache", "provider inline") else max(1, events // 10)

        def run(kwargs: dict[str, Any] = kwargs, response: ModelResponse = response) -> object:
            return cb.build_record(kwargs, response, start, end, CallStatus.SUCCESS, None)

        sample = run()
        assert not isinstance(sample, BaseException)
        times = _time(run, n, repeats)
        record = cb.build_record(kwargs, response, start, end, CallStatus.SUCCESS, None)
        print(f"  {name:16} {_fmt(times)}   -> {record.cost_usd} via {record.cost_source}")
        if name == "response_cost":
            judged = times
    kwargs, response = _paths()["response_cost"]
    counts = normalize_usage(response)
    engine = [
        a + b
        for a, b in zip(
            _time(lambda: normalize_usage(response), events, repeats),
            _time(
                lambda: price_call(kwargs, response, counts, model="gpt-4o-mini", provider="openai"), events, repeats
            ),
            strict=True,
        )
    ]
    print(f"  of which normalize_usage + price_call (the cost engine alone): {_fmt(engine)}")
    median = statistics.median(judged) * 1e6
    print(
        f"  JUDGED response_cost path per event: median {median:.2f} us   target < 25 us -> "
        f"{'PASS' if median < 25 else 'OVER'}"
    )


if __name__ == "__main__":
    main()

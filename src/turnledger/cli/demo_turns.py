"""The demo's turns: realistic LiteLLM traffic against the local fake provider, captured for real.

Every call goes through LiteLLM's own HTTP client, streaming and logging code; only the far end is
the package's :class:`~turnledger.fake_provider.FakeProvider`, scripted here with the token counts
a real provider would report. No key leaves the machine: the one passed is a placeholder.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import litellm

from turnledger.accumulator import TurnTokenAccumulator, scoped_turn
from turnledger.fake_provider import FakeProvider

PLACEHOLDER_KEY = "sk-demo-not-a-real-key"

BROKEN_STREAM_SETTLE_S = 0.3
"""How long the broken-off stream's turn waits for an end event LiteLLM will never send."""

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_CALL: dict[str, Any] = {
    "id": "call_weather_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Lisbon"})},
}

UNKNOWN_MODEL = "acme-llm-7b"
"""A model no price list knows: its call is recorded as unpriced, never as $0."""


@dataclass(frozen=True, slots=True)
class DemoTurn:
    title: str
    """What the turn shows."""
    usage_type: str
    turn: TurnTokenAccumulator
    created_at: datetime | None = None
    """Recorded as happening then (history); ``None``: when the turn opened."""


@dataclass(frozen=True, slots=True)
class _Scene:
    title: str
    usage_type: str
    labels: dict[str, Any]
    run: Callable[[FakeProvider, dict[str, Any]], Awaitable[None]]


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def chat_with_tool_use(fake: FakeProvider, kw: dict[str, Any]) -> None:
    """The model asks for a tool; the app runs it and sends the result back for the answer."""
    fake.script(
        "gpt-4o-mini",
        tool_calls=[WEATHER_CALL],
        usage={"prompt_tokens": 182, "completion_tokens": 21, "total_tokens": 203},
    )
    messages = _user("What should I wear in Lisbon today?")
    first = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],
        # LiteLLM 1.106 imports its MCP gateway (the optional `mcp` package) whenever `tools` is
        # passed; this skips that gateway for plain function tools.
        _skip_mcp_handler=True,
        **kw,
    )
    tool_call = first.choices[0].message.tool_calls[0]
    fake.script(
        "gpt-4o-mini",
        content="It is 21°C and sunny in Lisbon: a light shirt and sunglasses will do.",
        usage={"prompt_tokens": 236, "completion_tokens": 18, "total_tokens": 254},
    )
    await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=[
            *messages,
            first.choices[0].message.model_dump(),
            {"role": "tool", "tool_call_id": tool_call.id, "content": json.dumps({"temp_c": 21, "sky": "sunny"})},
        ],
        tools=[WEATHER_TOOL],
        _skip_mcp_handler=True,
        **kw,
    )


async def streamed_answer(fake: FakeProvider, kw: dict[str, Any]) -> None:
    fake.script(
        "gpt-4o",
        content="Tides follow the moon: its pull raises a bulge of water on the near and far sides of the Earth.",
        usage={"prompt_tokens": 412, "completion_tokens": 96, "total_tokens": 508},
    )
    stream = await litellm.acompletion(
        model="openai/gpt-4o",
        messages=_user("Why are there two tides a day?"),
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    )
    async for _chunk in stream:
        pass


async def embedding_batch(fake: FakeProvider, kw: dict[str, Any]) -> None:
    fake.script("text-embedding-3-small", usage={"prompt_tokens": 1536, "total_tokens": 1536})
    documents = [f"Knowledge-base article {i}: returns, refunds and shipping." for i in range(16)]
    await litellm.aembedding(model="openai/text-embedding-3-small", input=documents, **kw)


async def unknown_priced_model(fake: FakeProvider, kw: dict[str, Any]) -> None:
    fake.script(
        UNKNOWN_MODEL,
        content="Bonjour ! Comment puis-je vous aider ?",
        usage={"prompt_tokens": 64, "completion_tokens": 12, "total_tokens": 76},
    )
    await litellm.acompletion(model=f"openai/{UNKNOWN_MODEL}", messages=_user("Say hello in French."), **kw)


async def broken_off_stream(fake: FakeProvider, kw: dict[str, Any]) -> None:
    """The user closes the tab: the app stops reading. LiteLLM logs nothing; the provider bills anyway."""
    fake.script("gpt-4o-mini", content=" ".join(["word"] * 60), chunk_delay_s=0.01)
    stream = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=_user("Write me a long story about a lighthouse keeper."),
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    )
    async for _chunk in stream:
        break


SCENES: tuple[_Scene, ...] = (
    _Scene("Chat with tool use", "chat", {"user_id": "alice", "thread_id": "t-lisbon"}, chat_with_tool_use),
    _Scene("Streamed answer", "chat", {"user_id": "bob", "thread_id": "t-tides"}, streamed_answer),
    _Scene("Embedding batch", "indexing", {"user_id": "alice", "thread_id": "t-kb"}, embedding_batch),
    _Scene("Unknown-priced model", "chat", {"user_id": "carol", "thread_id": "t-hello"}, unknown_priced_model),
    _Scene(
        "Broken-off stream",
        "chat",
        {"user_id": "bob", "thread_id": "t-story", "settle_timeout": BROKEN_STREAM_SETTLE_S},
        broken_off_stream,
    ),
)


async def run_demo_turns(fake: FakeProvider) -> list[DemoTurn]:
    """Run every scene in a turn of its own (the tracker must be installed); the turns come back closed."""
    kw = {"api_base": fake.base_url, "api_key": PLACEHOLDER_KEY}
    out: list[DemoTurn] = []
    for scene in SCENES:
        async with scoped_turn(**scene.labels) as turn:
            await scene.run(fake, kw)
        out.append(DemoTurn(scene.title, scene.usage_type, turn))
    return out


# -- history: a fortnight of ordinary days, so `turnledger chart` has something to draw ----------------

# (model as the app passes it, the usage the provider reports, which fake endpoint)
_HISTORY_CALLS: dict[str, tuple[str, dict[str, int], str]] = {
    "mini": ("openai/gpt-4o-mini", {"prompt_tokens": 900, "completion_tokens": 150, "total_tokens": 1050}, "openai"),
    "4o": ("openai/gpt-4o", {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}, "openai"),
    "sonnet": ("anthropic/claude-sonnet-4-5", {"input_tokens": 1800, "output_tokens": 350}, "anthropic"),
    "embed": ("openai/text-embedding-3-small", {"prompt_tokens": 3000, "total_tokens": 3000}, "openai"),
}


def history_plan(day: date) -> list[tuple[str, list[str]]]:
    """The turns of one past day, ``(user, [call, ...])``: varied by weekday, the same on every run."""
    n = day.toordinal() * 7919  # a cheap scramble of the date, so days differ without randomness
    weekend = day.weekday() >= 5
    alice = ["mini"] * (1 + n % 3) + (["4o"] if n % 5 < 2 else [])
    bob = ["sonnet"] * (0 if weekend else 1 + n % 7 // 3) + ["embed"]
    return [("alice", alice), ("bob", bob)]


async def run_history_turns(fake: FakeProvider, days: list[date]) -> list[DemoTurn]:
    """Real captured calls for each past day; their turn ids and call ids are fixed per day, so a second
    demo run makes the same turns and stores no history twice (recording a turn is idempotent on its id;
    a different turn under a stored id, other call ids included, is refused)."""
    for model, usage, _ in _HISTORY_CALLS.values():
        fake.script(model.split("/", 1)[1], usage=usage)
    bases = {"openai": fake.base_url, "anthropic": fake.anthropic_base_url}

    async def one_turn(day: date, index: int, user: str, calls: list[str]) -> DemoTurn:
        turn_id = f"demo-history-{day.isoformat()}-{index}"
        async with scoped_turn(turn_id=turn_id, user_id=user) as turn:
            for position, name in enumerate(calls):
                model, _, base = _HISTORY_CALLS[name]
                kw = {"api_base": bases[base], "api_key": PLACEHOLDER_KEY, "litellm_call_id": f"{turn_id}-{position}"}
                if name == "embed":
                    await litellm.aembedding(model=model, input=["refund policy", "shipping times"], **kw)
                else:
                    await litellm.acompletion(model=model, messages=_user("Summarise my inbox."), **kw)
        return DemoTurn(f"history {day}", "chat", turn, created_at=datetime.combine(day, time(12), UTC))

    # Concurrent turns, as in a real server: each call still lands in its own turn.
    return list(
        await asyncio.gather(
            *(
                one_turn(day, index, user, calls)
                for day in days
                for index, (user, calls) in enumerate(history_plan(day))
            )
        )
    )


__all__ = ["SCENES", "UNKNOWN_MODEL", "DemoTurn", "history_plan", "run_demo_turns", "run_history_turns"]

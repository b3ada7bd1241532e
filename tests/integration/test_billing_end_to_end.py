"""An operator's billing audit, end to end: what the provider answered against what the reports bill.

Concurrent turns of several users and threads make a seeded mix of LiteLLM calls to the fake provider
(chats with cached tokens, streams, embeddings, image generations, refused calls, a Router that
retries, a model priced by the caller's own PriceTable, a model nobody prices), some opened just
either side of a UTC midnight, one user's turns paid for with credits. Two BatchWriters (two engines,
two outboxes, as two app processes have) write them to the same PostgreSQL schema while reports are
read. Then, from the provider's answers and the prices alone (LiteLLM's bundled map read as JSON, and
the PriceTable's rates): every answer is stored once with its usage, in its own turn; each user's
reported cost is the exact Decimal sum of its calls' costs and its unpriced calls are counted, not
priced at 0; each day holds the turns opened on it; each paid turn's settle debits its recorded cost.
The same rows copied into SQLite give every breakdown to the last digit.

The suite's other differential tests stop halfway: test_capture_differential checks the captured
records against the provider, test_report_differential checks reports against seeded rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.router import Router
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from turnledger import BatchWriter, CreditLedger, ReportBy, TurnTokenAccumulator, make_engine, session_factory
from turnledger.fake_provider import FakeProvider, Script
from turnledger.store import migrate
from turnledger.store.models import TokenUsage, TokenUsageCall

SEED = 20261126
TURNS = 48
USERS = ("u-alice", "u-bob", "u-carol", "u-paid")
PAID = "u-paid"
ESTIMATE = Decimal("0.05")
MIDNIGHTS = (
    datetime(2026, 11, 24, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 25, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
)
OWN_PRICES = {"input_cost_per_token": "0.00000031", "output_cost_per_token": "0.00000137"}
"""The caller's PriceTable entry for acme-llm-7b, which LiteLLM has no price for."""
UNPRICED_MODELS = ("mystery-model-x", "dall-e-3")
"""Nobody prices them: LiteLLM 1.106's bundled map has no OpenAI dall-e-3 entry."""
_PRICES: dict[str, dict[str, Any]] = json.loads(
    (Path(litellm.__file__).parent / "model_prices_and_context_window_backup.json").read_text()
)


def rates(model: str) -> dict[str, Decimal] | None:
    entry: dict[str, Any] | None = OWN_PRICES if model == "acme-llm-7b" else _PRICES.get(model)
    if entry is None or "input_cost_per_token" not in entry:
        return None
    return {k: Decimal(str(v)) for k, v in entry.items() if k.endswith(("_per_token", "_token_cost"))}


def expected_cost(model: str, usage: dict[str, Any]) -> Decimal | None:
    r = rates(model)
    if r is None:
        return None
    prompt: int = usage["prompt_tokens"]
    completion: int = usage.get("completion_tokens", 0)
    cached: int = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    uncached = r["input_cost_per_token"]
    cache_read = r.get("cache_read_input_token_cost", uncached)
    return (prompt - cached) * uncached + cached * cache_read + completion * r.get("output_cost_per_token", Decimal(0))


@dataclass
class Call:
    key: str
    op: str
    options: dict[str, Any]
    turn: TurnTokenAccumulator


class Scenario:
    def __init__(self, provider: FakeProvider) -> None:
        self.rng = random.Random(SEED)
        self.provider = provider
        self.calls: list[Call] = []
        self.turns: list[tuple[TurnTokenAccumulator, list[Call]]] = []
        base = {"api_base": provider.base_url, "api_key": "sk-fake-not-a-real-key", "max_retries": 0}
        deployment = {"model": "openai/gpt-4o-mini", **base}
        self.router = Router(
            model_list=[{"model_name": "main", "litellm_params": dict(deployment)} for _ in "ab"],
            num_retries=2,
            disable_cooldowns=True,
            retry_after=0,
        )
        self.direct = {"api_base": provider.base_url, "api_key": "sk-fake-not-a-real-key", "num_retries": 0}

    def usage(self) -> dict[str, Any]:
        prompt, completion = self.rng.randint(1, 9000), self.rng.randint(1, 3000)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = prompt + completion
        if self.rng.random() < 0.3:
            usage["prompt_tokens_details"] = {"cached_tokens": self.rng.randint(0, prompt)}
        return usage

    def call(self, turn: TurnTokenAccumulator) -> Call:
        r, key = self.rng, f"bill-{len(self.calls)}"
        op = r.choice(("chat", "stream", "embedding", "image", "own_price", "unpriced", "router", "refused"))
        text = f"bill this [[plan:{key}]]"
        options: dict[str, Any] = {"litellm_call_id": key, **self.direct, "max_retries": 0}
        model = {"own_price": "acme-llm-7b", "unpriced": "mystery-model-x"}.get(op, r.choice(("gpt-4o-mini", "gpt-4o")))
        scripts = [Script(usage=self.usage())]
        if op == "router":
            scripts = [Script(status=500)] * r.randint(0, 2) + scripts
            options = {"litellm_call_id": key, "model": "main"}
        elif op == "embedding":
            tokens = r.randint(1, 8000)
            scripts = [Script(usage={"prompt_tokens": tokens, "total_tokens": tokens})]
            options.update(model="openai/text-embedding-3-small", input=[text])
        elif op == "image":
            scripts = [Script()]
            options.update(model="openai/dall-e-3", prompt=text)
        else:
            options["model"] = f"openai/{model}"
            if op == "refused":
                scripts = [Script(status=500)]
            if op in ("stream", "own_price"):
                options.update(stream=True, stream_options={"include_usage": True})
        if "input" not in options and "prompt" not in options:
            options["messages"] = [{"role": "user", "content": text}]
        self.provider.plan(key, scripts)
        call = Call(key, op, options, turn)
        self.calls.append(call)
        return call

    def plan(self) -> None:
        for i in range(TURNS):
            user = USERS[i % len(USERS)]
            turn = TurnTokenAccumulator(user_id=user, thread_id=f"{user}/t{self.rng.randint(1, 3)}", settle_timeout=5)
            if self.rng.random() < 0.25:
                turn.created_at = self.rng.choice(MIDNIGHTS)
            self.turns.append((turn, [self.call(turn) for _ in range(self.rng.randint(1, 4))]))

    async def run_call(self, call: Call) -> None:
        with contextlib.suppress(litellm.exceptions.APIError, litellm.exceptions.InternalServerError):
            if call.op == "router":
                await self.router.acompletion(**call.options)
            elif call.op == "embedding":
                await litellm.aembedding(**call.options)
            elif call.op == "image":
                await litellm.aimage_generation(**call.options)
            else:
                response = await litellm.acompletion(**call.options)
                if call.options.get("stream"):
                    async for _chunk in response:
                        pass

    async def run_turn(self, i: int, writer: BatchWriter, ledger: CreditLedger) -> None:
        turn, calls = self.turns[i]
        if turn.user_id == PAID:
            scope: Any = turnledger.credit_scope(ledger, account=PAID, estimate=ESTIMATE, turn=turn, persist=writer)
        else:
            scope = turnledger.scoped_turn(turn=turn, persist=writer)
        async with scope:
            if i % 2:
                await asyncio.gather(*(self.run_call(c) for c in calls))
            else:
                for c in calls:
                    await self.run_call(c)


@pytest.fixture
def own_price_tracker() -> Iterator[None]:
    turnledger.install(turnledger.TokenTrackingCallback(price_table=turnledger.PriceTable({"acme-llm-7b": OWN_PRICES})))
    yield
    turnledger.uninstall()


async def read_while_written(engine: AsyncEngine, done: asyncio.Event) -> int:
    """Every breakdown, again and again while the writers write; each must answer."""
    reads = 0
    while not done.is_set():
        async with session_factory(engine)() as s:
            for by in ReportBy:
                await turnledger.usage_report(s, by)
                reads += 1
        await asyncio.sleep(0.05)
    return reads


async def rows_of(engine: AsyncEngine, model: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(select(model.__table__))).all()]


async def reports(engine: AsyncEngine) -> dict[ReportBy, list[dict[str, Any]]]:
    async with session_factory(engine)() as s:
        return {by: [r.to_dict() for r in await turnledger.usage_report(s, by)] for by in ReportBy}


async def test_what_the_reports_bill_is_what_the_provider_answered_at_the_prices(
    fake_provider: FakeProvider, own_price_tracker: None, pg_engine: AsyncEngine, tmp_path: Path
) -> None:
    scenario = Scenario(fake_provider)
    scenario.plan()
    ledger = CreditLedger(pg_engine)
    await ledger.grant(PAID, 1000, "opening-grant")
    # Two app processes' writers: each its own engine and outbox, the same schema.
    url = pg_engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url), make_engine(url)]
    done = asyncio.Event()
    try:
        async with (
            BatchWriter(engines[0], outbox_dir=tmp_path / "a") as a,
            BatchWriter(engines[1], outbox_dir=tmp_path / "b") as b,
        ):
            reader = asyncio.ensure_future(read_while_written(pg_engine, done))
            await asyncio.gather(*(scenario.run_turn(i, (a, b)[i % 2], ledger) for i in range(TURNS)))
            done.set()
            assert await reader > 0
    finally:
        for e in engines:
            await e.dispose()

    call_rows, turn_rows = await rows_of(pg_engine, TokenUsageCall), await rows_of(pg_engine, TokenUsage)
    turn_of = {t["id"]: t["turn_id"] for t in turn_rows}
    assert sorted(turn_of.values()) == sorted(t.turn_id for t, _ in scenario.turns)
    rows_by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in call_rows:
        rows_by_call[row["call_id"]].append(row)
    costs: dict[str, list[Decimal | None]] = defaultdict(list)
    for call in scenario.calls:
        rows, answers = rows_by_call[call.key], fake_provider.answers_for(call.key)
        assert len(rows) == len(answers) > 0, call  # a Router retry is a call of its own
        assert {turn_of[r["usage_id"]] for r in rows} == {call.turn.turn_id}
        by_request = Counter(r["provider_request_id"] for r in rows)
        for answer in answers:
            if answer.status != 200:
                continue
            assert by_request[answer.request_id] == 1, (call, answer)
            (row,) = [r for r in rows if r["provider_request_id"] == answer.request_id]
            expected = None if call.op == "image" else expected_cost(answer.model, answer.usage or {})
            if call.op != "image":
                usage = answer.usage or {}
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
                    usage["prompt_tokens"], usage.get("completion_tokens", 0), cached,
                ), call  # fmt: skip
            assert (row["status"], row["cost_usd"]) == ("success", expected), (call, row["cost_source"])
        refused = [r for r in rows if r["provider_request_id"] is None or r["status"] == "failure"]
        assert all((r["status"], r["cost_usd"]) == ("failure", Decimal(0)) for r in refused), call
        costs[call.turn.user_id or ""] += [r["cost_usd"] for r in rows]
    assert {m for m in UNPRICED_MODELS if any(c.op in ("image", "unpriced") for c in scenario.calls)}

    pg = await reports(pg_engine)
    for row in pg[ReportBy.USER]:
        mine = costs.pop(row["key"])
        priced = [c for c in mine if c is not None]
        assert (row["calls"], row["unpriced_calls"]) == (len(mine), len(mine) - len(priced))
        assert row["cost_usd"] == (f"{sum(priced, Decimal(0)):f}" if priced else None), row
    assert not costs
    for row in pg[ReportBy.MODEL]:
        if row["key"] in UNPRICED_MODELS:
            assert row["cost_usd"] is None and row["unpriced_calls"] == row["calls"] > 0, row
    days: Counter[str] = Counter()
    for turn, _calls in scenario.turns:
        days[turn.created_at.astimezone(UTC).date().isoformat()] += len(turn.calls)
    assert {r["key"]: r["calls"] for r in pg[ReportBy.DAY]} == dict(days)
    assert {"2026-11-24", "2026-11-25", "2026-12-31", "2027-01-01"} <= set(days)

    settled = [e for e in await ledger.history(PAID) if e.kind == "settle"]
    paid = {t["turn_id"]: t for t in turn_rows if t["user_id"] == PAID}
    assert len(settled) == len(paid)
    for entry in settled:
        turn_row = paid[entry.turn_id or ""]
        cost = turn_row["cost_usd"] or Decimal(0)
        assert -entry.amount == (max(cost, ESTIMATE) if turn_row["unpriced_calls"] else cost), entry

    # The same rows in SQLite: every breakdown to the last digit.
    sqlite = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}")
    try:
        await migrate.upgrade_async(sqlite.url)
        async with sqlite.begin() as conn:
            await conn.execute(insert(TokenUsage), turn_rows)
            await conn.execute(insert(TokenUsageCall), call_rows)
        assert await reports(sqlite) == pg
    finally:
        await sqlite.dispose()

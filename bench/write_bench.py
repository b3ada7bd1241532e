"""Write throughput on PostgreSQL: turns/s (3 calls each) through BatchWriter, record_turn, and the raw ceiling.

All three arms run in one process against one freshly created database (random name, dropped after),
interleaved repeat by repeat:

- ``ceiling``: asyncpg ``copy_records_to_table`` of the same rows, already converted to tuples, with ids
  taken from the sequence in one query: the database's own limit for these rows, with no Python row work.
- ``BatchWriter``: every turn handed over with ``submit``, in bursts of ``HANDOFF_BURST`` (as concurrent
  request handlers would), then ``flush``: rows built from the turn, journalled to the fsync'd outbox and
  written in batches; with COPY straight into the tables (the default on PostgreSQL: ids reserved from
  the sequence; a batch holding a stored ``turn_id`` goes through staging tables and ``ON CONFLICT``
  instead) and with multi-row ``INSERT ... ON CONFLICT`` (``pg_copy=False``).
- ``record_turn``: one session and one transaction per turn, sequentially (the simple, synchronous way).

Judged: BatchWriter turns/s / ceiling turns/s, target >= 50%.
Size knobs: ``BENCH_WRITE_TURNS`` (default 5000), ``BENCH_WRITE_RECORD_TURNS`` (default 500),
``BENCH_WRITE_REPEATS`` (default 5). PostgreSQL from ``TURNLEDGER_BENCH_PG_DSN`` (default local postgres).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger.accumulator import TurnTokenAccumulator
from turnledger.records import CostSource, TokenCallRecord
from turnledger.store import migrate
from turnledger.store.engine import make_engine, session_factory
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE, record_turn, turn_rows
from turnledger.store.writer import BatchWriter

ADMIN_DSN = os.environ.get("TURNLEDGER_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
JSON_COLUMNS = {"tags", "model_breakdown", "call_details", "flags"}
HANDOFF_BURST = 10
"""Turns handed over back to back before the event loop gets a turn (many request handlers finishing at once)."""


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def make_turns(prefix: str, count: int) -> list[TurnTokenAccumulator]:
    started = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    turns = []
    for t in range(count):
        turn = TurnTokenAccumulator(turn_id=f"{prefix}-{t}", user_id=f"u-{t % 97}", thread_id=f"th-{t % 1013}")
        for c, model in enumerate(("gpt-4o-mini", "gpt-4o-mini", "text-embedding-3-small")):
            turn.add(
                TokenCallRecord(
                    call_id=f"{prefix}-{t}-{c}",
                    model=model,
                    provider="openai",
                    prompt_tokens=120 + c,
                    completion_tokens=40 if c < 2 else 0,
                    total_tokens=160 + c if c < 2 else 120 + c,
                    cost_usd=Decimal("0.0000420") if c < 2 else Decimal("0.0000024"),
                    cost_source=CostSource.RESPONSE_COST,
                    started_at=started,
                    latency_ms=812.5,
                )
            )
        turn._finalize()
        turns.append(turn)
    return turns


def _copy_value(column: str, value: Any) -> Any:
    # asyncpg's binary COPY takes JSON as text.
    return json.dumps(value) if column in JSON_COLUMNS and value is not None else value


def copy_tuples(
    turns: list[TurnTokenAccumulator],
) -> tuple[list[str], list[tuple[Any, ...]], list[str], list[list[tuple[Any, ...]]]]:
    """The same rows the writers insert, as tuples for COPY (ids filled in at copy time)."""
    usage_cols = [c.name for c in USAGE_TABLE.columns if c.name != "id"]
    call_cols = [c.name for c in CALLS_TABLE.columns if c.name != "usage_id"]
    usage_rows: list[tuple[Any, ...]] = []
    call_rows: list[list[tuple[Any, ...]]] = []
    for turn in turns:
        rows = turn_rows(turn, usage_type="chat")
        usage_rows.append(tuple(_copy_value(c, rows.usage.get(c)) for c in usage_cols))
        call_rows.append([tuple(_copy_value(c, call.get(c)) for c in call_cols) for call in rows.calls])
    return usage_cols, usage_rows, call_cols, call_rows


async def arm_ceiling(dsn: str, turns: list[TurnTokenAccumulator], *, build_rows_in_timing: bool = False) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        if not build_rows_in_timing:
            usage_cols, usage_rows, call_cols, call_rows = copy_tuples(turns)
        start = time.perf_counter()
        if build_rows_in_timing:
            usage_cols, usage_rows, call_cols, call_rows = copy_tuples(turns)
        async with conn.transaction():
            ids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT nextval(pg_get_serial_sequence('token_usage', 'id')) FROM generate_series(1, $1)",
                    len(usage_rows),
                )
            ]
            await conn.copy_records_to_table(
                "token_usage",
                records=[(i, *row) for i, row in zip(ids, usage_rows, strict=True)],
                columns=["id", *usage_cols],
            )
            await conn.copy_records_to_table(
                "token_usage_calls",
                records=[(i, *call) for i, calls in zip(ids, call_rows, strict=True) for call in calls],
                columns=["usage_id", *call_cols],
            )
        return time.perf_counter() - start
    finally:
        await conn.close()


async def arm_batch_writer(engine: AsyncEngine, turns: list[TurnTokenAccumulator], *, pg_copy: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="turnledger-bench-outbox-") as outbox:
        async with BatchWriter(engine, outbox_dir=outbox, max_queue=len(turns) + 1, pg_copy=pg_copy) as writer:
            start = time.perf_counter()
            futures: list[asyncio.Future[None]] = []
            for i in range(0, len(turns), HANDOFF_BURST):
                futures.extend(writer.submit(turn) for turn in turns[i : i + HANDOFF_BURST])
                # Turns end over time, between other work: let the writer's I/O proceed in between.
                await asyncio.sleep(0)
            await asyncio.gather(*futures)
            await writer.flush(timeout=600)
            elapsed = time.perf_counter() - start
            if writer.stats["written"] != len(turns) or writer.stats["spilled"]:
                raise RuntimeError(f"BatchWriter did not write every turn: {dict(writer.stats)}")
        return elapsed


async def arm_record_turn(engine: AsyncEngine, turns: list[TurnTokenAccumulator]) -> float:
    factory = session_factory(engine)
    start = time.perf_counter()
    for turn in turns:
        async with factory() as session:
            await record_turn(session, turn, usage_type="chat")
            await session.commit()
    return time.perf_counter() - start


async def handoff_latency(engine: AsyncEngine, turns: list[TurnTokenAccumulator]) -> str:
    """What ``async with scoped_turn(..., persist=writer)`` adds at exit: one group fsync of the outbox."""
    with tempfile.TemporaryDirectory(prefix="turnledger-bench-outbox-") as outbox:
        async with BatchWriter(engine, outbox_dir=outbox) as writer:
            waits = []
            for turn in turns:
                t0 = time.perf_counter()
                await writer.persist(turn)
                waits.append((time.perf_counter() - t0) * 1e3)
            await writer.flush(timeout=600)
    waits.sort()
    p99 = waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))]
    return f"p50 {statistics.median(waits):.2f} ms   p99 {p99:.2f} ms   max {waits[-1]:.2f} ms   (n={len(waits)})"


def python_costs(turns: list[TurnTokenAccumulator]) -> dict[str, float]:
    """Microseconds per turn of each Python step of the BatchWriter path, timed alone (no database)."""
    from turnledger.store.entries import _copy_records, make_entry
    from turnledger.store.lines import encode_line

    t0 = time.perf_counter()
    rows = [turn_rows(turn, usage_type="chat") for turn in turns]
    t1 = time.perf_counter()
    entries = [make_entry(r) for r in rows]
    lines = [encode_line(e) for e in entries]
    t2 = time.perf_counter()
    _copy_records(entries)
    t3 = time.perf_counter()
    n = len(turns) / 1e6
    return {
        "turn_rows (store/record.py)": (t1 - t0) / n,
        f"outbox line ({sum(map(len, lines)) // len(lines)} bytes/turn)": (t2 - t1) / n,
        "COPY records": (t3 - t2) / n,
    }


def fmt(values: list[float]) -> str:
    return (
        f"min {min(values):9.0f}   median {statistics.median(values):9.0f}   max {max(values):9.0f} turns/s"
        f"   (n={len(values)})"
    )


async def _count(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        turns = (await conn.execute(text("SELECT count(*) FROM token_usage"))).scalar_one()
        calls = (await conn.execute(text("SELECT count(*) FROM token_usage_calls"))).scalar_one()
    return int(turns), int(calls)


async def run(dsn: str, url: str) -> None:
    n_turns = _env_int("BENCH_WRITE_TURNS", 5000)
    n_record = _env_int("BENCH_WRITE_RECORD_TURNS", 500)
    repeats = _env_int("BENCH_WRITE_REPEATS", 5)
    engine = make_engine(url)
    arms: dict[str, Callable[[list[TurnTokenAccumulator]], Awaitable[float]]] = {
        "ceiling": lambda turns: arm_ceiling(dsn, turns),
        "ceiling_from_turns": lambda turns: arm_ceiling(dsn, turns, build_rows_in_timing=True),
        "batch_writer": lambda turns: arm_batch_writer(engine, turns, pg_copy=True),
        "batch_writer_insert": lambda turns: arm_batch_writer(engine, turns, pg_copy=False),
        "record_turn": lambda turns: arm_record_turn(engine, turns),
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    try:
        # Warm-up: connections, statement caches, the first fsync of a new directory.
        for name, arm in arms.items():
            await arm(make_turns(f"warm-{name}", 50))
        expected_turns = 50 * len(arms)
        names = list(arms)
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                count = n_record if name == "record_turn" else n_turns
                turns = make_turns(f"r{r}-{name}", count)
                # Every arm starts with the same heap: the turns made for it are not the collector's to scan.
                gc.collect()
                gc.freeze()
                try:
                    elapsed = await arms[name](turns)
                finally:
                    gc.unfreeze()
                results[name].append(count / elapsed)
                expected_turns += count
        handoff = await handoff_latency(engine, make_turns("handoff", 300))
        expected_turns += 300
        costs: dict[str, list[float]] = {}
        for _ in range(repeats):
            for step, us in python_costs(make_turns("cost", 2000)).items():
                costs.setdefault(step, []).append(us)
        stored = await _count(engine)
        if stored != (expected_turns, 3 * expected_turns):
            raise RuntimeError(f"stored {stored}, expected {(expected_turns, 3 * expected_turns)}")
    finally:
        await engine.dispose()

    print(f"PostgreSQL write throughput, 3 calls per turn, {repeats} interleaved repeats")
    print(f"  raw ceiling (COPY of built rows)   {n_turns:>6} turns: {fmt(results['ceiling'])}")
    print(f"  COPY incl. turn_rows (not judged)  {n_turns:>6} turns: {fmt(results['ceiling_from_turns'])}")
    print(f"  BatchWriter, COPY (default)        {n_turns:>6} turns: {fmt(results['batch_writer'])}")
    print(f"  BatchWriter, multi-row INSERT      {n_turns:>6} turns: {fmt(results['batch_writer_insert'])}")
    print(f"  record_turn, 1 transaction/turn    {n_record:>6} turns: {fmt(results['record_turn'])}")
    ratios = [b / c for b, c in zip(results["batch_writer"], results["ceiling"], strict=True)]
    median_ratio = statistics.median(results["batch_writer"]) / statistics.median(results["ceiling"])
    print(
        f"  JUDGED BatchWriter / ceiling: median {median_ratio:.0%}  (paired per repeat: min {min(ratios):.0%}, "
        f"max {max(ratios):.0%})   target >= 50% -> {'PASS' if median_ratio >= 0.5 else 'UNDER'}"
    )
    rt = statistics.median(results["batch_writer"]) / statistics.median(results["record_turn"])
    print(f"  BatchWriter / record_turn: {rt:.1f}x")
    vs_turns = statistics.median(results["batch_writer"]) / statistics.median(results["ceiling_from_turns"])
    print(f"  (BatchWriter / COPY incl. turn_rows, same input: {vs_turns:.0%})")
    print(f"  hand-off latency, one producer, persist() until durable: {handoff}")
    print("  Where a BatchWriter turn's Python time goes (median us/turn, each step timed alone, no database):")
    for step, values in costs.items():
        print(f"    {step:<36} {statistics.median(values):7.1f} us")
    total = sum(statistics.median(v) for v in costs.values())
    ceiling_us = 1e6 / statistics.median(results["ceiling"])
    print(f"    {'sum':<36} {total:7.1f} us   vs the ceiling's whole turn: {ceiling_us:.1f} us")


def main() -> None:
    name = f"turnledger_bench_{secrets.token_hex(6)}"
    base = ADMIN_DSN.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(url)
        asyncio.run(run(dsn, url))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()

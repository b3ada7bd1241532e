"""Report speed on PostgreSQL: 1,000,000 turns / 3,000,000 calls, the two breakdowns the issue names.

1. Per-model breakdown of one user over the last 30 days (``token_usage_calls``, index on
   ``(user_id, created_at)``).
2. Per-day breakdown of every user over the last 30 days (``token_usage``, the turn rows).
3. For scale: the per-day breakdown over the whole history (every turn row).
4. For the other indexes: per-model of one tenant (30 days), per-day of one thread, and per-model of
   everyone over 30 days (a million call rows; no target in the issue).

Each query runs through :func:`turnledger.usage_report` (SQL + the Python merge), ``REPEATS`` times
after one warm-up; printed: min / median / max, the median's ratio to the 1 s target, and the
``EXPLAIN (ANALYZE, BUFFERS)`` plan of the exact statement the report sends.

Data: generated in SQL (``generate_series``) into a database of its own, dropped afterwards. Turns
arrive in time order over ``DAYS`` days (default 90), users ``USERS`` (default 2000), 6 models, one of them
unpriced. Each turn row carries a ``call_details`` document the size of a real 3-call turn's.

Size knobs: ``BENCH_REPORT_TURNS`` (default 1000000; calls are 3 per turn), ``BENCH_REPORT_DAYS``,
``BENCH_REPORT_USERS``, ``BENCH_REPORT_REPEATS`` (default 7), ``TURNLEDGER_TEST_PG_DSN`` (the
maintenance database to create the bench database from). Only run by hand: ``python -m bench report_bench``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from turnledger import ReportBy, TokenCallRecord, TurnTokenAccumulator, make_engine, session_factory, usage_report
from turnledger.records import CostSource
from turnledger.store import migrate
from turnledger.store.record import turn_rows
from turnledger.store.reports import ReportFilters, build_query

PG_ADMIN_DSN = os.environ.get("TURNLEDGER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_S = 1.0

# model, input rate, output rate (USD per token); NULL rates make the model unpriced.
MODELS: list[tuple[str, str | None, str | None]] = [
    ("gpt-4o-mini", "0.00000015", "0.0000006"),
    ("gpt-4o", "0.0000025", "0.00001"),
    ("claude-sonnet-4-5", "0.000003", "0.000015"),
    ("text-embedding-3-small", "0.00000002", "0"),
    ("o3-mini", "0.0000011", "0.0000044"),
    ("in-house-llm", None, None),
]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"min {min(ms):8.1f} ms   median {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms   "
        f"(n={len(values)})   median/target {statistics.median(values) / TARGET_S:.3f}"
    )


def _sample_call_details() -> str:
    """A real 3-call turn's ``call_details`` document, so turn rows are as wide as in production."""
    turn = TurnTokenAccumulator(user_id="user-1", thread_id="thread-1")
    for i, (model, _, _) in enumerate(MODELS[:3]):
        turn.calls.append(
            TokenCallRecord(
                call_id=f"chatcmpl-{secrets.token_hex(12)}",
                model=model,
                provider="openai",
                prompt_tokens=812 + i,
                completion_tokens=143 + i,
                total_tokens=955 + 2 * i,
                cost_usd=Decimal("0.0002076"),
                cost_source=CostSource.RESPONSE_COST,
                started_at=datetime.now(UTC),
                latency_ms=812.5,
                provider_request_id=f"req_{secrets.token_hex(12)}",
            )
        )
    turn._finalize()
    rows = turn_rows(turn, usage_type="chat")
    return json.dumps(rows.usage["call_details"])


def _generate_sql(turns: int, days: int, users: int, end: datetime) -> list[str]:
    models = ", ".join(
        f"({i}, '{name}', {rate_in or 'NULL'}::numeric, {rate_out or 'NULL'}::numeric)"
        for i, (name, rate_in, rate_out) in enumerate(MODELS)
    )
    span_s = days * 86400
    # Turns arrive in time order (ids grow with time, as inserts do), jittered by up to an hour.
    created = (
        f"(TIMESTAMPTZ '{end.isoformat()}' - ((({turns} - g)::bigint * {span_s} / {turns}"
        f" + (g::bigint * 2654435761) % 3600) * INTERVAL '1 second'))"
    )
    details = _sample_call_details().replace("'", "''")
    return [
        f"""CREATE UNLOGGED TABLE bench_stage AS
        SELECT g AS usage_id, seq, m.name AS model,
               100 + (g * 7 + seq * 13) % 900 AS prompt_tokens,
               20 + (g * 11 + seq * 5) % 300 AS completion_tokens,
               ((g * 3 + seq) % 4 = 0)::int * (g % 64) AS cached_tokens,
               (100 + (g * 7 + seq * 13) % 900) * m.rate_in + (20 + (g * 11 + seq * 5) % 300) * m.rate_out AS cost,
               {created} AS created_at
        FROM generate_series(1, {turns}) AS g
        CROSS JOIN generate_series(0, 2) AS seq
        JOIN (VALUES {models}) AS m(idx, name, rate_in, rate_out) ON m.idx = (g + seq * 2) % {len(MODELS)}""",
        f"""INSERT INTO token_usage (id, turn_id, usage_type, user_id, thread_id, message_id, tenant_id, tags,
               calls, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_creation_tokens,
               reasoning_tokens, cost_usd, cost_micros, unpriced_calls, failed_calls, abandoned_calls,
               model_breakdown, call_details, created_at, recorded_at)
        SELECT usage_id, 'turn-' || usage_id, 'chat', 'user-' || (usage_id % {users}), 'thread-' || (usage_id / 5),
               'msg-' || usage_id, 'tenant-' || (usage_id % 50), '[]'::jsonb,
               count(*), sum(prompt_tokens), sum(completion_tokens), sum(prompt_tokens + completion_tokens),
               sum(cached_tokens), 0, 0, sum(cost), round(sum(cost) * 1000000)::bigint,
               count(*) - count(cost), 0, 0, '{{}}'::jsonb, '{details}'::jsonb, min(created_at), min(created_at)
        FROM bench_stage GROUP BY usage_id""",
        f"""INSERT INTO token_usage_calls (usage_id, seq, call_id, model, provider, call_kind, status,
               prompt_tokens, completion_tokens, total_tokens, cached_tokens, cache_creation_tokens,
               cache_creation_1h_tokens, reasoning_tokens, image_input_tokens, image_output_tokens,
               cost_usd, cost_micros, cost_source, started_at, latency_ms, ttft_ms, stream, usage_estimated,
               flags, usage_type, user_id, thread_id, tenant_id, created_at)
        SELECT usage_id, seq, 'call-' || usage_id || '-' || seq, model, 'openai', 'chat', 'success',
               prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, cached_tokens, 0, 0, 0, 0, 0,
               cost, round(cost * 1000000)::bigint, CASE WHEN cost IS NULL THEN 'none' ELSE 'response_cost' END,
               created_at, 800.0, NULL, false, false, '[]'::jsonb, 'chat', 'user-' || (usage_id % {users}),
               'thread-' || (usage_id / 5), 'tenant-' || (usage_id % 50), created_at
        FROM bench_stage""",
        "DROP TABLE bench_stage",
        "SELECT setval(pg_get_serial_sequence('token_usage', 'id'), (SELECT max(id) FROM token_usage))",
    ]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _load(url: str, turns: int, days: int, users: int, end: datetime) -> None:
    await migrate.upgrade_async(url)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        # Building each index once after the load is far faster than maintaining it row by row.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('token_usage', 'token_usage_calls') "
            "AND indexname LIKE 'ix_%'"
        )
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        for sql in _generate_sql(turns, days, users, end):
            started = time.perf_counter()
            await conn.execute(sql)
            print(f"  load step {time.perf_counter() - started:7.1f} s  {sql.split()[0]} {sql.split()[2]}", flush=True)
        started = time.perf_counter()
        for row in indexes:
            await conn.execute(row["indexdef"])
        print(f"  indexes   {time.perf_counter() - started:7.1f} s", flush=True)
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE token_usage")
        await conn.execute("VACUUM ANALYZE token_usage_calls")
        print(f"  vacuum    {time.perf_counter() - started:7.1f} s", flush=True)
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM token_usage) AS turns, (SELECT count(*) FROM token_usage_calls) AS calls,"
            " pg_size_pretty(pg_total_relation_size('token_usage')) AS turns_size,"
            " pg_size_pretty(pg_total_relation_size('token_usage_calls')) AS calls_size"
        )
        print(
            f"  rows: {counts['turns']:,} turns ({counts['turns_size']}), {counts['calls']:,} calls "
            f"({counts['calls_size']})",
            flush=True,
        )
    finally:
        await conn.close()


async def _explain(url: str, grouping: ReportBy, filters: ReportFilters) -> str:
    engine = make_engine(url)
    try:
        stmt = build_query(grouping, filters, exact_in_sql=True)
        compiled = stmt.compile(dialect=engine.dialect)
        params: dict[str, Any] = compiled.params
        names = list(compiled.positiontup or [])
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}", *[params[n] for n in names])
        finally:
            await conn.close()
        return "\n".join("    " + r[0] for r in rows)
    finally:
        await engine.dispose()


async def _time(url: str, grouping: ReportBy, repeats: int, **filters: Any) -> tuple[list[float], int]:
    engine = make_engine(url)
    sessions = session_factory(engine)
    timings: list[float] = []
    groups = 0
    try:
        for i in range(repeats + 1):
            async with sessions() as session:
                started = time.perf_counter()
                rows = await usage_report(session, grouping, **filters)
                elapsed = time.perf_counter() - started
            groups = len(rows)
            if i:  # the first run warms the cache and the connection
                timings.append(elapsed)
    finally:
        await engine.dispose()
    return timings, groups


async def run() -> None:
    turns = _env_int("BENCH_REPORT_TURNS", 1_000_000)
    days = _env_int("BENCH_REPORT_DAYS", 90)
    users = _env_int("BENCH_REPORT_USERS", 2000)
    repeats = _env_int("BENCH_REPORT_REPEATS", 7)
    name = f"turnledger_bench_{secrets.token_hex(6)}"
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    end = datetime.now(UTC).replace(microsecond=0)
    since = end - timedelta(days=30)
    print(f"database {name}: {turns:,} turns x 3 calls over {days} days, {users} users", flush=True)
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        await _load(url, turns, days, users, end)
        cases: list[tuple[str, ReportBy, dict[str, Any]]] = [
            ("per-model, one user, 30 days", ReportBy.MODEL, {"user_id": "user-42", "since": since}),
            ("per-day, all users, 30 days", ReportBy.DAY, {"since": since}),
            (f"per-day, all users, all {days} days", ReportBy.DAY, {}),
            # The other indexes, justified the same way (not targets of the issue, printed for the record).
            ("per-model, one tenant, 30 days", ReportBy.MODEL, {"tenant_id": "tenant-7", "since": since}),
            ("per-day, one thread, all days", ReportBy.DAY, {"thread_id": "thread-4242"}),
            ("per-model, all users, 30 days", ReportBy.MODEL, {"since": since}),
        ]
        for title, grouping, filters in cases:
            timings, groups = await _time(url, grouping, repeats, **filters)
            print(f"\n{title}: {groups} groups")
            print(f"  {fmt(timings)}")
            print(await _explain(url, grouping, ReportFilters(**filters)), flush=True)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"\ndropped {name}")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()

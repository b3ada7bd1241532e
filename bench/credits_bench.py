"""Throughput of reserve/settle pairs on one hot account: the price of the per-account row lock.

Every pair on one account is serialized by the account's lock, so the figure that matters is
wall time per pair. Measured three ways on PostgreSQL and on SQLite:

- sequential: one task, one pair after another (the lock is never contended);
- tasks: the pairs as concurrent asyncio tasks in this process (6-connection pool);
- 2 processes: the same pairs split over two worker processes (the integration test's workers),
  timed from the moment both are released, so process start-up is not counted.

Reports min / median / max over the repeats and the ratio judged: contended per-pair time over
sequential per-pair time (1.0 would mean contention costs nothing; the lock makes pairs take turns,
so what is judged is that it stays a small constant, not that it vanishes).

    python -m bench.credits_bench        (TURNLEDGER_BENCH_PAIRS=N, TURNLEDGER_BENCH_REPEATS=R)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from tests.integration.conftest import create_pg_database, drop_pg_database
from tests.integration.test_credits_concurrency import Job, Workers
from turnledger.credits import CreditLedger
from turnledger.store import migrate
from turnledger.store.engine import make_engine

PAIRS = int(os.environ.get("TURNLEDGER_BENCH_PAIRS", "300"))
REPEATS = int(os.environ.get("TURNLEDGER_BENCH_REPEATS", "3"))
ESTIMATE = Decimal("0.01")
ACTUAL = Decimal("0.004321")


async def _in_process(url: str, run: int, concurrent: bool) -> float:
    engine = make_engine(url, pool_size=6, max_overflow=0)
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    account = f"bench-{run}-{'tasks' if concurrent else 'seq'}"
    try:
        await ledger.grant(account, PAIRS * ESTIMATE, f"{account}-grant")

        async def pair(i: int) -> None:
            res = await ledger.reserve(account, ESTIMATE, f"{account}-{i}")
            await ledger.settle(res, ACTUAL)

        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(pair(i) for i in range(PAIRS)))
        else:
            for i in range(PAIRS):
                await pair(i)
        elapsed = time.perf_counter() - started
        assert (await ledger.balance(account)).balance == PAIRS * (ESTIMATE - ACTUAL)
        return elapsed
    finally:
        await engine.dispose()


async def _grant(url: str, account: str) -> None:
    engine = make_engine(url)
    try:
        await CreditLedger(engine).grant(account, PAIRS * ESTIMATE, f"{account}-grant")
    finally:
        await engine.dispose()


def _two_processes(url: str, run: int, workers: Workers) -> float:
    account = f"bench-{run}-procs"
    asyncio.run(_grant(url, account))
    jobs = [Job(account, f"{account}-{i}", ESTIMATE, ACTUAL) for i in range(PAIRS)]
    workers.run(url, [jobs[0::2], jobs[1::2]])
    # Both were released together; the slower one is the wall time.
    return workers.elapsed_s[-1]


def _line(label: str, per_pair_ms: list[float]) -> str:
    return (
        f"  {label:<12} per pair ms: min {min(per_pair_ms):7.3f}  median {statistics.median(per_pair_ms):7.3f}  "
        f"max {max(per_pair_ms):7.3f}"
    )


def _measure(name: str, url: str, workers: Workers) -> None:
    migrate.upgrade(url)
    seq: list[float] = []
    tasks: list[float] = []
    procs: list[float] = []
    for run in range(REPEATS):
        seq.append(asyncio.run(_in_process(url, run, concurrent=False)) / PAIRS * 1000)
        tasks.append(asyncio.run(_in_process(url, run, concurrent=True)) / PAIRS * 1000)
        procs.append(_two_processes(url, run, workers) / PAIRS * 1000)
    print(f"{name}: {PAIRS} reserve/settle pairs on one account, {REPEATS} repeats")
    print(_line("sequential", seq))
    print(_line("tasks", tasks))
    print(_line("2 processes", procs))
    base = statistics.median(seq)
    print(
        f"  ratio (median contended / median sequential): tasks {statistics.median(tasks) / base:.2f}, "
        f"2 processes {statistics.median(procs) / base:.2f}"
    )


def main() -> None:
    with Workers() as workers:
        name, url = create_pg_database()
        try:
            _measure("postgresql", url, workers)
        finally:
            drop_pg_database(name)
        with tempfile.TemporaryDirectory() as tmp:
            _measure("sqlite", f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", workers)


if __name__ == "__main__":
    main()

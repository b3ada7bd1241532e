"""Concurrent reserve/settle pairs on one account, from many asyncio tasks in 2 OS processes.

Two scenarios run at once, each on its own account, spread over two worker processes (this module
run with ``python -m``); every pair is its own asyncio task over a small connection pool. Some
keys are used twice, once in each process, so replays race the first call across processes. The
amounts are chosen so that the exact number of reserves that may succeed is known whatever the
interleaving, and every figure is checked to the last of its 18 decimals: the balance, the
journal's own sum (in SQL on PostgreSQL), the count of reserves and settles, and, entry by entry,
that no reserve ever took the account below its overdraft limit.

``TURNLEDGER_CREDITS_PAIRS`` sets the number of pairs per scenario (default 500 on PostgreSQL;
SQLite runs a tenth of it, its writers taking turns on one database-wide lock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger import CreditLedger, InsufficientCredits
from turnledger.credits import EntryKind
from turnledger.store.engine import make_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PAIRS = int(os.environ.get("TURNLEDGER_CREDITS_PAIRS", "500"))
WORKER_SECONDS: list[float] = []
"""The concurrent phase's wall time in each worker run so far (read by bench.credits_bench)."""

EXHAUST = "exhaust-account"
PARTIAL = "partial-account"


@dataclass(frozen=True)
class Job:
    account: str
    key: str
    estimate: Decimal
    actual: Decimal


def _pairs_for(url: str) -> int:
    return PAIRS if url.startswith("postgresql") else max(PAIRS // 10, 20)


# -- the worker process ------------------------------------------------------------------------
async def _worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    # A small pool per process: tasks queue for connections, and both processes still hold
    # several transactions open on the one account at every moment. SQLite gets fewer: its
    # writers wait for the one database lock in a sleeping busy loop, PostgreSQL's in a queue.
    pool_size = 6 if spec["url"].startswith("postgresql") else 2
    engine = make_engine(spec["url"], pool_size=pool_size, max_overflow=0)
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    try:
        await ledger.balance(EXHAUST)  # connects, so that the start is simultaneous
        print("ready", flush=True)
        sys.stdin.readline()

        async def pair(job: dict[str, str]) -> dict[str, Any]:
            try:
                res = await ledger.reserve(job["account"], Decimal(job["estimate"]), job["key"])
            except InsufficientCredits:
                return {"key": job["key"], "reserved": False}
            entry = await ledger.settle(res, Decimal(job["actual"]))
            return {
                "key": job["key"],
                "reserved": True,
                "reservation_id": res.id,
                "settle_id": entry.id,
                "settled": str(-entry.amount),
            }

        started = time.perf_counter()
        results = list(await asyncio.gather(*(pair(job) for job in spec["jobs"])))
        # Wall time of the concurrent phase, for bench.credits_bench (tests never assert on it).
        print(f"elapsed {time.perf_counter() - started:.3f}", file=sys.stderr, flush=True)
        return results
    finally:
        await engine.dispose()


def _worker_main() -> None:
    spec = json.loads(sys.argv[1])
    results = asyncio.run(_worker(spec))
    print(json.dumps(results), flush=True)


# -- the test side -----------------------------------------------------------------------------
def _run_workers(url: str, job_lists: list[list[Job]]) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TURNLEDGER_DATABASE_URL"}
    procs = []
    for jobs in job_lists:
        spec = {
            "url": url,
            "jobs": [
                {"account": j.account, "key": j.key, "estimate": str(j.estimate), "actual": str(j.actual)} for j in jobs
            ],
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_credits_concurrency", json.dumps(spec)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.communicate(timeout=30)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results: list[dict[str, Any]] = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            WORKER_SECONDS.append(float(err.rsplit("elapsed ", 1)[1].split()[0]))
            results.extend(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _split_with_repeats(unique: list[Job], repeats: int) -> list[list[Job]]:
    """Two interleaved halves; the first ``repeats`` keys of one half are also run by the other."""
    halves: list[list[Job]] = [unique[0::2], unique[1::2]]
    halves[1] = halves[1] + halves[0][:repeats]
    return halves


async def _journal_sum(engine: AsyncEngine, ledger: CreditLedger, account: str) -> Decimal:
    if engine.dialect.name == "postgresql":
        # Summed by PostgreSQL's own NUMERIC arithmetic, independently of the ledger's code.
        async with engine.connect() as conn:
            total = (
                await conn.execute(text("SELECT sum(amount) FROM credit_journal WHERE account_id = :a"), {"a": account})
            ).scalar_one()
        return Decimal(total)
    return sum((e.amount for e in await ledger.history(account)), Decimal(0))


async def _check_account(
    ledger: CreditLedger, engine: AsyncEngine, account: str, *, expected: Decimal, reserves: int, overdraft: Decimal
) -> None:
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (expected, Decimal(0))
    assert await _journal_sum(engine, ledger, account) == expected
    entries = await ledger.history(account)
    kinds = [e.kind for e in entries]
    assert kinds.count(EntryKind.RESERVE) == reserves
    assert kinds.count(EntryKind.SETTLE) == reserves
    assert kinds.count(EntryKind.RELEASE) == 0
    # Entry by entry, in the order the lock granted them: never below the overdraft limit.
    assert all(e.balance_after - e.held_after + overdraft >= 0 for e in entries)
    report = await ledger.verify(account)
    assert report.ok, report.problems
    assert report.open_holds == 0


def _outcomes(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One outcome per key: a key run twice got the same reservation and the same settle both times."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in results:
        first = by_key.setdefault(r["key"], r)
        assert first == r, (first, r)
    return by_key


async def test_concurrent_pairs_from_two_processes_are_exact(engine: AsyncEngine) -> None:
    pairs = _pairs_for(str(engine.url))
    repeats = pairs // 10
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))

    # Scenario "exhaust": actual cost == estimate, so each success consumes exactly E for good and
    # the number of reserves that can succeed is fixed, floor((grant + overdraft) / E), whatever
    # the interleaving: the grant covers two thirds of the unique keys, the overdraft ten more,
    # and the remainder is less than E.
    e = Decimal("0.012345678901234567")
    unique = pairs - repeats
    fits = unique * 2 // 3
    overdraft = 10 * e
    remainder = Decimal("0.000000000000000007")
    await ledger.open_account(EXHAUST, overdraft_limit=overdraft)
    await ledger.grant(EXHAUST, fits * e + remainder, "exhaust-grant")
    exhaust = _split_with_repeats([Job(EXHAUST, f"turn-{i}", e, e) for i in range(unique)], repeats)

    # Scenario "partial": every small reserve must succeed (the grant covers all their holds at
    # once), every oversized one must be refused (more than the account could ever have
    # available), and each settle debits its own distinct actual cost, freeing the rest.
    big = pairs // 10
    small = pairs - repeats - big
    estimate = Decimal("0.01")
    grant = small * estimate
    await ledger.grant(PARTIAL, grant, "partial-grant")
    unit = Decimal("0.000001234567890123")
    small_jobs = [Job(PARTIAL, f"small-{i}", estimate, (i + 1) * unit) for i in range(small)]
    big_jobs = [Job(PARTIAL, f"big-{i}", grant + Decimal("0.000000000000000001"), Decimal(0)) for i in range(big)]
    partial = _split_with_repeats(small_jobs, repeats)
    partial[0] += big_jobs[0::2]
    partial[1] += big_jobs[1::2]

    url = engine.url.render_as_string(hide_password=False)
    results = _run_workers(url, [exhaust[0] + partial[0], exhaust[1] + partial[1]])
    assert len(results) == 2 * pairs
    outcomes = _outcomes(results)

    exhaust_ok = [r for k, r in outcomes.items() if k.startswith("turn-") and r["reserved"]]
    assert len(exhaust_ok) == len({r["reservation_id"] for r in exhaust_ok}) == fits + 10
    exhaust_expected = remainder - 10 * e
    if pairs == 500:
        assert exhaust_expected == Decimal("-0.123456789012345663")
    await _check_account(ledger, engine, EXHAUST, expected=exhaust_expected, reserves=fits + 10, overdraft=overdraft)

    refused = sorted(k for k, r in outcomes.items() if not r["reserved"] and not k.startswith("turn-"))
    assert refused == sorted(j.key for j in big_jobs)
    assert all(Decimal(outcomes[j.key]["settled"]) == j.actual for j in small_jobs)
    partial_expected = grant - sum((j.actual for j in small_jobs), Decimal(0))
    if pairs == 500:
        assert partial_expected == Decimal("3.9009876552121354")
    await _check_account(ledger, engine, PARTIAL, expected=partial_expected, reserves=small, overdraft=Decimal(0))


if __name__ == "__main__":
    _worker_main()

"""Concurrent reserve/settle pairs on one account, from many asyncio tasks in 2 OS processes.

Each test spreads its pairs over two worker processes (this module run with ``python -m``), each
running every one of its pairs as its own asyncio task over a small connection pool. Some keys are
used twice, once in each process, so replays race the first call across processes. The amounts are
chosen so that the exact number of reserves that may succeed is known whatever the interleaving,
and every figure is checked to the last of its 18 decimals: the balance, the journal's own sum
(in SQL on PostgreSQL), the count of reserves and settles, and, entry by entry, that no reserve
ever took the account below its overdraft limit.

``TURNLEDGER_CREDITS_PAIRS`` sets the number of pairs (default 500 on PostgreSQL; SQLite runs a
fifth of it, its writers taking turns on one database-wide lock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
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
PROCESSES = 2
ACCOUNT = "shared-account"


@dataclass(frozen=True)
class Job:
    key: str
    estimate: Decimal
    actual: Decimal


def _pairs_for(url: str) -> int:
    return PAIRS if url.startswith("postgresql") else max(PAIRS // 5, 20)


# -- the worker process ------------------------------------------------------------------------
async def _worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    # A small pool per process: tasks queue for connections, and both processes still hold
    # several transactions open on the one account at every moment.
    engine = make_engine(spec["url"], pool_size=6, max_overflow=0)
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    try:
        await ledger.balance(spec["account"])  # connects, so that the start is simultaneous
        print("ready", flush=True)
        sys.stdin.readline()

        async def pair(job: dict[str, str]) -> dict[str, Any]:
            try:
                res = await ledger.reserve(spec["account"], Decimal(job["estimate"]), job["key"])
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

        return list(await asyncio.gather(*(pair(job) for job in spec["jobs"])))
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
            "account": ACCOUNT,
            "jobs": [{"key": j.key, "estimate": str(j.estimate), "actual": str(j.actual)} for j in jobs],
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


async def _journal_sum(engine: AsyncEngine, ledger: CreditLedger) -> Decimal:
    if engine.dialect.name == "postgresql":
        # Summed by PostgreSQL's own NUMERIC arithmetic, independently of the ledger's code.
        async with engine.connect() as conn:
            total = (
                await conn.execute(text("SELECT sum(amount) FROM credit_journal WHERE account_id = :a"), {"a": ACCOUNT})
            ).scalar_one()
        return Decimal(total)
    return sum((e.amount for e in await ledger.history(ACCOUNT)), Decimal(0))


async def _check_journal(ledger: CreditLedger, engine: AsyncEngine, *, reserves: int, overdraft: Decimal) -> None:
    entries = await ledger.history(ACCOUNT)
    kinds = [e.kind for e in entries]
    assert kinds.count(EntryKind.RESERVE) == reserves
    assert kinds.count(EntryKind.SETTLE) == reserves
    assert kinds.count(EntryKind.RELEASE) == 0
    # Entry by entry, in the order the lock granted them: never below the overdraft limit.
    assert all(e.balance_after - e.held_after + overdraft >= 0 for e in entries)
    report = await ledger.verify()
    assert report.ok, report.problems
    assert report.open_holds == 0


def _check_replays(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One outcome per key: a key run twice got the same reservation and the same settle both times."""
    by_key: dict[str, dict[str, Any]] = {}
    for r in results:
        first = by_key.setdefault(r["key"], r)
        assert first == r, (first, r)
    return by_key


async def test_racing_reserves_never_overdraw_and_the_balance_is_exact(engine: AsyncEngine) -> None:
    """Actual cost == estimate, so every success consumes exactly E for good and the number of
    reserves that can succeed is fixed: floor((grant + overdraft) / E), whatever the interleaving."""
    pairs = _pairs_for(str(engine.url))
    repeats = pairs // 10
    unique = pairs - repeats
    e = Decimal("0.012345678901234567")
    fits = unique * 2 // 3  # the grant covers two thirds of the unique keys...
    overdraft = 10 * e  # ...and the overdraft ten more
    remainder = Decimal("0.000000000000000007")  # less than E: cannot buy one more reserve
    grant = fits * e + remainder
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    await ledger.open_account(ACCOUNT, overdraft_limit=overdraft)
    await ledger.grant(ACCOUNT, grant, "initial-grant")

    jobs = [Job(f"turn-{i}", e, e) for i in range(unique)]
    results = _run_workers(str(engine.url.render_as_string(hide_password=False)), _split_with_repeats(jobs, repeats))

    assert len(results) == pairs
    outcomes = _check_replays(results)
    succeeded = [r for r in outcomes.values() if r["reserved"]]
    assert len(succeeded) == fits + 10
    assert len({r["reservation_id"] for r in succeeded}) == fits + 10
    expected = remainder - 10 * e
    if pairs == 500:
        assert expected == Decimal("-0.123456789012345663")
    balance = await ledger.balance(ACCOUNT)
    assert (balance.balance, balance.held, balance.available) == (expected, Decimal(0), remainder)
    assert await _journal_sum(engine, ledger) == expected
    await _check_journal(ledger, engine, reserves=fits + 10, overdraft=overdraft)


async def test_settles_below_the_estimate_free_the_rest_exactly(engine: AsyncEngine) -> None:
    """Every small reserve must succeed (the grant covers all their holds at once), every
    oversized one must be refused (more than the account could ever have available), and each
    settle debits its own distinct actual cost."""
    pairs = _pairs_for(str(engine.url))
    repeats = pairs // 10
    big = pairs // 10
    small = pairs - repeats - big
    estimate = Decimal("0.01")
    grant = small * estimate
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    await ledger.grant(ACCOUNT, grant, "initial-grant")

    unit = Decimal("0.000001234567890123")
    small_jobs = [Job(f"small-{i}", estimate, (i + 1) * unit) for i in range(small)]
    big_jobs = [Job(f"big-{i}", grant + Decimal("0.000000000000000001"), Decimal(0)) for i in range(big)]
    halves = _split_with_repeats(small_jobs, repeats)
    halves[0] += big_jobs[0::2]
    halves[1] += big_jobs[1::2]
    results = _run_workers(str(engine.url.render_as_string(hide_password=False)), halves)

    assert len(results) == pairs
    outcomes = _check_replays(results)
    assert sorted(k for k, r in outcomes.items() if not r["reserved"]) == sorted(j.key for j in big_jobs)
    assert all(Decimal(outcomes[j.key]["settled"]) == j.actual for j in small_jobs)
    expected = grant - sum((j.actual for j in small_jobs), Decimal(0))
    if pairs == 500:
        assert expected == Decimal("3.9009876552121354")
    balance = await ledger.balance(ACCOUNT)
    assert (balance.balance, balance.held) == (expected, Decimal(0))
    assert await _journal_sum(engine, ledger) == expected
    await _check_journal(ledger, engine, reserves=small, overdraft=Decimal(0))


if __name__ == "__main__":
    _worker_main()

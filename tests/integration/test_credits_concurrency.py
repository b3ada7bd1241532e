"""Concurrent reserve/settle pairs on one account, from many asyncio tasks in 2 OS processes.

Two scenarios run at once, each on its own account, spread over two worker processes (this module
run with ``python -m``); every pair is its own asyncio task over a small connection pool. Some
keys are used twice, once in each process, so replays race the first call across processes. The
amounts are chosen so that the exact number of reserves that may succeed is known whatever the
interleaving, and every figure is checked to the last of its 18 decimals: the balance, the
journal's own sum (in SQL on PostgreSQL), the count of reserves and settles, and, entry by entry,
that no reserve ever took the account below its overdraft limit.

``TURNLEDGER_CREDITS_PAIRS`` sets the number of pairs per scenario (default 500 on PostgreSQL;
SQLite runs a tenth of it, its writers taking turns on one database-wide lock). The two worker
processes are started once for the module and serve both databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


# -- the worker processes ----------------------------------------------------------------------
# A worker is started once per test module and serves one run per line of stdin: it reads a run's
# spec, connects, answers "armed", waits for "go" (so that both workers start together), runs
# every pair as its own task and answers with one JSON line. Start-up (importing LiteLLM takes
# seconds) is paid once, not once per run.


async def _run_pairs(spec: dict[str, Any]) -> dict[str, Any]:
    # A small pool per process: tasks queue for connections, and both processes still hold
    # several transactions open on the one account at every moment. The last of 500 tasks waits for
    # the 499 before it: on a loaded machine that passed SQLAlchemy's 30 s pool timeout (a full run
    # beside other work failed with QueuePool TimeoutError), and what is tested is exactness, not speed.
    engine = make_engine(spec["url"], pool_size=6, max_overflow=0, pool_timeout=600)
    ledger = CreditLedger(engine, hold_ttl=timedelta(hours=1))
    try:
        async with engine.connect() as conn:  # connected before "go", so that the start is simultaneous
            await conn.execute(text("SELECT 1"))
        print("armed", flush=True)
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
        return {"elapsed_s": time.perf_counter() - started, "results": results}
    finally:
        await engine.dispose()


def _worker_main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        print(json.dumps(asyncio.run(_run_pairs(json.loads(line)))), flush=True)


class Workers:
    """Two worker processes, started once and reused: ``with Workers() as w: w.run(url, halves)``."""

    def __init__(self, count: int = 2) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TURNLEDGER_DATABASE_URL"}
        # A file, not a pipe: a full pipe would block a worker. Closed in close().
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.integration.test_credits_concurrency"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
            )
            for _ in range(count)
        ]
        self.elapsed_s: list[float] = []
        """The concurrent phase's wall time of the slower worker, per run."""
        self._ready = False

    def _expect(self, proc: subprocess.Popen[str], word: str) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(word):
            self._stderr.seek(0)
            raise AssertionError(f"worker said {line!r}, not {word!r}: {self._stderr.read()[-3000:]}")
        return line

    def _send(self, proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def run(self, url: str, job_lists: list[list[Job]]) -> list[dict[str, Any]]:
        if not self._ready:
            for proc in self.procs:
                self._expect(proc, "ready")
            self._ready = True
        for proc, jobs in zip(self.procs, job_lists, strict=True):
            spec = {
                "url": url,
                "jobs": [
                    {"account": j.account, "key": j.key, "estimate": str(j.estimate), "actual": str(j.actual)}
                    for j in jobs
                ],
            }
            self._send(proc, json.dumps(spec))
        for proc in self.procs:
            self._expect(proc, "armed")
        for proc in self.procs:
            self._send(proc, "go")
        results: list[dict[str, Any]] = []
        elapsed = 0.0
        for proc in self.procs:
            answer = json.loads(self._expect(proc, "{"))
            elapsed = max(elapsed, answer["elapsed_s"])
            results.extend(answer["results"])
        self.elapsed_s.append(elapsed)
        return results

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stderr.close()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    with Workers() as started:
        yield started


# -- the test side -----------------------------------------------------------------------------
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


async def test_concurrent_pairs_from_two_processes_are_exact(engine: AsyncEngine, workers: Workers) -> None:
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
    results = workers.run(url, [exhaust[0] + partial[0], exhaust[1] + partial[1]])
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

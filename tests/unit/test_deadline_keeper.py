"""The deadline keeper: one thread ends every closing scope's wait at its deadline, on any loop.

A wait files its deadline and tells the thread only of one earlier than it sleeps until; these pin
what that must still give: each wait ends at its own deadline whatever waits came before it, on
several loops at once, and a closed loop or a finished turn is not kept alive by it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref

import pytest

import turnledger
from tests.unit.pending_calls import pending_call
from turnledger import CallStatus, TokenCallRecord, TurnTokenAccumulator
from turnledger import accumulator as acc
from turnledger.accumulator import PendingCall


@pytest.fixture(autouse=True)
def own_keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    # A keeper of the test's own, whatever waits earlier tests filed: its thread sleeps until the
    # deadlines these tests set (and sleeps on, idle, once the test is over).
    monkeypatch.setattr(acc, "_deadlines", acc._DeadlineKeeper())


def pending(call_id: str, *, answered: bool) -> PendingCall:
    return pending_call(call_id, call_details={"original_response": "{...}"} if answered else {})


def record(call_id: str) -> TokenCallRecord:
    return TokenCallRecord(call_id=call_id, model="m", prompt_tokens=1, completion_tokens=1, total_tokens=2)


async def close_with_a_call_in_flight(settle_timeout: float) -> float:
    """Seconds a scope's exit waited for a call that never reports (it gets settle_timeout)."""
    async with turnledger.scoped_turn(settle_timeout=settle_timeout, logging_timeout=3600) as turn:
        turn.begin_call(pending("never-reports", answered=False))
        started = time.monotonic()
    waited = time.monotonic() - started
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED]
    return waited


async def answered_wait_that_ends_early(logging_timeout: float) -> None:
    """A scope waits logging_timeout for an answered call, whose event comes at once: the keeper is
    left to wake at that long deadline, long after the wait is over."""
    async with turnledger.scoped_turn(settle_timeout=0.01, logging_timeout=logging_timeout) as turn:
        turn.begin_call(pending("answered", answered=True))
        asyncio.get_running_loop().call_later(0.01, turn.add, record("answered"))
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS]


async def test_a_deadline_ends_its_wait_when_the_keeper_sleeps_until_a_later_one() -> None:
    await answered_wait_that_ends_early(logging_timeout=3600)
    # The precondition: the thread sleeps until long after the next wait's deadline (the first wait's
    # logging_timeout, an hour away, or for ever once it has found that wait over). Its look at the
    # first wait's settle_timeout deadline, just passed, may be a few milliseconds late on a loaded
    # machine (seen once, the suite beside a valgrind bench): given up to 5 s.
    until = time.monotonic() + 5
    while acc._deadlines.wake_at <= time.monotonic() + 3000 and time.monotonic() < until:
        await asyncio.sleep(0.01)
    assert acc._deadlines.wake_at > time.monotonic() + 3000
    waited = await asyncio.wait_for(close_with_a_call_in_flight(0.2), 20)
    assert 0.15 < waited < 30, waited


async def test_a_later_deadline_ends_its_wait_after_the_keeper_woke_for_an_earlier_one() -> None:
    # The thread wakes at the first wait's deadline (the wait long over), finds the second filed
    # meanwhile, short of its deadline, and must sleep until that one rather than for ever.
    await answered_wait_that_ends_early(logging_timeout=0.3)
    waited = await asyncio.wait_for(close_with_a_call_in_flight(1.0), 20)
    assert 0.9 < waited < 30, waited


def test_waits_on_two_loops_in_two_threads_each_end_at_their_own_deadline() -> None:
    waited: dict[float, float] = {}
    failures: list[BaseException] = []

    def run(settle_timeout: float) -> None:
        try:
            waited[settle_timeout] = asyncio.run(asyncio.wait_for(close_with_a_call_in_flight(settle_timeout), 20))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in (0.2, 0.8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not failures
    assert 0.15 < waited[0.2] < 30 and 0.75 < waited[0.8] < 30, waited


def test_a_loop_closed_while_a_scope_waits_on_it_is_not_kept_alive() -> None:
    loop = asyncio.new_event_loop()
    turn = TurnTokenAccumulator(settle_timeout=3600)
    turn.begin_call(pending("never-reports", answered=False))
    closing = loop.create_task(turn.aclose())
    filed = len(acc._deadlines.waits)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(acc._deadlines.waits) == filed + 1, "the wait filed its deadline"
    loop.close()  # the wait still pending: nobody will run it again
    loop_ref, turn_ref, task_ref = weakref.ref(loop), weakref.ref(turn), weakref.ref(closing)
    del loop, turn, closing
    gc.collect()
    assert loop_ref() is None and turn_ref() is None and task_ref() is None
    assert len(acc._deadlines.waits) == filed


def test_a_deadline_that_passes_after_its_loop_closed_leaves_the_keeper_working() -> None:
    loop = asyncio.new_event_loop()
    turn = TurnTokenAccumulator(settle_timeout=0.2)
    turn.begin_call(pending("never-reports", answered=False))
    closing = loop.create_task(turn.aclose())  # held: its wait stays filed until the deadline
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    time.sleep(0.5)  # the deadline passes: the keeper finds the loop closed
    assert not any(ref() is not None and ref().get_loop() is loop for ref in list(acc._deadlines.waits))  # type: ignore[union-attr]
    assert acc._deadlines._thread is not None and acc._deadlines._thread.is_alive()
    waited = asyncio.run(asyncio.wait_for(close_with_a_call_in_flight(0.2), 20))
    assert 0.15 < waited < 30, waited
    del closing


async def test_a_finished_turn_is_not_kept_alive_by_its_wait() -> None:
    async with turnledger.scoped_turn(settle_timeout=0.01, logging_timeout=3600) as turn:
        turn.begin_call(pending("answered", answered=True))
        asyncio.get_running_loop().call_later(0.01, turn.add, record("answered"))
    turn_ref = weakref.ref(turn)
    del turn
    gc.collect()
    assert turn_ref() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_ends_its_waits_with_a_keeper_of_its_own() -> None:
    asyncio.run(asyncio.wait_for(close_with_a_call_in_flight(0.05), 20))  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            waited = asyncio.run(asyncio.wait_for(close_with_a_call_in_flight(0.2), 30))
            code = 0 if waited < 20 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

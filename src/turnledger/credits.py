"""Prepaid credits for a turn: :class:`credit_scope` reserves before the turn and settles its exact cost.

The ledger it draws on is :class:`CreditLedger` (:mod:`turnledger.credits_ledger`, which explains
how it keeps a balance exact and charges exactly once). This module is also the credits API in one
import: the ledger, its results and its errors are re-exported here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

from turnledger._logging import logger, problem_counts, warn_once
from turnledger.accumulator import TurnTokenAccumulator, scoped_turn
from turnledger.credits_arguments import DERIVED_KEY_SUFFIXES as DERIVED_KEY_SUFFIXES
from turnledger.credits_arguments import Amount as Amount
from turnledger.credits_arguments import UnpricedPolicy as UnpricedPolicy
from turnledger.credits_arguments import _amount as _amount
from turnledger.credits_arguments import _check_policy
from turnledger.credits_errors import ReservationClosed, UnpricedCallsError
from turnledger.credits_errors import TurnKeyReused as TurnKeyReused
from turnledger.credits_ledger import DEFAULT_HOLD_TTL, CreditLedger
from turnledger.credits_models import EntryKind
from turnledger.credits_results import AccountBalance, Entry, Reservation, TurnCharge, VerifyReport
from turnledger.errors import CreditError as CreditError
from turnledger.errors import InsufficientCredits as InsufficientCredits
from turnledger.errors import SchemaMissingError, StorageError
from turnledger.money import sum_costs

CANCELLED_SETTLE_GRACE = timedelta(seconds=10)
"""How long a cancelled :class:`credit_scope` still waits for its settle (ms when the database is well).
Unbounded, a database that hangs (a lock held by a stuck session, a peer gone without a word) would
make the request impossible to cancel, and its server impossible to stop."""

T = TypeVar("T")


def turn_charge(turn: TurnTokenAccumulator, estimate: Decimal, policy: UnpricedPolicy) -> tuple[Decimal, Decimal, int]:
    """``(charged, priced_cost, unpriced_calls)`` for a closed turn under ``policy``.

    ``free`` charges the priced calls only; ``estimate`` charges at least the reserved estimate
    when any call is unpriced (the estimate stands in for what nobody could price); ``error``
    charges the priced calls and lets the caller decide the rest.
    """
    _check_policy(policy)
    priced, unpriced = sum_costs(record.cost_usd for record in turn.calls)
    priced_cost = priced if priced is not None else Decimal(0)
    if unpriced and policy == "estimate":
        return max(priced_cost, estimate), priced_cost, unpriced
    return priced_cost, priced_cost, unpriced


class credit_scope:
    """A turn that is paid for: reserve ``estimate`` on entry, settle the turn's exact cost on exit.

        scope = credit_scope(ledger, account="u-42", estimate=Decimal("0.05"), user_id="u-42")
        async with scope as turn:
            await litellm.acompletion(...)
        scope.charge.charged        # Decimal('0.000405')

    Entry raises :class:`InsufficientCredits` before the block runs. On exit the turn closes as in
    :class:`scoped_turn` (calls that never reported become ``abandoned`` at their estimated cost)
    and its cost is settled, also when the block raised or was cancelled, however often (anyio
    cancels every await; the settle is finished first, the cancellation raised after it): calls that
    were made are paid for. Once cancelled, it waits for its settle at most ``cancel_grace`` (default
    :data:`CANCELLED_SETTLE_GRACE`) more, so a hung database cannot make it uncancellable. A settle
    that fails or runs out of that time is logged with the amount owed and how to settle it by hand,
    then raises (the cancellation, if there was one). Unpriced calls follow ``unpriced`` (see
    :func:`turn_charge`), are counted in :attr:`charge` either way and noted on the settle entry;
    under ``"error"`` an :class:`UnpricedCallsError` is raised after the priced part is settled
    (unless the block already raised).

    The reservation key defaults to ``turn:<turn_id>``. Pass a ``key`` that is stable across retries
    of one request and a retry neither reserves nor charges twice: its entry raises
    :class:`TurnKeyReused` before the block runs, because the block's calls would cost real money
    that the first attempt's settle could never charge. Late events, after the turn closed, change
    nothing: the turn's totals, and so the charge, are fixed when it closes. A reserve whose answer
    was lost (a :class:`StorageError`, the connection dropped after its COMMIT, say) is asked once
    more: a reservation this scope's own turn wrote is taken as its own and the block runs; any
    other still raises :class:`TurnKeyReused`.

    While the block runs, the scope renews its hold (:meth:`CreditLedger.renew`) every
    ``renew_every`` (default a third of the hold's ``ttl``), so a turn that runs longer than the TTL
    keeps its credits held; the TTL still frees them within ``ttl`` of a process that died. A failed
    renewal is logged (once per run of failures) and tried again at the next interval; it never
    reaches the block. Renewal stops when the turn has closed, before the settle, cancelled or not.

    Why a scope of its own rather than a ``credits=`` argument on :class:`scoped_turn`: the
    accumulator stays free of the database, and a refused reservation is an ordinary exception
    raised before any turn is opened.
    """

    def __init__(
        self,
        ledger: CreditLedger,
        *,
        account: str,
        estimate: Amount,
        key: str | None = None,
        turn: TurnTokenAccumulator | None = None,
        unpriced: UnpricedPolicy = "estimate",
        ttl: timedelta | None = None,
        renew_every: timedelta | None = None,
        cancel_grace: timedelta | None = None,
        **labels: Any,
    ) -> None:
        _check_policy(unpriced)
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        if renew_every is not None and renew_every <= timedelta(0):
            raise ValueError("renew_every must be positive")
        self.ledger = ledger
        self.account = account
        self.estimate = _amount(estimate, "estimate", minimum="zero")
        self.unpriced: UnpricedPolicy = unpriced
        self.ttl = ttl
        lifetime = ledger.hold_ttl if ttl is None else ttl
        self.renew_every = lifetime / 3 if renew_every is None else renew_every
        if self.renew_every >= lifetime:
            raise ValueError(f"renew_every must be shorter than the hold's ttl ({lifetime}), or the hold lapses first")
        self.cancel_grace = cancel_grace
        self._scope = scoped_turn(turn=turn, **labels)
        self.turn = self._scope.turn
        self.key = key or f"turn:{self.turn.turn_id}"
        self.reservation: Reservation | None = None
        """The turn's reservation; its ``expires_at`` follows the renewals."""
        self.charge: TurnCharge | None = None
        self._renewal: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TurnTokenAccumulator:
        self.reservation = await self._reserve()
        if self.reservation.replayed:
            raise TurnKeyReused(
                f"reservation key {self.key!r} was already used (turn {self.reservation.turn_id}); "
                "the turn is not run again, so nothing is spent that could not be charged",
                self.reservation,
            )
        turn = await self._scope.__aenter__()
        self._renewal = asyncio.create_task(self._keep_hold(), name=f"turnledger-renew-{self.reservation.id}")
        return turn

    async def _reserve(self) -> Reservation:
        began = self.ledger._now()

        async def reserve() -> Reservation:
            return await self.ledger.reserve(
                self.account, self.estimate, self.key, turn_id=self.turn.turn_id, ttl=self.ttl
            )

        try:
            return await reserve()
        except SchemaMissingError:
            raise
        except StorageError:
            # The reserve may have committed and only its answer been lost: asked again, the
            # ledger answers with what was written. A turn's id is its own (a uuid, unless the
            # caller names it), and a reservation written before this attempt began is another
            # attempt's, which this turn must not run under (see TurnKeyReused).
            again = await reserve()
        if again.replayed and again.turn_id == self.turn.turn_id and again.created_at >= began:
            return dataclasses.replace(again, replayed=False)
        return again

    async def _keep_hold(self) -> None:
        """Renew the reservation's hold every ``renew_every`` until cancelled; never raises."""
        failing = False
        while True:
            await asyncio.sleep(self.renew_every.total_seconds())
            assert self.reservation is not None
            try:
                self.reservation = await self.ledger.renew(self.reservation, self.ttl)
            except ReservationClosed as closed:
                # Nothing left to renew (the renewals came too late, or someone released it); the
                # settle still debits the turn's cost.
                problem_counts["credit_scope:renew"] += 1
                logger.warning("turnledger could not keep turn %s's credits held: %s", self.turn.turn_id, closed)
                return
            except Exception as failure:
                problem_counts["credit_scope:renew"] += 1
                if not failing:
                    logger.warning(
                        "turnledger could not renew the hold of turn %s (reservation %d, lapses at %s); "
                        "trying again every %s",
                        self.turn.turn_id,
                        self.reservation.id,
                        self.reservation.expires_at.isoformat(),
                        self.renew_every,
                        exc_info=failure,
                    )
                failing = True
            else:
                failing = False

    async def _stop_renewal(self, grace: float) -> asyncio.CancelledError | None:
        """Cancel the renewal and wait for it to end, at most ``grace`` seconds (a renewal stuck in a
        database that hangs is left to end on its own); the cancellation absorbed meanwhile."""
        renewal, self._renewal = self._renewal, None
        if renewal is None:
            return None
        renewal.cancel()
        _, absorbed = await _finish_despite_cancellation(renewal, True, grace)
        return absorbed

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.reservation is not None
        # A cancellation that arrives while the turn closes or settles (anyio, so Starlette and
        # FastAPI, cancels every await after the first) must not skip the settle: the calls were
        # made, and an unsettled hold just expires, so the turn would go unpaid without a word.
        # The turn closes anyway (what is still pending becomes abandoned); the settle is finished
        # and the cancellation raised after it.
        cancelled: asyncio.CancelledError | None = None
        grace = CANCELLED_SETTLE_GRACE if self.cancel_grace is None else self.cancel_grace
        try:
            # Calls still in flight may keep the turn open a while yet: the hold is renewed until it closes.
            await self._scope.__aexit__(exc_type, exc, tb)
        except asyncio.CancelledError as interrupted:
            cancelled = interrupted
        finally:
            stopped = await self._stop_renewal(grace.total_seconds())
        cancelled = cancelled or stopped
        charged, priced_cost, unpriced = turn_charge(self.turn, self.estimate, self.unpriced)
        # The journal is what a bill is argued from: a charge that is not the priced calls' sum
        # says so there, not only in a log line written once per process.
        note = f"{unpriced} unpriced call(s), settled under unpriced={self.unpriced!r}" if unpriced else None
        settle = self.ledger.settle(self.reservation, charged, note=note)
        # A task whose cancellation the body already met is cancelled already (asyncio cancels once).
        current = asyncio.current_task()
        already = cancelled is not None or (current is not None and current.cancelling() > 0)
        settling, late_cancel = await _finish_despite_cancellation(settle, already, grace.total_seconds())
        cancelled = cancelled or late_cancel
        try:
            if not settling.done():
                raise TimeoutError(f"the settle did not answer within {grace} of the cancellation")
            entry = settling.result()
        except (Exception, asyncio.CancelledError) as failure:
            _settle_failed(self.turn, self.reservation, charged, failure)
            if cancelled is not None:
                # The caller asked for a cancellation: an ordinary error in its place would be caught
                # by an error handler that then carries on with a cancelled request.
                raise cancelled from failure
            if isinstance(exc, asyncio.CancelledError):
                raise exc from failure
            raise
        self.charge = TurnCharge(
            reservation=self.reservation,
            entry=entry,
            charged=charged,
            priced_cost=priced_cost,
            unpriced_calls=unpriced,
            abandoned_calls=self.turn.abandoned_calls,
            policy=self.unpriced,
        )
        if unpriced:
            warn_once(
                f"credits.unpriced.{self.unpriced}",
                "turn %s made %d unpriced call(s); settled under unpriced=%r",
                self.turn.turn_id,
                unpriced,
                self.unpriced,
            )
        if cancelled is not None:
            raise cancelled
        if unpriced and self.unpriced == "error" and exc is None:
            raise UnpricedCallsError(
                f"turn {self.turn.turn_id} made {unpriced} unpriced call(s); settled {charged} for the priced ones",
                self.charge,
            )


def _settle_failed(
    turn: TurnTokenAccumulator, reservation: Reservation, charged: Decimal, failure: BaseException
) -> None:
    # Logged with everything needed to settle it by hand, each time: once its hold expires, nothing
    # else remembers that this turn's calls were made and not paid for.
    problem_counts["credit_scope:settle"] += 1
    logger.error(
        "turnledger could not settle turn %s: reservation %d on account %r owes %s; settle it with "
        "ledger.settle(await ledger.get_reservation(%d), Decimal(%r)) (its hold lapses at %s)",
        turn.turn_id,
        reservation.id,
        reservation.account,
        charged,
        reservation.id,
        str(charged),
        reservation.expires_at.isoformat(),
        exc_info=failure,
    )


async def _finish_despite_cancellation(
    work: Awaitable[T], already_cancelled: bool, grace: float
) -> tuple[asyncio.Future[T], asyncio.CancelledError | None]:
    """``work``, awaited to the end however often this task is cancelled meanwhile, but once it is
    cancelled (or ``already_cancelled``) for at most ``grace`` seconds more; then ``work`` is
    cancelled and left to end on its own. Returns ``work``'s future (not done when given up on) and
    the first cancellation absorbed here."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieve)
    deadline = loop.time() + grace if already_cancelled else None
    absorbed: asyncio.CancelledError | None = None
    while not task.done():
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            # asyncio.wait leaves ``work`` running when this task is cancelled.
            await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError as interrupted:
            absorbed = absorbed or interrupted
            if deadline is None:
                deadline = loop.time() + grace
            continue
        if not task.done():
            task.cancel()  # out of time: the caller logs what is owed
            break
    return task, absorbed


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A settle given up on may still fail later, with nobody awaiting it: the caller logged it already.
    if not task.cancelled():
        task.exception()


__all__ = [
    "DEFAULT_HOLD_TTL",
    "AccountBalance",
    "CreditLedger",
    "Entry",
    "EntryKind",
    "Reservation",
    "ReservationClosed",
    "TurnCharge",
    "UnpricedCallsError",
    "VerifyReport",
    "credit_scope",
    "turn_charge",
]

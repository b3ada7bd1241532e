"""CreditLedger on PostgreSQL and SQLite: every operation, idempotency, refusals, overdraft, expiry, verify."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger import (
    CreditError,
    CreditLedger,
    InsufficientCredits,
    Reservation,
    ReservationClosed,
    TokenCallRecord,
    TurnKeyReused,
    credit_scope,
)
from turnledger._logging import problem_counts
from turnledger.credits import Entry, EntryKind
from turnledger.errors import StorageError

pytestmark = pytest.mark.asyncio


class Clock:
    """A clock the test moves by hand, so expiry is tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(engine: AsyncEngine, clock: Clock) -> CreditLedger:
    return CreditLedger(engine, hold_ttl=timedelta(minutes=10), clock=clock)


async def test_reserve_settle_debits_the_actual_cost_and_frees_the_rest(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1.00"), "g-1")
    res = await ledger.reserve("acct", Decimal("0.25"), "r-1", turn_id="turn-1")
    held = await ledger.balance("acct")
    assert (held.balance, held.held, held.available) == (Decimal("1"), Decimal("0.25"), Decimal("0.75"))

    entry = await ledger.settle(res, Decimal("0.000123456789012345"))
    assert entry.kind is EntryKind.SETTLE
    assert entry.amount == Decimal("-0.000123456789012345")
    assert entry.hold_amount == Decimal("-0.25")
    assert entry.reservation_id == res.id and entry.turn_id == "turn-1"
    after = await ledger.balance("acct")
    assert (after.balance, after.held, after.available) == (
        Decimal("0.999876543210987655"),
        Decimal("0"),
        Decimal("0.999876543210987655"),
    )
    assert (await ledger.verify()).ok


async def test_every_operation_is_idempotent_on_its_key(ledger: CreditLedger) -> None:
    first_grant = await ledger.grant("acct", Decimal("5"), "g")
    again = await ledger.grant("acct", Decimal("5"), "g")
    assert again == first_grant and again.replayed and not first_grant.replayed

    res = await ledger.reserve("acct", Decimal("1"), "r")
    assert await ledger.reserve("acct", Decimal("1"), "r") == res
    settled = await ledger.settle(res, Decimal("0.4"))
    # A second settle of the same reservation, with another figure or another key, changes nothing.
    assert await ledger.settle(res, Decimal("0.9")) == settled
    assert await ledger.settle(res, Decimal("0.9"), key="other-key") == settled
    assert await ledger.release(res) == settled

    debit = await ledger.debit("acct", Decimal("0.1"), "d")
    assert await ledger.debit("acct", Decimal("0.1"), "d") == debit
    refund = await ledger.refund("acct", Decimal("0.05"), "rf")
    assert await ledger.refund("acct", Decimal("0.05"), "rf") == refund
    adjust = await ledger.adjust("acct", Decimal("-0.01"), "adj", note="rounding")
    assert await ledger.adjust("acct", Decimal("-0.01"), "adj") == adjust

    # 5 - 0.4 - 0.1 + 0.05 - 0.01, each applied once.
    assert (await ledger.balance("acct")).balance == Decimal("4.54")
    assert len(await ledger.history("acct")) == 6
    assert (await ledger.verify()).ok


async def test_a_key_used_for_another_operation_or_account_is_refused(ledger: CreditLedger) -> None:
    await ledger.grant("a", Decimal("1"), "k")
    await ledger.grant("b", Decimal("1"), "kb")
    with pytest.raises(CreditError, match="already used for a grant"):
        await ledger.debit("a", Decimal("0.1"), "k")
    with pytest.raises(CreditError, match="already used"):
        await ledger.grant("b", Decimal("1"), "k")
    with pytest.raises(CreditError, match="already used"):
        await ledger.reserve("a", Decimal("0.1"), "k")
    assert (await ledger.balance("a")).balance == Decimal("1")
    assert (await ledger.balance("b")).balance == Decimal("1")


async def test_reserve_and_debit_refuse_beyond_available_and_write_nothing(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    await ledger.reserve("acct", Decimal("0.6"), "r1")
    with pytest.raises(InsufficientCredits, match=r"available 0\.4 "):
        await ledger.reserve("acct", Decimal("0.41"), "r2")
    with pytest.raises(InsufficientCredits):
        await ledger.debit("acct", Decimal("0.400000000000000001"), "d1")
    exact = await ledger.reserve("acct", Decimal("0.4"), "r2")  # the refused key is free to succeed later
    assert exact.amount == Decimal("0.4")
    assert (await ledger.balance("acct")).available == Decimal("0")
    assert [e.kind for e in await ledger.history("acct")] == [EntryKind.GRANT, EntryKind.RESERVE, EntryKind.RESERVE]


async def test_overdraft_limit_extends_available(ledger: CreditLedger) -> None:
    await ledger.open_account("acct", overdraft_limit=Decimal("0.5"))
    await ledger.grant("acct", Decimal("1"), "g")
    await ledger.debit("acct", Decimal("1.5"), "d1")
    bal = await ledger.balance("acct")
    assert (bal.balance, bal.available) == (Decimal("-0.5"), Decimal("0"))
    with pytest.raises(InsufficientCredits):
        await ledger.reserve("acct", Decimal("0.000000000000000001"), "r")
    await ledger.reserve("acct", Decimal("0"), "r0")  # a free turn still reserves


async def test_settle_beyond_the_hold_debits_the_full_actual_cost(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.1"), "r")
    entry = await ledger.settle(res, Decimal("1.25"))
    # The calls were made: the provider bills them, so the account owes them.
    assert (entry.amount, entry.balance_after) == (Decimal("-1.25"), Decimal("-0.25"))
    assert (await ledger.verify()).ok


async def test_release_frees_the_hold_without_charging(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.7"), "r")
    released = await ledger.release(res)
    assert (released.kind, released.amount, released.hold_amount) == (EntryKind.RELEASE, Decimal(0), Decimal("-0.7"))
    assert await ledger.release(res) == released
    bal = await ledger.balance("acct")
    assert (bal.balance, bal.held) == (Decimal("1"), Decimal("0"))
    # Settling after a release still charges what was used (hold_amount 0: nothing left to free).
    settled = await ledger.settle(res, Decimal("0.2"))
    assert (settled.amount, settled.hold_amount) == (Decimal("-0.2"), Decimal(0))
    assert (await ledger.verify()).ok


async def test_expired_holds_are_released_by_expire_holds(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.grant("a", Decimal("1"), "ga")
    await ledger.grant("b", Decimal("1"), "gb")
    await ledger.reserve("a", Decimal("0.3"), "ra")
    await ledger.reserve("b", Decimal("0.4"), "rb", ttl=timedelta(hours=1))
    clock.advance(minutes=9)
    assert await ledger.expire_holds() == []
    clock.advance(minutes=1)
    released = await ledger.expire_holds()
    assert [(e.account, e.kind, e.hold_amount, e.note) for e in released] == [
        ("a", EntryKind.RELEASE, Decimal("-0.3"), "hold expired")
    ]
    assert (await ledger.balance("b")).held == Decimal("0.4")
    assert (await ledger.verify()).ok


async def test_expired_holds_are_released_lazily_when_the_account_is_touched(
    ledger: CreditLedger, clock: Clock
) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    await ledger.reserve("acct", Decimal("0.9"), "r1")
    with pytest.raises(InsufficientCredits):
        await ledger.reserve("acct", Decimal("0.5"), "r2")
    clock.advance(minutes=11)
    # The reserve that needs the credits finds the dead hold and releases it first.
    await ledger.reserve("acct", Decimal("0.5"), "r2")
    kinds = [(e.kind, e.note) for e in await ledger.history("acct")]
    assert kinds == [
        (EntryKind.GRANT, None),
        (EntryKind.RESERVE, None),
        (EntryKind.RELEASE, "hold expired"),
        (EntryKind.RESERVE, None),
    ]
    clock.advance(minutes=11)
    # A plain balance read releases expired holds too.
    bal = await ledger.balance("acct")
    assert (bal.held, bal.available) == (Decimal(0), Decimal(1))


async def test_settle_after_the_hold_expired_still_charges_once(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.5"), "r")
    clock.advance(hours=1)
    # The turn ran long; its settle arrives before anyone expired the hold: it closes it itself.
    entry = await ledger.settle(res, Decimal("0.2"))
    assert (entry.amount, entry.hold_amount, entry.note) == (Decimal("-0.2"), Decimal("-0.5"), None)
    assert [e.kind for e in await ledger.history("acct")] == [EntryKind.GRANT, EntryKind.RESERVE, EntryKind.SETTLE]

    res2 = await ledger.reserve("acct", Decimal("0.5"), "r2")
    clock.advance(hours=1)
    assert len(await ledger.expire_holds("acct")) == 1
    late = await ledger.settle(res2, Decimal("0.3"))
    assert (late.amount, late.hold_amount) == (Decimal("-0.3"), Decimal(0))
    assert late.note is not None and "already been released" in late.note
    assert (await ledger.balance("acct")).balance == Decimal("0.5")
    assert (await ledger.verify()).ok


async def test_unknown_accounts_and_bad_amounts_are_refused(ledger: CreditLedger) -> None:
    # Spending from an account nobody opened is refused as spending from an empty one: a web app's
    # handler for InsufficientCredits answers a user who was never granted anything too.
    with pytest.raises(InsufficientCredits, match="no credit account 'ghost'"):
        await ledger.reserve("ghost", Decimal("1"), "r")
    with pytest.raises(InsufficientCredits, match="no credit account 'ghost'"):
        await ledger.debit("ghost", Decimal("1"), "d")
    with pytest.raises(CreditError, match="no credit account"):
        await ledger.balance("ghost")
    with pytest.raises(ValueError, match="positive"):
        await ledger.grant("acct", Decimal("0"), "g")
    with pytest.raises(TypeError, match="float"):
        await ledger.grant("acct", 0.1, "g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        await ledger.reserve("acct", Decimal("-1"), "r")


async def test_amounts_are_stored_to_18_places_rounded_half_even_once(ledger: CreditLedger) -> None:
    entry = await ledger.grant("acct", Decimal("0.0000000000000000025"), "g")
    assert entry.amount == Decimal("0.000000000000000002")
    entry = await ledger.grant("acct", Decimal("12345678901234567890.123456789012345678"), "big")
    assert entry.balance_after == Decimal("12345678901234567890.12345678901234568")
    assert (await ledger.balance("acct")).balance == Decimal("12345678901234567890.12345678901234568")
    assert (await ledger.verify()).ok


async def test_journal_entries_cannot_be_edited(engine: AsyncEngine, ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE credit_journal SET amount = '2'"))
    assert (await ledger.verify()).ok


async def test_verify_reports_a_balance_that_does_not_match_its_journal(
    engine: AsyncEngine, ledger: CreditLedger
) -> None:
    await ledger.grant("acct", Decimal("1"), "g1")
    await ledger.grant("acct", Decimal("2"), "g2")
    await ledger.grant("other", Decimal("2"), "g3")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE credit_accounts SET balance = '3.5' WHERE account_id = 'acct'"))
        await conn.execute(text("DELETE FROM credit_journal WHERE idempotency_key = 'g1'"))
    report = await ledger.verify()
    assert not report.ok
    assert (report.accounts, report.entries) == (2, 2)
    assert any("acct: balance 3.5 but the journal sums to 2" in p for p in report.problems), report.problems
    # The deleted first entry breaks the chain of running balances at the next one.
    assert any("acct: entry" in p and "records balance 3" in p for p in report.problems), report.problems
    assert (await ledger.verify("other")).ok


async def test_the_longest_key_still_settles_and_expires(ledger: CreditLedger, clock: Clock) -> None:
    longest = "k" * 200
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.5"), longest)
    assert (await ledger.settle(res, Decimal("0.1"))).key == longest + "/settle"
    other = await ledger.reserve("acct", Decimal("0.5"), longest[:-1] + "x")
    clock.advance(hours=1)
    [expired] = await ledger.expire_holds()
    assert expired.key == other.key + "/expired"
    with pytest.raises(ValueError, match="at most 200"):
        await ledger.reserve("acct", Decimal("0.5"), longest + "k")
    with pytest.raises(ValueError, match="at most 200"):
        await ledger.settle(other, Decimal("0.1"), key=longest + "k")


async def test_a_reservation_can_be_found_by_id_from_another_process(ledger: CreditLedger) -> None:
    grant = await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.5"), "r", turn_id="t-9")
    assert await ledger.get_reservation(res.id) == res
    assert await ledger.get_reservation(grant.id) is None
    assert await ledger.get_reservation(10**9) is None


async def test_a_replay_returns_its_first_result_even_when_the_account_could_no_longer_afford_it(
    ledger: CreditLedger,
) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.6"), "r")
    debit = await ledger.debit("acct", Decimal("0.4"), "d")
    assert (await ledger.balance("acct")).available == Decimal(0)
    assert await ledger.reserve("acct", Decimal("0.6"), "r") == res
    assert await ledger.debit("acct", Decimal("0.4"), "d") == debit
    assert len(await ledger.history("acct")) == 3


async def test_a_settle_key_cannot_close_another_reservation(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    first = await ledger.reserve("acct", Decimal("0.2"), "r1")
    second = await ledger.reserve("acct", Decimal("0.2"), "r2")
    await ledger.settle(first, Decimal("0.1"), key="shared")
    with pytest.raises(CreditError, match="another reservation"):
        await ledger.settle(second, Decimal("0.1"), key="shared")
    assert (await ledger.balance("acct")).held == Decimal("0.2")


async def test_an_amount_that_rounds_to_nothing_is_refused_and_no_entry_shows_minus_zero(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    tiny = Decimal("0.0000000000000000004")  # 4e-19: 0 at the stored 18 places
    operations: list[Callable[[str, Decimal, str], Awaitable[Entry]]] = [
        ledger.grant,
        ledger.debit,
        ledger.refund,
        ledger.adjust,
    ]
    for operation in operations:
        for amount in (tiny, -tiny) if operation == ledger.adjust else (tiny,):
            with pytest.raises(ValueError, match="rounds to 0"):
                await operation("acct", amount, "tiny")
    assert [e.key for e in await ledger.history("acct")] == ["g"]
    res = await ledger.reserve("acct", Decimal("-0"), "r")
    settled = await ledger.settle(res, tiny)  # a cost may be 0: charged 0, written as 0, not -0
    assert [str(v) for v in (res.amount, settled.amount, settled.hold_amount)] == ["0", "0", "0"]
    assert [str(e.amount) for e in await ledger.history("acct")] == ["1", "0", "0"]
    assert (await ledger.verify()).ok


async def test_an_entry_that_would_overflow_the_balance_is_refused_in_the_ledgers_words(ledger: CreditLedger) -> None:
    most = Decimal("99999999999999999999")  # 20 integer digits: the most one amount or balance holds
    await ledger.grant("rich", most, "g-most")
    with pytest.raises(ValueError, match="account 'rich': this grant would take its balance to 100000000000000000000,"):
        await ledger.grant("rich", Decimal("1"), "g-more")

    await ledger.grant("debtor", Decimal("1"), "g-1")
    res = await ledger.reserve("debtor", Decimal("1"), "r")
    await ledger.adjust("debtor", -most, "adj")
    with pytest.raises(ValueError, match="this settle would take its balance to -100000000000000000001,"):
        await ledger.settle(res, Decimal("3"))
    # Refused as a whole: the hold is still open, for a settle that the ledger can hold.
    assert (await ledger.balance("debtor")).held == Decimal("1")
    settled = await ledger.settle(res, Decimal("0.5"))
    assert settled.balance_after == Decimal("-99999999999999999998.5")
    assert [e.key for e in await ledger.history("debtor")] == ["g-1", "r", "adj", "r/settle"]
    assert [e.key for e in await ledger.history("rich")] == ["g-most"]
    assert (await ledger.verify()).ok


async def test_a_note_or_turn_id_longer_than_an_entry_keeps_is_refused_not_cut(ledger: CreditLedger) -> None:
    longest = "n" * 200
    kept = await ledger.grant("acct", Decimal("1"), "g", turn_id="t" * 200, note=longest)
    assert (await ledger.history("acct"))[0].note == kept.note == longest
    with pytest.raises(ValueError, match="note must be a string of at most 200 characters"):
        await ledger.grant("acct", Decimal("1"), "g-2", note=longest + "!")
    with pytest.raises(ValueError, match="turn_id must be a string of at most 200 characters"):
        await ledger.reserve("acct", Decimal("0.1"), "r", turn_id="t" * 201)
    res = await ledger.reserve("acct", Decimal("0.1"), "r")
    with pytest.raises(ValueError, match="note must be"):
        await ledger.settle(res, Decimal("0.1"), note=longest + "!")
    assert [e.key for e in await ledger.history("acct")] == ["g", "r"]


async def test_a_late_settle_keeps_the_callers_note_and_says_the_hold_was_gone(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.5"), "r")
    await ledger.release(res)
    late = await ledger.settle(res, Decimal("0.1"), note="1 unpriced call(s)")
    assert late.note == "1 unpriced call(s); hold had already been released; actual cost debited anyway"
    res2 = await ledger.reserve("acct", Decimal("0.5"), "r2")
    await ledger.release(res2)
    assert (await ledger.settle(res2, Decimal("0.1"), note="n" * 200)).note == "n" * 200


async def test_a_turn_whose_settle_fails_is_logged_with_what_it_owes(
    ledger: CreditLedger, caplog: pytest.LogCaptureFixture
) -> None:
    await ledger.grant("acct", Decimal("1"), "g")

    async def settle_fails(*args: object, **kwargs: object) -> Entry:
        raise StorageError("the credit ledger could not read or write the database: ConnectionResetError")

    scope = credit_scope(ledger, account="acct", estimate=Decimal("0.05"))
    with pytest.raises(StorageError), caplog.at_level(logging.ERROR, logger="turnledger"):
        async with scope as turn:
            turn.add(TokenCallRecord(call_id="made", model="m", cost_usd=Decimal("0.003")))
            ledger.settle = settle_fails  # type: ignore[method-assign]
    assert scope.reservation is not None and scope.charge is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = record.getMessage()
    assert f"could not settle turn {turn.turn_id}" in message
    assert f"reservation {scope.reservation.id} on account 'acct' owes 0.003" in message
    assert problem_counts["credit_scope:settle"] == 1
    # What the log says is enough to charge the turn by hand, once.
    del ledger.settle
    reservation = await ledger.get_reservation(scope.reservation.id)
    assert reservation is not None
    await ledger.settle(reservation, Decimal("0.003"))
    assert (await ledger.balance("acct")).balance == Decimal("0.997")


async def test_a_key_shaped_like_a_derived_one_is_refused_so_every_reservation_can_close(ledger: CreditLedger) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    for key in ("req-7/settle", "req-7/release", "req-7/expired"):
        with pytest.raises(ValueError, match="must not end in /settle, /release, /expired"):
            await ledger.reserve("acct", Decimal("0.1"), key)
    with pytest.raises(ValueError, match="must not end in"):
        await ledger.grant("acct", Decimal("1"), "top-up/settle")
    res = await ledger.reserve("acct", Decimal("0.1"), "req-7")
    with pytest.raises(ValueError, match="must not end in"):
        await ledger.settle(res, Decimal("0.05"), key="other/settle")
    # Its own derived keys, passed explicitly, are what they would have been anyway.
    settled = await ledger.settle(res, Decimal("0.05"), key=res.settle_key)
    assert settled.key == "req-7/settle"
    assert await ledger.release(res, key=res.release_key) == settled
    assert (await ledger.balance("acct")).balance == Decimal("0.95")


async def test_a_reserve_retried_with_its_key_returns_its_reservation_and_another_estimate_is_refused(
    ledger: CreditLedger,
) -> None:
    # A retry whose first answer was lost (the connection dropped after the COMMIT) sends the same key.
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.3"), "req-1", turn_id="t-1")
    again = await ledger.reserve("acct", Decimal("0.30"), "req-1", turn_id="t-1")
    assert again == res and again.replayed
    # The same key asking for another amount is another request: it must not be told its hold is in place.
    with pytest.raises(
        CreditError, match=r"'req-1' was already used for a reservation of 0\.3 on account 'acct', not 0\.5"
    ):
        await ledger.reserve("acct", Decimal("0.5"), "req-1")
    # Also when the account could not afford the new amount (the refusal is about the key, not the balance).
    with pytest.raises(CreditError, match=r"already used for a reservation of 0\.3"):
        await ledger.reserve("acct", Decimal("5"), "req-1")
    assert [e.kind for e in await ledger.history("acct")] == [EntryKind.GRANT, EntryKind.RESERVE]
    assert (await ledger.balance("acct")).held == Decimal("0.3")


async def test_renew_keeps_an_open_hold_past_its_first_ttl(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    res = await ledger.reserve("acct", Decimal("0.8"), "long-turn")
    clock.advance(minutes=8)
    renewed = await ledger.renew(res)
    assert renewed.expires_at == clock.now + timedelta(minutes=10)
    assert (renewed.id, renewed.amount, renewed.key) == (res.id, res.amount, res.key)
    # Idempotent, and never shortens a hold.
    assert (await ledger.renew(renewed)).expires_at == renewed.expires_at
    assert (await ledger.renew(res, ttl=timedelta(minutes=1))).expires_at == renewed.expires_at
    assert (await ledger.get_reservation(res.id)) == renewed
    assert (await ledger.get_reservation(res.id) or res).expires_at == renewed.expires_at
    assert (await ledger.reserve("acct", Decimal("0.8"), "long-turn")).expires_at == renewed.expires_at

    clock.advance(minutes=8)  # 16 minutes in: past the first expiry, not the renewed one
    with pytest.raises(InsufficientCredits):
        await ledger.reserve("acct", Decimal("0.8"), "other-turn")
    assert (await ledger.balance("acct")).held == Decimal("0.8")
    settled = await ledger.settle(renewed, Decimal("0.7"))
    assert (settled.amount, settled.hold_amount) == (Decimal("-0.7"), Decimal("-0.8"))
    bal = await ledger.balance("acct")
    assert (bal.balance, bal.held) == (Decimal("0.3"), Decimal(0))
    assert (await ledger.verify()).ok


async def test_renew_refuses_a_reservation_that_is_no_longer_open(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.grant("acct", Decimal("1"), "g")
    settled = await ledger.reserve("acct", Decimal("0.1"), "settled")
    settle = await ledger.settle(settled, Decimal("0.05"))
    released = await ledger.reserve("acct", Decimal("0.1"), "released")
    release = await ledger.release(released)
    lapsed = await ledger.reserve("acct", Decimal("0.1"), "lapsed")
    with pytest.raises(ReservationClosed, match=r"reservation \d+ on account 'acct' was already settled") as info:
        await ledger.renew(settled)
    assert info.value.closed_by == settle and info.value.reservation == settled
    with pytest.raises(ReservationClosed, match="was already released") as info:
        await ledger.renew(released)
    assert info.value.closed_by == release
    clock.advance(minutes=10)
    # Past its expiry, a hold is expired even before anything released it: any operation on the
    # account could release it at that moment and give its credits to another turn.
    with pytest.raises(ReservationClosed, match="has expired") as info:
        await ledger.renew(lapsed, ttl=timedelta(hours=1))
    assert info.value.closed_by.key == "lapsed/expired"
    assert (await ledger.history("acct"))[-1].key == "lapsed/expired"  # that release is kept
    # A retried reserve still answers with the first result and holds nothing new.
    replay = await ledger.reserve("acct", Decimal("0.1"), "lapsed")
    assert replay == lapsed and replay.replayed and replay.expires_at <= clock.now
    assert (await ledger.balance("acct")).held == Decimal(0)
    with pytest.raises(ValueError, match="ttl must be positive"):
        await ledger.renew(lapsed, ttl=timedelta(0))
    assert (await ledger.verify()).ok


async def _renewed_until(scope: credit_scope, expires_at: datetime) -> None:
    """Waits for the scope's renewals to move its hold to ``expires_at`` (a hang guard bounds it)."""

    async def renewed() -> None:
        while scope.reservation is None or scope.reservation.expires_at < expires_at:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(renewed(), 10)


async def test_a_scope_renews_its_hold_while_its_turn_runs_past_the_ttl(ledger: CreditLedger, clock: Clock) -> None:
    # A long agent loop: without renewal its hold lapses while it still spends, another turn
    # reserves the same credits, and the account overdraws when both settle.
    await ledger.grant("acct", Decimal("1"), "g")
    scope = credit_scope(ledger, account="acct", estimate=Decimal("0.8"), renew_every=timedelta(milliseconds=5))
    async with scope as turn:
        for _ in range(3):
            clock.advance(minutes=8)  # each step past where the hold stood two steps before
            await _renewed_until(scope, clock.now + timedelta(minutes=10))
        with pytest.raises(InsufficientCredits):
            async with credit_scope(ledger, account="acct", estimate=Decimal("0.8")):
                pass
        turn.add(TokenCallRecord(call_id="c", model="m", cost_usd=Decimal("0.7")))
    assert scope.charge is not None and scope.charge.charged == Decimal("0.7")
    bal = await ledger.balance("acct")
    assert (bal.balance, bal.held) == (Decimal("0.3"), Decimal(0))
    assert (await ledger.verify()).ok


async def test_a_failing_renewal_is_logged_once_retried_and_never_reaches_the_turn(
    engine: AsyncEngine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyLedger(CreditLedger):
        failures = 3

        async def renew(self, reservation: Reservation, ttl: timedelta | None = None) -> Reservation:
            if self.failures:
                self.failures -= 1
                raise StorageError("the credit ledger could not read or write the database: ConnectionResetError")
            return await super().renew(reservation, ttl)

    ledger = FlakyLedger(engine, hold_ttl=timedelta(minutes=10), clock=clock)
    await ledger.grant("acct", Decimal("1"), "g")
    scope = credit_scope(ledger, account="acct", estimate=Decimal("0.5"), renew_every=timedelta(milliseconds=5))
    with caplog.at_level(logging.WARNING, logger="turnledger"):
        async with scope as turn:
            clock.advance(minutes=5)
            await _renewed_until(scope, clock.now + timedelta(minutes=10))
            turn.add(TokenCallRecord(call_id="c", model="m", cost_usd=Decimal("0.2")))
    assert scope.reservation is not None and scope.reservation.expires_at == clock.now + timedelta(minutes=10)
    [logged] = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert f"reservation {scope.reservation.id}" in logged.getMessage()
    assert problem_counts["credit_scope:renew"] == 3
    assert scope.charge is not None and (await ledger.balance("acct")).balance == Decimal("0.8")


async def test_a_cancelled_scope_stops_a_renewal_in_flight_and_still_settles(engine: AsyncEngine, clock: Clock) -> None:
    class HungRenewLedger(CreditLedger):
        """Its renew never answers (a database that hangs) until cancelled."""

        renewing = asyncio.Event()

        async def renew(self, reservation: Reservation, ttl: timedelta | None = None) -> Reservation:
            self.renewing.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    ledger = HungRenewLedger(engine, hold_ttl=timedelta(minutes=10), clock=clock)
    await ledger.grant("acct", Decimal("1"), "g")
    scope = credit_scope(ledger, account="acct", estimate=Decimal("0.5"), renew_every=timedelta(milliseconds=5))
    renewals: list[asyncio.Task[None] | None] = []

    async def handler() -> None:
        async with scope as turn:
            renewals.append(scope._renewal)
            turn.add(TokenCallRecord(call_id="c", model="m", cost_usd=Decimal("0.2")))
            await asyncio.sleep(3600)

    task = asyncio.create_task(handler())
    await asyncio.wait_for(ledger.renewing.wait(), 10)
    while not task.done():  # cancelled at every await, as anyio does
        task.cancel()
        await asyncio.sleep(0)
    with pytest.raises(asyncio.CancelledError):
        await task
    [renewal] = renewals
    assert renewal is not None and renewal.done() and scope._renewal is None
    assert scope.charge is not None and scope.charge.charged == Decimal("0.2")
    bal = await ledger.balance("acct")
    assert (bal.balance, bal.held) == (Decimal("0.8"), Decimal(0))


class _LostAnswerLedger(CreditLedger):
    """A ledger whose next reserve commits and then loses its answer (the connection dropped after COMMIT)."""

    lose_next = False

    async def reserve(self, *args: Any, **kwargs: Any) -> Reservation:
        reservation = await super().reserve(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StorageError("the credit ledger could not read or write the database: ConnectionDoesNotExistError")
        return reservation


async def test_a_scope_whose_reserve_lost_its_answer_runs_under_the_reservation_it_made(
    engine: AsyncEngine, clock: Clock
) -> None:
    ledger = _LostAnswerLedger(engine, clock=clock)
    await ledger.grant("acct", Decimal("1"), "g")
    ledger.lose_next = True
    scope = credit_scope(ledger, account="acct", estimate=Decimal("0.5"), key="req-7", turn_id="t-7")
    async with scope as turn:
        turn.add(TokenCallRecord(call_id="c", model="m", cost_usd=Decimal("0.2")))
    assert scope.reservation is not None and not scope.reservation.replayed
    assert scope.charge is not None and scope.charge.charged == Decimal("0.2")
    assert [e.kind for e in await ledger.history("acct")] == [EntryKind.GRANT, EntryKind.RESERVE, EntryKind.SETTLE]

    # A reservation this scope did not write is still another attempt's, however its answer was
    # lost: the same turn id (the caller named it) from an attempt that began before, or another turn.
    for turn_id in ("t-7", None):
        clock.advance(seconds=1)
        ledger.lose_next = True
        ran = False
        with pytest.raises(TurnKeyReused):
            async with credit_scope(ledger, account="acct", estimate=Decimal("0.5"), key="req-7", turn_id=turn_id):
                ran = True
        assert not ran
    assert (await ledger.balance("acct")).balance == Decimal("0.8")

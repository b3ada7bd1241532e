"""``turnledger credits balance|grant|history|verify|expire``: the credit ledger from the shell."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from turnledger.cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    DatabaseUrlOption,
    app,
    console,
    fail,
    parse_when,
    require_order,
)
from turnledger.cli.output import shown
from turnledger.cli.plain_flags import PlainFlagsTyper

if TYPE_CHECKING:
    # Imported when a command runs, not when the CLI starts: `turnledger --help` stays fast.
    from turnledger.credits import CreditLedger, Entry

T = TypeVar("T")

credits_app = PlainFlagsTyper(
    name="credits",
    help="Prepaid credits: balances, grants, the journal, verification and hold expiry.",
    no_args_is_help=True,
)
app.add_typer(credits_app, name="credits")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
AccountArg = Annotated[str, typer.Argument(help="The account id.")]


def _say(text: str) -> None:
    # No wrapping and no highlighting: a line per entry, digits as they are, for people and grep. No
    # markup either: an account id or a note is data ("[/]" would raise after a grant committed).
    console.print(shown(text), markup=False, highlight=False, soft_wrap=True)


def _money(value: Decimal) -> str:
    # Fixed-point always: a bill never shows 1E-7.
    return format(value, "f")


def _run(fn: Callable[[CreditLedger], Awaitable[T]], database_url: str | None) -> T:
    """Run ``fn(ledger)`` on a fresh engine and map every failure to a one-line error and an exit code."""
    from turnledger.cli.db import refuse_missing_sqlite_file, settled
    from turnledger.credits import CreditLedger
    from turnledger.store.engine import make_engine

    # No credits command creates the tables (migrate does): a mistyped SQLite path must not leave an empty file.
    refuse_missing_sqlite_file(database_url)

    async def go() -> T:
        engine = make_engine(database_url)
        try:
            return await fn(CreditLedger(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(settled(go()))
    except Exception as exc:
        described = _credit_failure(exc, database_url)
        if described is None:
            raise
        fail(*described)


def _credit_failure(exc: Exception, database_url: str | None) -> tuple[str, int] | None:
    """The message and exit code for a failed credits command: the ledger's refusals in its own words, a
    database's errors as every command says them (the URL masked, and where it came from)."""
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    from turnledger.cli.db import describe, shown_url, url_source
    from turnledger.errors import CreditError, StorageError

    where = f"{shown_url(database_url)} ({url_source(database_url)})"
    if isinstance(exc, CreditError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, StorageError) and isinstance(exc.__cause__, IntegrityError):
        return f"database {where}: {exc}", EXIT_FAILED  # the ledger's words say more than the constraint's
    described = describe(exc, database_url)
    if described is not None:
        return described
    if isinstance(exc, ValueError | TypeError):  # the ledger refusing an argument (an account id too long...)
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, SQLAlchemyError):
        return f"database {where}: {type(exc).__name__}", EXIT_FAILED
    return None


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "key": entry.key,
        "account": entry.account,
        "kind": entry.kind.value,
        "amount": _money(entry.amount),
        "hold_amount": _money(entry.hold_amount),
        "balance_after": _money(entry.balance_after),
        "held_after": _money(entry.held_after),
        "turn_id": entry.turn_id,
        "reservation_id": entry.reservation_id,
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
        "note": entry.note,
        "created_at": entry.created_at.isoformat(),
        "replayed": entry.replayed,
    }


def _print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and colour the JSON a script has to parse.
    print(json.dumps(data, indent=2))


@credits_app.command(
    "balance", epilog=("Examples:\n\n  turnledger credits balance u-42\n\n  turnledger credits balance u-42 --json\n\n")
)
def balance(account: AccountArg, database_url: DatabaseUrlOption = None, as_json: JsonOption = False) -> None:
    """Show an account's balance, held credits, overdraft limit and what is available."""
    result = _run(lambda ledger: ledger.balance(account), database_url)
    if as_json:
        _print_json(
            {
                "account": result.account,
                "balance": _money(result.balance),
                "held": _money(result.held),
                "overdraft_limit": _money(result.overdraft_limit),
                "available": _money(result.available),
            }
        )
        return
    _say(
        f"{result.account}: balance {_money(result.balance)}  held {_money(result.held)}  "
        f"overdraft {_money(result.overdraft_limit)}  available {_money(result.available)}"
    )


@credits_app.command(
    "grant",
    epilog=(
        "Examples:\n\n"
        '  turnledger credits grant u-42 10 --key invoice-2026-11-0042 --note "November top-up"\n\n'
        "  turnledger credits grant u-42 2.50 --key refund-1234\n\n"
    ),
)
def grant(
    account: AccountArg,
    amount: Annotated[str, typer.Argument(help="USD to add, e.g. 10 or 2.50.")],
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key; the same key again changes nothing.")
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="A note kept with the entry.")] = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add credits to an account (created if new)."""
    value = _parse_amount(amount)
    # Only a missing --key gets a fresh one: an empty one is refused, not silently replaced by a
    # key that makes the grant unrepeatable.
    grant_key = key if key is not None else f"cli-grant-{uuid.uuid4().hex}"
    entry = _run(lambda ledger: ledger.grant(account, value, grant_key, note=note), database_url)
    if as_json:
        _print_json(_entry_json(entry))
        return
    verb = "already granted (key replayed)" if entry.replayed else "granted"
    _say(f"{entry.account}: {verb} {_money(entry.amount)}, balance {_money(entry.balance_after)} (key {entry.key})")


@credits_app.command(
    "history",
    epilog=(
        "Examples:\n\n"
        "  turnledger credits history u-42 --since 7d\n\n"
        "  turnledger credits history u-42 --limit 10 --json\n\n"
    ),
)
def history(
    account: AccountArg,
    since: Annotated[str | None, typer.Option("--since", help="e.g. 7d, 24h, 2026-11-01.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="e.g. 1h, 2026-11-02.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (the newest).")] = 50,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an account's journal, oldest first."""
    start = parse_when(since, option="--since")
    end = parse_when(until, option="--until")
    require_order(start, end)
    entries = _run(lambda ledger: ledger.history(account, since=start, until=end, limit=limit), database_url)
    if as_json:
        _print_json([_entry_json(e) for e in entries])
        return
    if not entries:
        _say(f"{account}: no entries")
        return
    for e in entries:
        turn = f"  turn {e.turn_id}" if e.turn_id else ""
        note = f"  ({e.note})" if e.note else ""
        _say(
            f"{e.created_at:%Y-%m-%d %H:%M:%S}  #{e.id:<6} {e.kind.value:<8} amount {_money(e.amount):>12}  "
            f"hold {_money(e.hold_amount):>12}  balance {_money(e.balance_after)}{turn}{note}"
        )


@credits_app.command(
    "verify", epilog=("Examples:\n\n  turnledger credits verify\n\n  turnledger credits verify --account u-42\n\n")
)
def verify(
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove every balance equals the sum of its journal; exit 1 if any does not."""
    report = _run(lambda ledger: ledger.verify(account), database_url)
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "accounts": report.accounts,
                "entries": report.entries,
                "open_holds": report.open_holds,
                "problems": list(report.problems),
            }
        )
    elif report.ok:
        _say(
            f"ok: {report.accounts} account(s), {report.entries} journal entries, {report.open_holds} open hold(s); "
            "every balance equals its journal"
        )
    else:
        for problem in report.problems:
            _say(f"mismatch: {problem}")
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


@credits_app.command(
    "expire",
    epilog=("Examples:\n\n  turnledger credits expire\n\n  turnledger credits expire --account u-42 --json\n\n"),
)
def expire(
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release every hold past its expiry (reservations a dead process never settled)."""
    released = _run(lambda ledger: ledger.expire_holds(account), database_url)
    if as_json:
        _print_json([_entry_json(e) for e in released])
        return
    total = sum((-e.hold_amount for e in released), Decimal(0))
    _say(f"released {len(released)} expired hold(s), {_money(total)} in all")


def _parse_amount(text: str) -> Decimal:
    from turnledger.money import to_decimal

    value = to_decimal(text)
    if value is None or value <= 0:
        fail(f"amount: {text!r} is not a positive amount", EXIT_BAD_INPUT)
    return value

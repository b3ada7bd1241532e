"""Writing turns: :func:`record_turn` (a closed turn and its calls, exactly once) and :func:`record_token_usage`.

Rows are built by pure functions (:func:`turn_rows`, :func:`call_row`) and inserted by
:func:`insert_turn_rows`, which takes many turns at once, so a batch writer reuses both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, cast

from sqlalchemy import String, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from turnledger._logging import warn_once
from turnledger.accumulator import TurnTokenAccumulator, record_totals
from turnledger.errors import TurnIdReused
from turnledger.money import micros_from_usd, split_micros, to_decimal
from turnledger.pricing import MIN_CALL_COST_USD
from turnledger.records import (
    MICROS_PER_USD,
    MONEY_CONTEXT,
    CallKind,
    CallStatus,
    CostSource,
    RecordFlag,
    TokenCallRecord,
)
from turnledger.store.engine import storage_error
from turnledger.store.models import TokenUsage, TokenUsageCall
from turnledger.store.reused_ids import holds_another_turn

USAGE_TABLE = cast(Table, TokenUsage.__table__)
CALLS_TABLE = cast(Table, TokenUsageCall.__table__)

logger = logging.getLogger("turnledger.store")


def _string_limits(table: Table) -> tuple[tuple[str, int], ...]:
    return tuple(
        (c.name, c.type.length) for c in table.columns if isinstance(c.type, String) and c.type.length is not None
    )


_USAGE_LIMITS = _string_limits(USAGE_TABLE)
_CALL_LIMITS = _string_limits(CALLS_TABLE)


def _limit_groups(limits: tuple[tuple[str, int], ...]) -> tuple[tuple[Callable[[Any], Any], int], ...]:
    by_length: dict[int, list[str]] = {}
    for name, length in limits:
        by_length.setdefault(length, []).append(name)
    # itemgetter of two or more names returns a tuple; a single name is padded so it does too.
    return tuple((operator.itemgetter(*names, names[0]), length) for length, names in by_length.items())


_USAGE_GROUPS = _limit_groups(_USAGE_LIMITS)
_CALL_GROUPS = _limit_groups(_CALL_LIMITS)
SANITIZED_FLAG = RecordFlag.SANITIZED.value
"""In a call row's ``flags``: a string of the call or its turn lost NUL characters or was shortened to fit."""

Database = AsyncSession | AsyncConnection
"""What the writers and reports run on: the caller's session (its transaction) or a connection."""

INSERT_CHUNK = 500
"""Turn rows per INSERT statement: ~30 parameters each stays far below both backends' limits."""

_SECRET_KEY_PARTS = ("key", "auth", "secret", "passw", "header", "cookie", "credential", "bearer", "signature", "token")
_TEXT_KEY_PARTS = ("prompt", "message", "content", "completion", "input", "text", "response", "system", "output")
_COUNT_KEY_SUFFIXES = ("_tokens", "tokens", "_count", "_calls", "_micros", "_usd", "_ms")
"""Caller-supplied JSON documents keep a key only if it cannot hold a secret or a text: a key naming a
count or a figure (``prompt_tokens``, ``cost_usd``) is kept; any other key that mentions a secret
(``x-api-key``, ``bearer_token``) or a text (``user_prompt``, ``messages_preview``) is dropped with
what sits under it. Matching parts of names, not whole names, is what catches the variants."""


def _sensitive_key(key: object) -> bool:
    name = str(key).lower()
    if name.endswith(_COUNT_KEY_SUFFIXES):
        return False
    return any(part in name for part in _SECRET_KEY_PARTS + _TEXT_KEY_PARTS)


@dataclass(frozen=True, slots=True)
class TurnRows:
    """A turn as rows: ``usage`` for ``token_usage`` and ``calls`` for ``token_usage_calls``.

    Call rows carry no ``usage_id``: it is the turn row's id, known only once that row is inserted.
    """

    turn_id: str
    usage: dict[str, Any]
    calls: list[dict[str, Any]] = field(default_factory=list)


def call_row(
    record: TokenCallRecord,
    *,
    seq: int,
    usage_type: str,
    user_id: str | None,
    thread_id: str | None,
    tenant_id: str | None,
    created_at: datetime,
    cost_micros: int | None = None,
) -> dict[str, Any]:
    """The ``token_usage_calls`` row of one call (without ``usage_id``).

    ``cost_micros`` is the call's share of its turn's rounded micros (see ``split_micros``), so that
    the call rows of a turn add up to its ``cost_micros``; alone, a call rounds its own cost.
    Strings are made storable (:func:`_fit_row`); a changed row gets the ``sanitized`` flag.
    """
    row = _call_row_as_is(record, seq, cost_micros, usage_type, user_id, thread_id, tenant_id, created_at)
    if _fit_row(row, _CALL_LIMITS):
        row["flags"].append(SANITIZED_FLAG)
    return row


def _call_row_as_is(
    record: TokenCallRecord,
    seq: int,
    cost_micros: int | None,
    usage_type: str,
    user_id: str | None,
    thread_id: str | None,
    tenant_id: str | None,
    created_at: datetime,
) -> dict[str, Any]:
    """:func:`call_row` with the strings as they are (for a turn whose strings all fit)."""
    value = _ENUM_VALUE
    return {
        "seq": seq,
        "call_id": record.call_id,
        "model": record.model,
        "provider": record.provider,
        "call_kind": value[record.call_kind],
        "status": value[record.status],
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cached_tokens": record.cached_tokens,
        "cache_creation_tokens": record.cache_creation_tokens,
        "cache_creation_1h_tokens": record.cache_creation_1h_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "image_input_tokens": record.image_input_tokens,
        "image_output_tokens": record.image_output_tokens,
        "audio_input_tokens": record.audio_input_tokens,
        "audio_output_tokens": record.audio_output_tokens,
        "cost_usd": record.cost_usd,
        "cost_micros": record.cost_micros if cost_micros is None else cost_micros,
        "cost_source": value[record.cost_source],
        "started_at": record.started_at,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "stream": record.stream,
        "usage_estimated": record.usage_estimated,
        "error_type": record.error_type,
        "provider_request_id": record.provider_request_id,
        "model_ref": record.model_ref,
        "model_id": record.model_id,
        "display_name": record.display_name,
        "flags": [value[flag] for flag in record.flags] if record.flags else [],
        "usage_type": usage_type,
        "user_id": user_id,
        "thread_id": thread_id,
        "tenant_id": tenant_id,
        "created_at": created_at,
    }


def turn_rows(
    turn: TurnTokenAccumulator,
    *,
    usage_type: str,
    message_id: str | None = None,
    created_at: datetime | None = None,
    recorded_at: datetime | None = None,
) -> TurnRows:
    """A closed turn as rows. Pure: reads the turn, touches no database.

    ``created_at`` (what reports bucket by) defaults to when the turn opened. Late calls (their
    event came after the turn closed) are not part of the turn's totals and are not included.
    """
    if not turn.closed:
        raise ValueError(f"turn {turn.turn_id!r} is still open: close it (leave its scope) before recording it")
    when = _aware(created_at or turn.created_at)
    records = list(turn)
    user_id, thread_id, tenant_id = _opt_str(turn.user_id), _opt_str(turn.thread_id), _opt_str(turn.tenant_id)
    # Rounded once for the turn, then shared out: the call rows' micros add up to the turn's.
    micros = split_micros([r.cost_usd for r in records])
    # Nearly every turn's strings fit every column as they are: one check for the whole turn instead
    # of one per row (the per-row check, and fitting, for the rest).
    message = _opt_str(message_id if message_id is not None else turn.message_id)
    as_is = _strings_fit(records, (turn.turn_id, usage_type, user_id, thread_id, message, tenant_id))
    calls, details = _calls_as_is(records, micros, usage_type, user_id, thread_id, tenant_id, when)
    if not as_is:
        # The details keep the strings as they were: _sanitize_documents below mends them to match.
        for row in calls:
            if _fit_row(row, _CALL_LIMITS):
                row["flags"].append(SANITIZED_FLAG)
    totals = record_totals(records)
    statuses = [r.status for r in records]
    usage = {
        "turn_id": turn.turn_id,
        "usage_type": usage_type,
        "user_id": user_id,
        "thread_id": thread_id,
        "message_id": message,
        "tenant_id": tenant_id,
        "tags": [str(tag) for tag in turn.tags],
        "calls": len(records),
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "total_tokens": totals["total_tokens"],
        "cached_tokens": totals["cached_tokens"],
        "cache_creation_tokens": totals["cache_creation_tokens"],
        "reasoning_tokens": totals["reasoning_tokens"],
        "cost_usd": totals["cost_usd"],
        "cost_micros": micros_from_usd(totals["cost_usd"]),
        "unpriced_calls": totals["unpriced_calls"],
        "failed_calls": statuses.count(CallStatus.FAILURE),
        "abandoned_calls": statuses.count(CallStatus.ABANDONED),
        "model_breakdown": _model_breakdown(turn) if records else {},
        "call_details": details,
        "created_at": when,
        "recorded_at": _aware(recorded_at or datetime.now(UTC)),
    }
    fitted = False if as_is else _fit_row(usage, _USAGE_LIMITS)
    if fitted or any(SANITIZED_FLAG in c["flags"] for c in calls) or any(map(_unstorable, usage["tags"])):
        _sanitize_documents(usage, calls)
        logger.warning(
            "turnledger turn %r: NULs or lone surrogates removed, or strings shortened to fit their columns",
            turn.turn_id,
        )
    return TurnRows(turn_id=usage["turn_id"], usage=usage, calls=calls)


async def insert_turn_rows(db: Database, batch: Sequence[TurnRows]) -> dict[str, int]:
    """Insert turns and their calls in the caller's transaction; turns already stored are skipped.

    Returns ``{turn_id: row id}`` for the turns written by this call. Idempotent on ``turn_id`` on
    both backends (``INSERT ... ON CONFLICT (turn_id) DO NOTHING RETURNING``), also against a
    concurrent writer of the same turn: PostgreSQL makes the second insert wait for the first.
    Raises :class:`~turnledger.errors.StorageError` (``SchemaMissingError`` for missing tables) if the
    database refuses; a server that cannot be reached raises the driver's own ``OSError``.
    """
    unique: dict[str, TurnRows] = {}
    for rows in batch:
        unique.setdefault(rows.turn_id, rows)
    if not unique:
        return {}
    dialect_insert = postgresql.insert if dialect_name(db) == "postgresql" else sqlite.insert
    table = USAGE_TABLE
    written: dict[str, int] = {}
    try:
        items = list(unique.values())
        for start in range(0, len(items), INSERT_CHUNK):
            chunk = items[start : start + INSERT_CHUNK]
            stmt = (
                dialect_insert(table)
                .values([rows.usage for rows in chunk])
                .on_conflict_do_nothing(index_elements=["turn_id"])
                .returning(table.c.id, table.c.turn_id)
            )
            result = await db.execute(stmt)
            written.update({turn_id: row_id for row_id, turn_id in result.all()})
        call_rows = [
            {**call, "usage_id": written[rows.turn_id]}
            for rows in unique.values()
            if rows.turn_id in written
            for call in rows.calls
        ]
        if call_rows:
            await db.execute(insert(CALLS_TABLE), call_rows)
    except (SQLAlchemyError, OverflowError) as exc:
        # OverflowError: sqlite3 refuses an int past 64 bits itself, before any SQL runs.
        raise storage_error(exc) from exc
    return written


async def record_turn(
    db: Database,
    turn: TurnTokenAccumulator,
    *,
    usage_type: str,
    message_id: str | None = None,
    created_at: datetime | None = None,
) -> int | None:
    """Write a closed turn and its calls in the caller's transaction (commit it yourself).

    Returns the new ``token_usage`` row id, or ``None`` when this turn is already stored (recording a
    turn twice stores it once). Raises ``ValueError`` for a turn still open,
    :class:`~turnledger.errors.TurnIdReused` when a *different* turn (opened at another time, with
    other calls, tokens, cost or call ids) is stored under its ``turn_id`` (nothing is written; the
    transaction is still usable), and :class:`~turnledger.errors.StorageError` when the database refuses the write.
    """
    rows = turn_rows(turn, usage_type=usage_type, message_id=message_id, created_at=created_at)
    written = await insert_turn_rows(db, [rows])
    row_id = written.get(rows.turn_id)
    # Skipped as if recorded already: for a different turn (a retried request naming turns by its
    # id), the provider billed calls that no report would hold.
    if row_id is None and await _holds_another_turn(db, rows.usage):
        raise TurnIdReused(
            f"turn {rows.turn_id!r} was not recorded: another turn (another created_at, calls, tokens, cost or "
            "call ids) is stored under its turn_id"
        )
    return row_id


async def _holds_another_turn(db: Database, usage: Mapping[str, Any]) -> bool:
    try:
        return await holds_another_turn(db, usage)
    except SQLAlchemyError as exc:
        raise storage_error(exc) from exc


def record_token_usage(
    session: Any,
    *,
    usage_type: str,
    user_id: str | None,
    thread_id: str | None = None,
    message_id: str | None = None,
    tenant_id: str | None = None,
    tags: Iterable[str] = (),
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    total_tokens: int | None = None,
    cached_tokens: int = 0,
    cache_creation_tokens: int = 0,
    reasoning_tokens: int = 0,
    cost_usd: Decimal | float | int | str | None = None,
    cost_micros: int | None = None,
    calls: int = 1,
    model_breakdown: Mapping[str, Any] | None = None,
    call_details: Sequence[Mapping[str, Any]] | None = None,
    turn_id: str | None = None,
    created_at: datetime | None = None,
) -> TokenUsage | None:
    """Add one ``token_usage`` row to ``session`` (sync or async) so it commits with the caller's work.

    Never raises: on bad input it logs why and returns ``None``. ``cost_usd`` (or, failing that,
    ``cost_micros``) left out means unpriced: the row's cost is NULL and its calls count as unpriced.
    What its columns cannot hold is bad input, refused here rather than at the caller's commit: a
    count past 2**63 - 1 (``calls`` past 2**31 - 1), a cost whose micro-USD pass 2**63 - 1, or one
    other than 0 below 1e-30 USD; a cost is kept to 60 significant digits.
    A duplicate ``turn_id`` is refused by the database at flush/commit, in the caller's transaction.
    A string too long for its column or holding a NUL is stored as :func:`record_turn` stores it
    (shortened, ending in a hash of the whole; NULs removed), with a warning.
    """
    try:
        counts = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cached_tokens": cached_tokens,
            "cache_creation_tokens": cache_creation_tokens,
            "reasoning_tokens": reasoning_tokens,
            "calls": calls,
        }
        if total_tokens is not None:
            counts["total_tokens"] = total_tokens
        bad = sorted(name for name, value in counts.items() if not _is_count(value, name))
        if not bad and total_tokens is None and prompt_tokens + completion_tokens > _BIGINT_MAX:
            bad = ["total_tokens"]
        if bad:
            _refuse(
                "bad_counts",
                "record_token_usage: %s must be non-negative integers the database holds (calls at most %d, "
                "tokens at most %d)",
                ", ".join(bad),
                _INTEGER_MAX,
                _BIGINT_MAX,
            )
            return None
        if not usage_type or not isinstance(usage_type, str):
            _refuse("bad_usage_type", "record_token_usage: usage_type must be a non-empty string")
            return None
        cost = _cost_from(cost_usd, cost_micros)
        if cost is _INVALID:
            _refuse(
                "bad_cost",
                "record_token_usage: cost must be a finite, non-negative number the database holds (0 or from "
                "%s to %s USD)",
                MIN_CALL_COST_USD,
                _MAX_COST_USD,
            )
            return None
        if created_at is not None and (not isinstance(created_at, datetime) or created_at.tzinfo is None):
            _refuse("naive_created_at", "record_token_usage: created_at must be a timezone-aware datetime")
            return None
        priced_cost = cost if isinstance(cost, Decimal) else None
        now = datetime.now(UTC)
        strings: dict[str, Any] = {
            "turn_id": _opt_str(turn_id) or _new_id(),
            "usage_type": usage_type,
            "user_id": _opt_str(user_id),
            "thread_id": _opt_str(thread_id),
            "message_id": _opt_str(message_id),
            "tenant_id": _opt_str(tenant_id),
        }
        # As record_turn stores them: PostgreSQL would refuse an over-long string or a NUL at the
        # caller's commit, failing the caller's own work with it.
        fitted = _fit_row(strings, _USAGE_LIMITS)
        tag_texts = [str(tag) for tag in tags]
        breakdown = _scrub(_json_safe(model_breakdown)) if model_breakdown is not None else None
        details = [_scrub(_json_safe(d)) for d in call_details] if call_details is not None else None
        documents = (tag_texts, breakdown, details)
        storable = _make_storable(list(documents))
        if fitted or storable != list(documents):
            tag_texts, breakdown, details = storable
            logger.warning(
                "turnledger record_token_usage %r: NULs or lone surrogates removed, or strings shortened to fit "
                "their columns",
                strings["turn_id"],
            )
        row = TokenUsage(
            **strings,
            tags=tag_texts,
            calls=calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens if total_tokens is None else total_tokens,
            cached_tokens=cached_tokens,
            cache_creation_tokens=cache_creation_tokens,
            reasoning_tokens=reasoning_tokens,
            cost_usd=priced_cost,
            cost_micros=micros_from_usd(priced_cost),
            unpriced_calls=calls if priced_cost is None else 0,
            failed_calls=0,
            abandoned_calls=0,
            model_breakdown=breakdown,
            call_details=details,
            created_at=(created_at or now).astimezone(UTC),
            recorded_at=now,
        )
        session.add(row)
    except Exception as exc:
        _refuse("unexpected", "record_token_usage: row not added: %s", type(exc).__name__)
        return None
    return row


# -- helpers -------------------------------------------------------------------------------------

_INVALID = object()


def _cost_from(cost_usd: object, cost_micros: object) -> Decimal | object | None:
    if cost_usd is not None:
        cost = to_decimal(cost_usd)
    elif cost_micros is not None:
        if not _is_int(cost_micros):
            return _INVALID
        cost = MONEY_CONTEXT.divide(Decimal(int(str(cost_micros))), MICROS_PER_USD)
    else:
        return None
    if cost is None or cost < 0:
        return _INVALID
    # Kept to money's 60 significant digits, as a call's cost is: PostgreSQL's numeric holds at most
    # 16,383 digits after the point, and the micro-USD a 64-bit integer. Past those, the database would
    # refuse the caller's whole commit.
    cost = MONEY_CONTEXT.plus(cost)
    if 0 < cost < MIN_CALL_COST_USD or cast(int, micros_from_usd(cost)) > _BIGINT_MAX:
        return _INVALID
    return cost


_BIGINT_MAX = 2**63 - 1
"""The largest value of a token count's column (BIGINT)."""
_INTEGER_MAX = 2**31 - 1
"""The largest value of the ``calls`` column (INTEGER)."""
_MAX_COST_USD = MONEY_CONTEXT.divide(Decimal(_BIGINT_MAX), MICROS_PER_USD)
"""The largest cost whose micro-USD fit their BIGINT column."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object, name: str = "") -> bool:
    return _is_int(value) and 0 <= int(str(value)) <= (_INTEGER_MAX if name == "calls" else _BIGINT_MAX)


def _refuse(cause: str, message: str, *args: object) -> None:
    warn_once(f"record_token_usage:{cause}", message, *args)


def _new_id() -> str:
    return uuid.uuid4().hex


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("turnledger stores timezone-aware datetimes only")
    return value.astimezone(UTC)


def dialect_name(db: Database) -> str:
    """``"postgresql"`` or ``"sqlite"``: the backend behind a session or connection."""
    if isinstance(db, AsyncConnection):
        return db.dialect.name
    return db.get_bind().dialect.name


_JSON_PLAIN = frozenset({str, int, float, bool, type(None)})


def _json_safe(value: Any) -> Any:
    """Decimals as strings (never floats), datetimes as ISO-8601, enums as their values."""
    kind = type(value)
    # Exact-type checks first: plain values and plain dicts are nearly all of it (an enum is a str
    # subclass, so it is not caught here).
    if kind in _JSON_PLAIN:
        return value
    if kind is dict:
        # Plain values are kept without a call: they are most of a document.
        plain = _JSON_PLAIN
        return {k if type(k) is str else str(k): v if type(v) in plain else _json_safe(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return value


def _unstorable(text: str) -> bool:
    """Whether ``text`` holds a NUL (PostgreSQL refuses it in text and JSONB) or a lone surrogate
    (no UTF-8 for it: neither the database nor the outbox can take it)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _storable(value: str) -> str:
    """``value`` without NULs, its lone surrogates replaced by ``?``."""
    return value.replace("\x00", "").encode("utf-8", "replace").decode()


def _fit(value: str, length: int) -> str:
    """``value`` made storable (:func:`_storable`), at most ``length`` long.

    A shortened value ends in a hash of the whole one: distinct ids stay distinct, and the same id
    always shortens the same way, so a retried turn is still recognized by its ``turn_id``.
    """
    if _unstorable(value):
        value = _storable(value)
    if len(value) > length:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        value = f"{value[: length - len(digest) - 1]}~{digest}"
    return value


def as_stored(column: str, value: str | None) -> str | None:
    """``value`` as the writers store it in ``token_usage.<column>`` (made storable, shortened to fit):
    what a filter on that column must compare with."""
    return None if value is None else _fit(value, _USAGE_LIMIT_OF[column])


_USAGE_LIMIT_OF = dict(_USAGE_LIMITS)


def is_storable(value: str) -> bool:
    """Whether both databases take ``value`` as it is (no NUL, no lone surrogate), whatever its length."""
    return not _unstorable(value)


_RECORD_STRINGS = operator.attrgetter(
    "call_id", "model", "provider", "error_type", "provider_request_id", "model_ref", "model_id", "display_name"
)
_ENUM_VALUED = frozenset({"call_kind", "status", "cost_source"})
"""Columns holding the value of one of turnledger's own enums: short, known, never fitted."""
_SHORTEST_LIMIT = min(length for name, length in _USAGE_LIMITS + _CALL_LIMITS if name not in _ENUM_VALUED)
"""Any other bounded string column holds at least this many characters."""


def _strings_fit(records: Sequence[TokenCallRecord], turn_strings: tuple[object, ...]) -> bool:
    """Whether every string the turn's rows get from the turn and its records is short enough for any
    column and free of NUL characters (False when unsure: the caller then checks row by row)."""
    strings: list[Any] = [s for s in turn_strings if s]
    for values in map(_RECORD_STRINGS, records):
        strings.extend(filter(None, values))
    try:
        return max(map(len, strings), default=0) <= _SHORTEST_LIMIT and not _unstorable("".join(strings))
    except TypeError:
        return False  # not all strings: the row-by-row check decides


def _may_need_fit(row: dict[str, Any], groups: tuple[tuple[Callable[[Any], Any], int], ...]) -> bool:
    # The common case (nothing to fix) in a few C-level calls per row rather than a Python loop per column.
    try:
        for getter, length in groups:
            present = tuple(filter(None, getter(row)))
            if present and (max(map(len, present)) > length or _unstorable("".join(present))):
                return True
    except (KeyError, TypeError):
        return True
    return False


def _fit_row(row: dict[str, Any], limits: tuple[tuple[str, int], ...]) -> bool:
    """Make the row's bounded strings storable in place; whether anything changed."""
    groups = _USAGE_GROUPS if limits is _USAGE_LIMITS else _CALL_GROUPS
    if not _may_need_fit(row, groups):
        return False
    changed = False
    for name, length in limits:
        value = row.get(name)
        if isinstance(value, str) and (len(value) > length or _unstorable(value)):
            row[name] = _fit(value, length)
            changed = True
    return changed


def _make_storable(value: Any) -> Any:
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, Mapping):
        return {_make_storable(k): _make_storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_make_storable(v) for v in value]
    return value


def _sanitize_documents(usage: dict[str, Any], calls: Sequence[dict[str, Any]]) -> None:
    # Rare path (a turn already found to carry a bad string): the JSON documents repeat the calls'
    # strings, so they lose their NULs too, and carry the flags and ids their call rows now have.
    for name in ("tags", "model_breakdown", "call_details"):
        usage[name] = _make_storable(usage[name])
    for detail, call in zip(usage["call_details"], calls, strict=True):
        detail["flags"] = list(call["flags"])
        for name, _length in _CALL_LIMITS:
            if name in detail and name in call:
                detail[name] = call[name]


_ENUM_VALUE: dict[str, str] = {m: m.value for e in (CallKind, CallStatus, CostSource, RecordFlag) for m in e}
"""An enum member's value by a dict lookup (C) rather than the ``.value`` property (Python)."""


def _calls_as_is(
    records: Sequence[TokenCallRecord],
    micros: Sequence[int | None],
    usage_type: str,
    user_id: str | None,
    thread_id: str | None,
    tenant_id: str | None,
    created_at: datetime,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The call rows, strings as they are (not fitted), and the ``call_details`` document of a turn, in
    one pass: each detail is ``{**record.to_dict(), "cost_micros": share}`` (tests/unit/test_row_documents.py)."""
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for seq, (r, share) in enumerate(zip(records, micros, strict=True)):
        row = _call_row_as_is(r, seq, share, usage_type, user_id, thread_id, tenant_id, created_at)
        rows.append(row)
        # The document: the same values, in TokenCallRecord.to_dict's order, money and time as text.
        detail = {name: row[name] for name in _DETAIL_FROM_ROW}
        cost, started = row["cost_usd"], row["started_at"]
        detail["cost_usd"] = f"{cost:f}" if isinstance(cost, Decimal) else cost
        detail["started_at"] = started.isoformat() if isinstance(started, datetime) else started
        detail["flags"] = list(row["flags"])
        detail["cost_micros"] = share
        details.append(detail)
    return rows, details


_DETAIL_FROM_ROW = tuple(f.name for f in dataclasses.fields(TokenCallRecord))
"""A call_details entry's keys, in ``TokenCallRecord.to_dict``'s order, but for ``cost_micros`` (last, set
apart: the row may hold the call's own); every one of them is a column of the call row too."""


def _model_breakdown(turn: TurnTokenAccumulator) -> dict[str, Any]:
    """``_json_safe(turn.per_message_summary())``: only ``cost_usd`` needs converting (a Decimal) when
    the models are strings, as they are; anything else goes the generic way."""
    summary = turn.per_message_summary()
    if any(type(model) is not str for model in summary):
        return cast(dict[str, Any], _json_safe(summary))
    for totals in summary.values():
        cost = totals["cost_usd"]
        if cost is not None:
            totals["cost_usd"] = f"{cost:f}"
    return summary


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not _sensitive_key(k)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


__all__ = [
    "Database",
    "TurnRows",
    "call_row",
    "dialect_name",
    "insert_turn_rows",
    "record_token_usage",
    "record_turn",
    "turn_rows",
]

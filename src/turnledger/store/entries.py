"""A turn's rows as one outbox entry, and writing many entries at once, idempotently, on both backends.

An entry is ``{"v": 1, "turn_id": ..., "usage": {token_usage row}, "calls": [token_usage_calls rows]}``
(call rows without ``usage_id``, which only the insert knows), with JSON document columns kept as
their JSON text: serialized once, that text is both what the outbox line carries and what COPY sends.
This is the entry in memory; on disk it is packed (:mod:`turnledger.store.lines`).

:func:`write_entries` stores turns with their calls in one transaction, skipping any ``turn_id`` already
stored. On PostgreSQL: a live batch (``fresh``) is COPYed straight into the tables with ids reserved
from the sequence, and only if a ``turn_id`` turns out to be stored already does it take the other way,
the one replays take: COPY into session-temporary staging tables and one ``INSERT ... SELECT ...
ON CONFLICT (turn_id) DO NOTHING`` (bench/write_bench.py measures both against multi-row INSERTs).
Elsewhere, :func:`turnledger.store.record.insert_turn_rows` (multi-row ``INSERT ... ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy import JSON
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from turnledger.errors import StorageError
from turnledger.store.engine import storage_error
from turnledger.store.outbox import FORMAT_VERSION
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE, TurnRows, insert_turn_rows

Entry = Mapping[str, Any]
"""One turn's rows, as written to and read from the outbox (see the module docstring)."""


USAGE_COLUMNS = [c.name for c in USAGE_TABLE.columns if c.name != "id"]
"""The keys of an entry's ``usage`` row, in column order."""
CALL_COLUMNS = [c.name for c in CALLS_TABLE.columns if c.name != "usage_id"]
"""The keys of each of an entry's ``calls`` rows, in column order."""
_JSON_COLUMNS = frozenset(
    c.name for table in (USAGE_TABLE, CALLS_TABLE) for c in table.columns if c.type._type_affinity is JSON
)
_USAGE_JSON_NAMES = [c for c in USAGE_COLUMNS if c in _JSON_COLUMNS]
_CALL_JSON_NAMES = [c for c in CALL_COLUMNS if c in _JSON_COLUMNS]


def _with_json(row: Mapping[str, Any], names: list[str], convert: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(row)
    for name in names:
        if out.get(name) is not None:
            out[name] = convert(out[name])
    return out


def make_entry(rows: TurnRows) -> dict[str, Any]:
    """A turn's rows as an outbox entry. JSON document columns are kept as their JSON text: serialized
    once, that text is both what the outbox line carries and what COPY sends to PostgreSQL."""
    return {
        "v": FORMAT_VERSION,
        "turn_id": rows.turn_id,
        "usage": _with_json(rows.usage, _USAGE_JSON_NAMES, dumps_document),
        "calls": [_with_json(call, _CALL_JSON_NAMES, dumps_document) for call in rows.calls],
    }


def entry_rows(entry: Entry) -> TurnRows:
    """An entry back as :class:`TurnRows`, JSON documents parsed again (for the multi-row INSERT path)."""
    return TurnRows(
        turn_id=entry["turn_id"],
        usage=_with_json(entry["usage"], _USAGE_JSON_NAMES, json.loads),
        calls=[_with_json(call, _CALL_JSON_NAMES, json.loads) for call in entry["calls"]],
    )


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""What ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)`` builds on every call, built once."""

ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
"""orjson refusing (TypeError) what the standard encoder would treat otherwise: dataclasses, datetimes
and subclasses of str/int/dict/list are left to the standard encoder, so the text is the same."""


def dumps_document(value: Any) -> str:
    """A JSON document column's value as the JSON text an entry carries (compact, UTF-8 unescaped)."""
    if type(value) is list and not value:
        return "[]"  # most calls' flags
    try:
        # A tenth of the standard encoder's time on a turn's call_details (bench/write_bench.py).
        return orjson.dumps(value, option=ORJSON_STRICT).decode()
    except TypeError:
        # What orjson does not take (an int beyond 64 bits, a str subclass...): the standard encoder decides.
        return _ENCODER.encode(value)


def is_entry(value: Mapping[str, Any]) -> bool:
    usage = value.get("usage")
    return (
        value.get("v") == FORMAT_VERSION
        and isinstance(value.get("turn_id"), str)
        and isinstance(usage, Mapping)
        and usage.get("turn_id") == value.get("turn_id")
        and isinstance(value.get("calls"), list)
    )


async def write_entries(
    conn: AsyncConnection, entries: Sequence[Entry], *, pg_copy: bool = True, fresh: bool = False
) -> int:
    """Insert the entries' turns in the caller's transaction; returns how many were not yet stored.

    On PostgreSQL with ``pg_copy`` the rows are COPYed into session-temporary staging tables and moved
    with one ``INSERT ... SELECT ... ON CONFLICT (turn_id) DO NOTHING`` (bench/write_bench.py measures
    it against multi-row INSERTs); elsewhere, :func:`~turnledger.store.record.insert_turn_rows`.
    ``fresh`` says the turns are most likely not stored yet (a live batch, not a replay): on PostgreSQL
    they are first COPYed straight into the tables, ids reserved from the sequence, and only if some
    ``turn_id`` turns out to be stored already does the write fall back to the staging tables.
    """
    if pg_copy and conn.dialect.name == "postgresql":
        return await _copy_entries(conn, entries, fresh=fresh)
    try:
        written = await insert_turn_rows(conn, [entry_rows(e) for e in entries])
    except _CLIENT_SIDE_DATA_ERRORS as exc:
        raise _unencodable(exc) from exc
    return len(written)


class UnencodableRows(StorageError):
    """The driver could not encode a value of the rows (an integer beyond 64 bits...): like the database
    refusing them, this is about the rows, so :mod:`turnledger.store.rejects` isolates and sets aside the
    turn instead of failing every batch it is in."""

    sqlstate = "22000"  # data_exception: what is_data_error looks for


_CLIENT_SIDE_DATA_ERRORS = (OverflowError, ValueError, TypeError, UnicodeError)
"""What a driver raises, before anything reaches the server, for a value it cannot encode."""


def _quoted(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{n}"' for n in names)


# Named after their columns: a server session outlives the process that made its temp tables behind a
# transaction pooler, where another version's replica (before a migration added a column, say) may have
# made tables of the same name and another shape, which IF NOT EXISTS would then keep.
_STAGE_SHAPE = hashlib.sha256(
    repr([(c.name, str(c.type)) for table in (USAGE_TABLE, CALLS_TABLE) for c in table.columns]).encode()
).hexdigest()[:12]
_STAGE_USAGE = f"turnledger_stage_usage_{_STAGE_SHAPE}"
_STAGE_CALLS = f"turnledger_stage_calls_{_STAGE_SHAPE}"
_CREATE_STAGES = [
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_USAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {_quoted(USAGE_COLUMNS)} FROM token_usage WITH NO DATA",
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_CALLS} ON COMMIT DELETE ROWS AS "
    f'SELECT u."turn_id", {_quoted(CALL_COLUMNS, "c.")} FROM token_usage_calls c '
    f'JOIN token_usage u ON u."id" = c."usage_id" WITH NO DATA',
]
_MOVE_STAGED = (
    f"WITH new AS (INSERT INTO token_usage ({_quoted(USAGE_COLUMNS)}) "
    f"SELECT {_quoted(USAGE_COLUMNS)} FROM {_STAGE_USAGE} "
    f'ON CONFLICT ("turn_id") DO NOTHING RETURNING "id", "turn_id"), '
    f'moved AS (INSERT INTO token_usage_calls ("usage_id", {_quoted(CALL_COLUMNS)}) '
    f'SELECT new."id", {_quoted(CALL_COLUMNS, "s.")} FROM {_STAGE_CALLS} s JOIN new ON new."turn_id" = s."turn_id") '
    "SELECT count(*) FROM new"
)


def _copy_records(entries: Sequence[Entry]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The staging tables' records: turns (deduplicated by ``turn_id``) and their calls keyed by ``turn_id``.

    JSON documents are already text in an entry, which is what asyncpg's COPY takes for JSONB.
    """
    unique: dict[str, Entry] = {}
    for entry in entries:
        unique.setdefault(entry["turn_id"], entry)
    usage_records = [_values(e["usage"], _USAGE_GETTER, USAGE_COLUMNS) for e in unique.values()]
    call_records = [
        (turn_id, *_values(call, _CALL_GETTER, CALL_COLUMNS)) for turn_id, e in unique.items() for call in e["calls"]
    ]
    return usage_records, call_records


_USAGE_GETTER = operator.itemgetter(*USAGE_COLUMNS)
_CALL_GETTER = operator.itemgetter(*CALL_COLUMNS)


def _values(
    row: Mapping[str, Any], getter: Callable[[Mapping[str, Any]], tuple[Any, ...]], columns: list[str]
) -> tuple[Any, ...]:
    try:
        return getter(row)
    except KeyError:
        # A row written without some column (a version-1 line): NULL there. Lines of an earlier version
        # get the columns added since when read (lines.unpack_entry), so NOT NULL ones are not left NULL.
        return tuple([row.get(c) for c in columns])


_RESERVE_IDS = "SELECT nextval(pg_get_serial_sequence('token_usage', 'id')) FROM generate_series(1, $1)"
_DIRECT_USAGE_COLUMNS = ["id", *USAGE_COLUMNS]
_DIRECT_CALL_COLUMNS = ["usage_id", *CALL_COLUMNS]
_TURN_ID_AT = USAGE_COLUMNS.index("turn_id")


async def _copy_direct(driver: Any, usage_records: list[tuple[Any, ...]], call_records: list[tuple[Any, ...]]) -> int:
    """COPY the turns and their calls straight into the tables, in the driver's current transaction.

    Half the database's work of the staging path (one insert per row instead of two, no join), and
    no conflict check: a ``turn_id`` stored already raises ``UniqueViolationError``.
    """
    ids = [row[0] for row in await driver.fetch(_RESERVE_IDS, len(usage_records))]
    usage_id = dict(zip((r[_TURN_ID_AT] for r in usage_records), ids, strict=True))
    await driver.copy_records_to_table(
        "token_usage",
        records=[(i, *r) for i, r in zip(ids, usage_records, strict=True)],
        columns=_DIRECT_USAGE_COLUMNS,
    )
    if call_records:
        await driver.copy_records_to_table(
            "token_usage_calls",
            records=[(usage_id[c[0]], *c[1:]) for c in call_records],
            columns=_DIRECT_CALL_COLUMNS,
        )
    return len(usage_records)


async def _copy_entries(conn: AsyncConnection, entries: Sequence[Entry], *, fresh: bool = False) -> int:
    usage_records, call_records = _copy_records(entries)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if fresh and usage_records:
        async with _driver_errors(conn):
            try:
                # A savepoint if the caller's transaction already began on this connection, else a transaction.
                async with driver.transaction():
                    return await _copy_direct(driver, usage_records, call_records)
            except asyncpg.UniqueViolationError:
                pass  # some turn is stored already (a retried batch): the staging path below skips it
    # A savepoint if the caller's transaction already began on this connection, else a transaction.
    async with _driver_errors(conn), driver.transaction():
        # In every transaction, not once per connection: behind a transaction-pooling proxy (PgBouncer)
        # the next transaction may run in a server session that has never seen this one's temp tables.
        await driver.execute(";".join(_CREATE_STAGES))
        await driver.copy_records_to_table(_STAGE_USAGE, records=usage_records, columns=USAGE_COLUMNS)
        if call_records:
            await driver.copy_records_to_table(_STAGE_CALLS, records=call_records, columns=["turn_id", *CALL_COLUMNS])
        inserted: int = await driver.fetchval(_MOVE_STAGED)
    return inserted


@asynccontextmanager
async def _driver_errors(conn: AsyncConnection) -> AsyncIterator[None]:
    """asyncpg's errors as turnledger's, for both COPY paths."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise storage_error(exc) from exc
    except _CLIENT_SIDE_DATA_ERRORS as exc:
        await conn.invalidate()  # a COPY broken off mid-stream: the connection is not to be trusted
        raise _unencodable(exc) from exc
    except BaseException:
        # Not an answer from the server (a dropped link, a cancelled wait): the connection cannot be trusted.
        await conn.invalidate()
        raise


def _unencodable(exc: BaseException) -> UnencodableRows:
    return UnencodableRows(f"a value the driver cannot send: {type(exc).__name__}")


WriteFn = Callable[[Sequence[Entry]], Coroutine[Any, Any, int]]
"""Writes a batch of entries in one transaction; returns how many turns were new."""


def transaction_writer(engine: AsyncEngine, *, pg_copy: bool = True, fresh: bool = False) -> WriteFn:
    async def write(entries: Sequence[Entry]) -> int:
        async with engine.begin() as conn:
            return await write_entries(conn, entries, pg_copy=pg_copy, fresh=fresh)

    return write

"""Outbox lines of format version 2: a turn's rows packed as arrays in column order.

A version-1 line (:func:`turnledger.store.outbox.encode_entry`) spells out every column name of
every row and tags each Decimal and datetime (``{"$dec": ...}``) through a Python callback of the
JSON encoder: most of what a line cost the writer per turn. A version-2 entry is::

    {"v": 2, "turn_id": ..., "cols": "<checksum of the column names>",
     "usage": [token_usage values], "calls": [[token_usage_calls values], ...]}

with money as its decimal text and times as ISO-8601 text; the column a value sits in says which
it is. ``cols`` ties a line to the column lists it was packed with: a line packed for other columns
is refused (reported and set aside like any bad line), never stored into the wrong columns.

Anything the packing cannot say exactly (a row with other keys, a value of an unexpected type) is
written as a version-1 line instead; both versions are read back into the same in-memory entry
(:func:`turnledger.store.entries.make_entry`'s), so everything after reading is unchanged.

Lines an earlier version wrote, with fewer columns, still read: a packed line by the columns its
``cols`` names (:mod:`turnledger.store.past_columns`), and either version's rows get the columns
added since, with the value they stand for.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import orjson
from sqlalchemy import JSON, Table

from turnledger.store.base import UTCDateTime
from turnledger.store.entries import CALL_COLUMNS, ORJSON_STRICT, USAGE_COLUMNS, Entry, dumps_document
from turnledger.store.models import ExactDecimal
from turnledger.store.outbox import FORMAT_VERSION, encode_entry, frame_line
from turnledger.store.past_columns import ADDED_CALL_COLUMNS, PAST_COLUMNS
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE

PACKED_VERSION = 2


def _fingerprint(usage_columns: Sequence[str], call_columns: Sequence[str]) -> str:
    names = "|".join(usage_columns) + "||" + "|".join(call_columns)
    return f"{zlib.crc32(names.encode()):08x}"


_FINGERPRINT = _fingerprint(USAGE_COLUMNS, CALL_COLUMNS)


@dataclass(frozen=True, slots=True)
class _Layout:
    """One table's packing: column order, and which positions hold money, times and JSON documents."""

    columns: list[str]
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    dec: tuple[int, ...]
    dt: tuple[int, ...]
    doc: tuple[int, ...]
    special: tuple[tuple[int, type], ...]
    """Positions to convert when packing, with what they hold (``str``: a JSON document's text)."""

    @classmethod
    def of(cls, table: Table, columns: list[str]) -> _Layout:
        types = {c.name: c.type for c in table.columns}

        def where(test: Callable[[Any], bool]) -> tuple[int, ...]:
            return tuple(i for i, name in enumerate(columns) if test(types[name]))

        dec = where(lambda t: isinstance(t, ExactDecimal))
        dt = where(lambda t: isinstance(t, UTCDateTime))
        doc = where(lambda t: t._type_affinity is JSON)
        kinds: dict[int, type] = {
            **dict.fromkeys(dec, Decimal),
            **dict.fromkeys(dt, datetime),
            **dict.fromkeys(doc, str),
        }
        return cls(
            columns=columns,
            getter=operator.itemgetter(*columns),
            dec=dec,
            dt=dt,
            doc=doc,
            special=tuple(sorted(kinds.items())),
        )


_USAGE = _Layout.of(USAGE_TABLE, USAGE_COLUMNS)
_CALLS = _Layout.of(CALLS_TABLE, CALL_COLUMNS)


def _past_layouts() -> dict[str, tuple[_Layout, _Layout]]:
    layouts: dict[str, tuple[_Layout, _Layout]] = {}
    for usage_columns, call_columns in PAST_COLUMNS:
        # Every column since added must have a value to stand for it, else the line could not be stored.
        missing = (set(USAGE_COLUMNS) - set(usage_columns)) | (set(CALL_COLUMNS) - set(call_columns))
        if not missing <= ADDED_CALL_COLUMNS.keys() or set(USAGE_COLUMNS) != set(usage_columns):
            raise RuntimeError(f"no value for the columns added since an earlier outbox format: {sorted(missing)}")
        layouts[_fingerprint(usage_columns, call_columns)] = (
            _Layout.of(USAGE_TABLE, list(usage_columns)),
            _Layout.of(CALLS_TABLE, list(call_columns)),
        )
    return layouts


_PAST_LAYOUTS = _past_layouts()
"""The layouts of packed lines an earlier version wrote, by their ``cols``."""


class _Unpackable(Exception):
    pass


def _pack(row: Mapping[str, Any], layout: _Layout, times: dict[int, str]) -> list[Any]:
    # Same length and every column present: the same keys, nothing left out of the line.
    if len(row) != len(layout.columns):
        raise _Unpackable
    try:
        values = list(layout.getter(row))
    except KeyError:
        raise _Unpackable from None
    for i, kind in layout.special:
        value = values[i]
        if value is None:
            continue
        if kind is str:
            # A "$..." key could be read back as a tagged value (outbox._object_hook): version 1 says it
            # exactly. Any "$" at all is looked for: one character is a far faster search than '"$'.
            if type(value) is not str or "$" in value:
                raise _Unpackable
            # JSON text already: written into the line as JSON, not escaped again as a string.
            values[i] = orjson.Fragment(value)
        elif type(value) is not kind:
            raise _Unpackable
        elif kind is Decimal:
            values[i] = str(value)
        else:
            # A turn's rows share their created_at: written out once.
            text = times.get(id(value))
            if text is None:
                text = times[id(value)] = cast(datetime, value).isoformat()
            values[i] = text
    return values


def encode_line(entry: Entry) -> bytes:
    """The entry as an outbox line, newline included: version 2 when it packs exactly, else version 1."""
    times: dict[int, str] = {}  # by id(): the entry holds every datetime alive meanwhile
    try:
        packed = {
            "v": PACKED_VERSION,
            "turn_id": entry["turn_id"],
            "cols": _FINGERPRINT,
            "usage": _pack(entry["usage"], _USAGE, times),
            "calls": [_pack(call, _CALLS, times) for call in entry["calls"]],
        }
        # Strict: a value the standard encoder would have written otherwise makes it a version-1 line.
        body = orjson.dumps(packed, option=ORJSON_STRICT)
    except (_Unpackable, TypeError, ValueError):
        return encode_entry(entry)
    return frame_line(body)


def _unpack(values: Any, layout: _Layout) -> dict[str, Any]:
    if type(values) is not list or len(values) != len(layout.columns):
        raise _Unpackable
    for i in layout.dec:
        value = values[i]
        if value is not None:
            if type(value) is not str:
                raise _Unpackable
            values[i] = Decimal(value)
    for i in layout.dt:
        value = values[i]
        if value is not None:
            if type(value) is not str:
                raise _Unpackable
            values[i] = datetime.fromisoformat(value)
    for i in layout.doc:
        if values[i] is not None:
            values[i] = dumps_document(values[i])
    return dict(zip(layout.columns, values, strict=True))


def unpack_entry(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A decoded line's entry as :func:`~turnledger.store.entries.make_entry` builds it.

    A version-1 entry is returned as it is, but for the columns added since it was written; a
    version-2 one is unpacked, by the columns it was packed with; ``None`` if a version-2 entry is
    malformed or was packed for columns no version of turnledger wrote.
    """
    if item.get("v") != PACKED_VERSION:
        _add_missing_columns(item.get("calls"))
        return item
    cols = item.get("cols")
    layouts = (_USAGE, _CALLS) if cols == _FINGERPRINT else _PAST_LAYOUTS.get(cols) if type(cols) is str else None
    if layouts is None or not isinstance(item.get("calls"), list):
        return None
    usage, calls = layouts
    try:
        entry = {
            "v": FORMAT_VERSION,
            "turn_id": item.get("turn_id"),
            "usage": _unpack(item.get("usage"), usage),
            "calls": [_unpack(call, calls) for call in item["calls"]],
        }
    except (_Unpackable, TypeError, ValueError, InvalidOperation):
        return None
    if calls is not _CALLS:
        _add_missing_columns(entry["calls"])
    return entry


def _add_missing_columns(calls: Any) -> None:
    """Give the call rows of an entry written before some columns existed those columns' values."""
    if type(calls) is not list:
        return  # not an entry: is_entry refuses it
    for call in calls:
        if type(call) is dict:
            for name, value in ADDED_CALL_COLUMNS.items():
                if name not in call:
                    call[name] = value

"""Turn ids: random version-4 UUIDs in hex, ``uuid.uuid4().hex``'s text, read from the OS in batches.

Every scope makes one. ``os.urandom(16)`` per id, its version and variant bits set on a bytearray,
cost ~4,000 instructions a turn (callgrind); 64 ids read from one ``os.urandom`` call, their bits set
by one ``translate`` each, in C, cost ~2,000 an id, most of it the id's own string. The randomness is the same
``os.urandom``, 122 random bits an id, as ``uuid4``'s.

A forked child drops the ids its parent had read and not handed out: it would hand out the same ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_BATCH = 64
_ID_BYTES = 16
_ID_HEX = 2 * _ID_BYTES
# Byte 6 of an id carries the version in its high nibble, byte 8 the variant in its two high bits.
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_RFC_4122_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))
_SLICES = tuple(slice(i, i + _ID_HEX) for i in range(0, _ID_HEX * _BATCH, _ID_HEX))

_ids: Iterator[str] = iter(())


def _read_batch() -> Iterator[str]:
    raw = bytearray(os.urandom(_ID_BYTES * _BATCH))
    raw[6::_ID_BYTES] = raw[6::_ID_BYTES].translate(_VERSION_4)
    raw[8::_ID_BYTES] = raw[8::_ID_BYTES].translate(_RFC_4122_VARIANT)
    text = raw.hex()
    # Each id is taken by one next() on this iterator, which is atomic under the GIL: two threads
    # never get the same one. Two threads that both found the batch spent each read a new one.
    return map(text.__getitem__, _SLICES)


def new_turn_id() -> str:
    """A fresh random version-4 UUID in hex (32 lowercase hex digits, no dashes)."""
    global _ids
    for turn_id in _ids:
        return turn_id
    ids = _ids = _read_batch()
    return next(ids)


def _forget_after_fork() -> None:
    global _ids
    _ids = iter(())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)

"""Hand every finished call record to whoever wants to follow spend: per-turn and global subscribers.

A subscriber is ``fn(record, turn)``; ``turn`` is ``None`` for a call made outside any turn. It may be
a plain function or an ``async def``. Plain subscribers run inline, in whatever thread LiteLLM
logged from, so they should be quick and thread-safe. Async ones are scheduled on the running event
loop (or the loop the turn was opened on) and never awaited by the LLM call.

``record.cost_usd`` is ``None`` when unpriced and ``Decimal(0)`` when free. Late records (the event
came after the turn closed) carry ``RecordFlag.LATE`` so a persisted turn can be corrected.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnledger._logging import warn_once
from turnledger.records import TokenCallRecord

if TYPE_CHECKING:
    from turnledger.accumulator import TurnTokenAccumulator

Subscriber = Callable[[TokenCallRecord, "TurnTokenAccumulator | None"], "Awaitable[object] | object"]

_global_lock = threading.Lock()
_global_subscribers: tuple[Subscriber, ...] = ()
_background_tasks: set[asyncio.Future[Any]] = set()


def subscribe(fn: Subscriber) -> Callable[[], None]:
    """Register ``fn`` for every record of every turn (and of calls made outside a turn).

    Returns a function that unsubscribes it.
    """
    global _global_subscribers
    with _global_lock:
        _global_subscribers = (*_global_subscribers, fn)

    def unsubscribe() -> None:
        global _global_subscribers
        with _global_lock:
            _global_subscribers = tuple(s for s in _global_subscribers if s is not fn)

    return unsubscribe


def global_subscribers() -> tuple[Subscriber, ...]:
    return _global_subscribers


def dispatch(
    record: TokenCallRecord,
    turn: TurnTokenAccumulator | None,
    subscribers: tuple[Subscriber, ...],
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Call each subscriber; a failing one is logged once per subscriber and the rest still run."""
    for fn in subscribers:
        try:
            result = fn(record, turn)
            if inspect.isawaitable(result):
                _schedule(result, loop, fn)
        except Exception:
            warn_once(f"subscriber:{_name(fn)}", "turnledger subscriber %s raised", _name(fn), exc_info=True)


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _schedule(awaitable: Awaitable[object], loop: asyncio.AbstractEventLoop | None, fn: object) -> None:
    async def guarded() -> None:
        try:
            await awaitable
        except Exception:
            warn_once(f"subscriber:{_name(fn)}", "turnledger subscriber %s raised", _name(fn), exc_info=True)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not None:
        task = running.create_task(guarded())
        _background_tasks.add(task)
        task.add_done_callback(_background_tasks.discard)
        return
    if loop is not None and loop.is_running() and not loop.is_closed():
        cfut = asyncio.run_coroutine_threadsafe(guarded(), loop)
        wrapped = asyncio.wrap_future(cfut, loop=loop)
        _background_tasks.add(wrapped)
        wrapped.add_done_callback(_background_tasks.discard)
        return
    # No loop anywhere (a sync program): run it here, in LiteLLM's logging thread.
    asyncio.run(guarded())


async def drain_subscribers(timeout: float = 5.0) -> None:
    """Wait for scheduled async subscribers of this loop to finish (for shutdown and tests)."""
    loop = asyncio.get_running_loop()
    pending = [t for t in list(_background_tasks) if getattr(t, "get_loop", lambda: None)() is loop]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


class JsonlLedger:
    """A subscriber that appends each record, with its turn's labels, as one JSON line to a file.

    Money is written as a decimal string. Nothing from the prompt or the completion is written:
    records never hold text. ``fsync=True`` makes each line durable before the call returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: TokenCallRecord, turn: TurnTokenAccumulator | None) -> None:
        line: dict[str, Any] = {"recorded_at": datetime.now(UTC).isoformat()}
        if turn is not None:
            line["turn"] = turn.labels_dict()
        line["call"] = record.to_dict()
        data = (json.dumps(line, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock, open(self.path, "ab") as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())

    def read(self) -> list[Mapping[str, Any]]:
        """Every line written so far, parsed (a convenience for tests and tools)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

"""The turn: :class:`TurnTokenAccumulator`, the ContextVar that holds it, and the scopes around it.

A call belongs to the turn that was current when it *started*. LiteLLM's pre-call hook runs in the
caller's context, so the callback marks the call with the current turn there: a weak reference left
in LiteLLM's details of that call, which every later hook of the call is handed. The end event may
come later, from another thread, even from a thread with no copy of the caller's context (sync
streams), after any number of other calls: it finds its turn through that mark, and never through
the context it fires in. :data:`call_bindings` (``litellm_call_id`` -> turn, evicted by count) is
only for a call whose details cannot be marked.

A turn is complete when its scope exits: LiteLLM logs a successful async call about a millisecond
*after* the await returns, so the scope waits for the calls still pending. Two deadlines apply:

- a call whose response has arrived (a non-stream call LiteLLM has returned, a stream read to its end
  that LiteLLM has begun to log) will certainly be logged, only late when the machine is busy
  (measured: over 2 s for 600 calls in flight on 2 loaded cores) or a logger ahead of turnledger is
  slow, so the scope waits up to ``logging_timeout`` for it;
- anything else (a stream still being read or broken off, a call still in flight) may never be
  logged, so it gets ``settle_timeout``.

A call still pending then is recorded as ``abandoned``: LiteLLM fires no event for a stream the caller
broke off or a task cancelled mid-call, yet the provider bills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import operator
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from turnledger import subscribers as _subscribers_module
from turnledger import turn_ids as _turn_ids
from turnledger._logging import warn_once
from turnledger.call_details import response_arrived
from turnledger.money import micros_from_usd, split_micros, sum_costs
from turnledger.records import CallKind, CallStatus, RecordFlag, TokenCallRecord
from turnledger.subscribers import Subscriber, dispatch, global_subscribers
from turnledger.turn_ids import new_turn_id

if TYPE_CHECKING:
    from turnledger.price_table import PriceTable

DEFAULT_SETTLE_TIMEOUT_S = 2.0
"""How long a closing scope waits for a stream or an in-flight call to report. Ordinary turns settle
in about a millisecond; only a call that will never report (a broken-off stream) waits this long."""

DEFAULT_LOGGING_TIMEOUT_S = 30.0
"""How long a closing scope waits for LiteLLM to log a call whose response has already arrived."""

EventKey = tuple[str, str, Hashable]
"""What tells one LiteLLM end event from another: call id, status, end time."""

MAX_DEFERRED_RECORDS = 8
"""Events a turn keeps unread at most. Each holds LiteLLM's call details and response, some 50
objects the garbage collector tracks, that LiteLLM would otherwise free at once; 8 keep that well
below the collector's default young-generation threshold (700), so deferring starts no collections
of its own (measured with gc callbacks: 32 triggered one per 15-call turn)."""

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_NO_MORE_PENDING = cast("dict[str, list[StartedCall]]", MappingProxyType({}))
"""A turn's ``_more_pending`` until its first write: further calls in flight under a call id already
pending (the caller passed the same litellm_call_id to each), each end event of the id handing its place
to the next. Read-only: the turn's own dict is made by its first write (see ``_own_more_pending_locked``);
until then every read (truthiness, get, values) sees an empty mapping, and a write anywhere else raises
rather than reaching another turn. Typed as the dict it becomes (its only writers make it one first)."""

_current_turn: ContextVar[TurnTokenAccumulator | None] = ContextVar("turnledger_current_turn", default=None)


def get_current_accumulator() -> TurnTokenAccumulator | None:
    """The turn open in this context, or ``None`` outside any turn."""
    return _current_turn.get()


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """The application's own description of a model, attached to every record of that model."""

    model_ref: str
    model_id: str | None = None
    display_name: str | None = None


@dataclass(slots=True)
class PendingCall:
    """A call that has started (pre-call hook) and not yet ended."""

    call_id: str
    model: str
    provider: str | None
    call_kind: CallKind
    stream: bool
    started_at: datetime
    started_monotonic: float
    request: Mapping[str, Any] = field(default_factory=dict)
    """What an estimate of an abandoned call may need (messages, input, tools, service tier). Held in memory only."""
    price_table: PriceTable | None = None
    """The price table of the callback that saw the call start, for pricing an abandoned call."""
    call_details: Mapping[str, Any] | None = None
    """LiteLLM's live ``model_call_details`` of the call (read only): LiteLLM marks in it when the
    provider's response has arrived, which tells a call that will be logged from one that may not."""
    answer_at_start: object = None
    """``original_response`` in the call details when this call (or attempt) started: the answer of an
    earlier attempt of the same call (LiteLLM's own retries share the details), never this one's."""
    request_duration_ms: object = None
    """How long LiteLLM measured this call's (or attempt's) request to take (``llm_api_duration_ms`` in
    the call details, written when the request ends), or ``None`` when it wrote none after the call
    started: the value there is then an earlier attempt's, or none at all."""
    headers_at_start: object = None
    """``response_headers`` in the call details when this attempt started, for a further attempt of a
    call LiteLLM retries itself (``None`` for a first one, which starts with none): an earlier
    attempt's, never this one's."""

    @property
    def responded(self) -> bool:
        """The provider's response arrived and LiteLLM returned it: an end event is on its way.

        A stream counts only once LiteLLM has assembled it for logging: it logs one only once the
        caller has read it to the end.
        """
        return response_arrived(self.call_details, self.stream)

    @property
    def finished(self) -> bool:
        """Never: a bare pending call is over only when its end event comes."""
        return False

    @property
    def binder(self) -> object:
        return None

    def pending_call(self) -> PendingCall:
        return self

    def abandoned(self) -> None:
        """Nobody to tell: a bare pending call has no callback instance behind it."""


class StartedCall(Protocol):
    """A call the pre-call hook bound to a turn. The hook keeps references only (LiteLLM calls it with
    the caches cold, where every object built costs several times its warm price); the full
    :class:`PendingCall` is read from them only for a call that never reports."""

    @property
    def call_id(self) -> str: ...

    @property
    def responded(self) -> bool:
        """Its response arrived and an end event is on its way (a closing scope waits for it up to
        ``logging_timeout``). Never true of a call that is :attr:`finished` (no end event will come):
        a closing scope that finds a call responded takes it as not finished without asking."""
        ...

    @property
    def finished(self) -> bool:
        """It is over, and no end event will say so (an attempt LiteLLM never logs that has its
        answer): a closing scope does not wait for it, and reads its record when the turn closes."""
        ...

    @property
    def binder(self) -> object:
        """The callback instance whose pre-call hook bound the call (None: none)."""
        ...

    @property
    def call_details(self) -> Mapping[str, Any] | None:
        """LiteLLM's details of the call, the very object its end event carries (None: unknown)."""
        ...

    def pending_call(self) -> PendingCall:
        """The call as :class:`PendingCall`; never raises (what cannot be read is left unknown)."""
        ...

    def abandoned(self) -> None:
        """Told once, after the turn closed with the call still pending and kept its ``abandoned``
        record (the callback instance that bound the call counts it)."""
        ...


DeferredRecord = tuple[Any, ...]
"""An end event kept as LiteLLM delivered it, read into its record when the turn is next read: a
plain tuple whose first item reads it, ``event[0].build(event, turn)``, the rest what that reader
reads (a tuple subclass instance, read by its own method, cost 1,100 instructions more to make on
every event, callgrind). ``build`` never raises: an event that cannot be read becomes a flagged record.

Reading an event costs about three times as much where LiteLLM delivers it (caches cold after
its own work) as in a run of several events read back to back (measured by bench/capture_bench.py),
so a turn nobody is watching reads its events in batches: at most :data:`MAX_DEFERRED_RECORDS`
at a time, when :attr:`TurnTokenAccumulator.calls` or a total is read, and when the turn closes.
"""


AbandonedRecordFactory = Callable[[PendingCall, "ModelMetadata | None"], TokenCallRecord]


def _answered_record(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord | None:
    """An unlogged attempt priced from the answer it got, or ``None`` (estimated then, as abandoned)."""
    from turnledger.pricing import price_unlogged_answer

    try:
        return price_unlogged_answer(pending, meta)
    except Exception:
        warn_once("turn:unlogged_answer", "turnledger could not price the answer of an unlogged attempt", exc_info=True)
        return None


def _refused_attempt_record(
    pending: PendingCall, meta: ModelMetadata | None, *, raised: bool
) -> TokenCallRecord | None:
    """An unlogged attempt that failed before it could time out, not billed; or ``None``."""
    from turnledger.pricing import price_refused_attempt

    try:
        return price_refused_attempt(pending, meta, raised=raised)
    except Exception:
        warn_once("turn:refused_attempt", "turnledger could not read how an unlogged attempt ended", exc_info=True)
        return None


def _default_abandoned_record(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord:
    # Imported late: pricing depends on records only, but keeps this module import-light.
    from turnledger.pricing import price_abandoned_call

    return price_abandoned_call(pending, meta)


class _CallBindings:
    """``litellm_call_id`` -> the turn the call started in, kept a while after the turn closes so a
    late event still finds (and is flagged against) its own turn rather than another or none.

    Evicted by count, so a late enough event of a closed turn finds nothing here: the callback
    binds here only the calls it cannot mark with their turn (details LiteLLM handed it that are
    no mutable mapping: never seen from LiteLLM 1.106), and :meth:`TurnTokenAccumulator.begin_call`
    callers that pass no such details."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._map: OrderedDict[str, TurnMark] = OrderedDict()
        self.max_entries = max_entries

    def bind(self, call_id: str, turn: TurnTokenAccumulator) -> None:
        with self._lock:
            if call_id in self._map:
                self._map.move_to_end(call_id)
            self._map[call_id] = turn._weak_self
            # Evict the oldest bindings of *closed* turns only: an open turn must keep every binding,
            # however long it stays open, or its context-less events would land nowhere.
            skipped = 0
            while len(self._map) > self.max_entries and skipped < len(self._map):
                old_id, old_ref = self._map.popitem(last=False)
                old_turn = old_ref()
                if old_turn is not None and not old_turn.closed:
                    self._map[old_id] = old_ref
                    skipped += 1

    def lookup(self, call_id: str) -> TurnTokenAccumulator | None:
        with self._lock:
            ref = self._map.get(call_id)
        return ref() if ref is not None else None

    def __len__(self) -> int:
        return len(self._map)


call_bindings = _CallBindings()


class TurnMark(weakref.ref["TurnTokenAccumulator"]):
    """A weak reference to a turn, as a call carries it in LiteLLM's details of that call.

    Those details are the ``kwargs`` every logger of the call is handed, and another logger may pickle
    them (to hand them to a process or a queue): a plain weak reference cannot be pickled, so its
    pickle failed and its event was lost. A mark pickles as ``None``, no turn: a turn lives in one
    process. Copied (``copy.copy``, ``copy.deepcopy``) it is itself, as a plain weak reference is.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[None], tuple[()]]:
        return (type(None), ())

    def __copy__(self) -> TurnMark:
        return self

    def __deepcopy__(self, memo: object) -> TurnMark:
        return self


class TurnTokenAccumulator:
    """Every LLM call of one user turn, with exact totals.

    Thread-safe: LiteLLM logs sync calls from its thread pool and sync streams from a thread of
    their own. Records are appended once per LiteLLM event, however many callback instances see it.
    """

    def __init__(
        self,
        *,
        turn_id: str | None = None,
        user_id: str | None = None,
        thread_id: str | None = None,
        message_id: str | None = None,
        tenant_id: str | None = None,
        tags: Sequence[str] = (),
        settle_timeout: float = DEFAULT_SETTLE_TIMEOUT_S,
        logging_timeout: float = DEFAULT_LOGGING_TIMEOUT_S,
        abandoned_record_factory: AbandonedRecordFactory | None = None,
        **labels: Any,
    ) -> None:
        # new_turn_id's usual case in place (the next id of the batch it read): a Python-level call
        # fewer on every turn. Ids are never empty; an exhausted batch gives None, and new_turn_id reads one.
        self.turn_id: str = turn_id or next(_turn_ids._ids, None) or new_turn_id()
        self.user_id = user_id
        self.thread_id = thread_id
        self.message_id = message_id
        self.tenant_id = tenant_id
        self.tags: tuple[str, ...] = tuple(tags)
        # ``**labels`` is a dict of its own already.
        self.labels: dict[str, Any] = labels
        """Any further labels the caller attached (free-form; never interpreted)."""
        self.settle_timeout = settle_timeout
        self.logging_timeout = logging_timeout
        # A float now, the datetime when asked for (see created_at): datetime.now(UTC) makes two
        # datetimes, ~2,800 instructions (callgrind), on every turn, for a value few turns read.
        self._opened_at = time.time()
        self._records: list[TokenCallRecord] = []
        self._deferred: list[DeferredRecord] = []
        # Held while deferred events are read and while a record is added behind them, so the records
        # keep the order their events arrived in; never held while subscribers run. Re-entrant: reading
        # an event may log, and a logging handler may read this turn's totals on the same thread.
        self._build_lock = _RLock()
        self._weak_self = TurnMark(self)
        self.late_calls: list[TokenCallRecord] = []
        """Records whose event came after the turn closed; not part of the totals."""
        if abandoned_record_factory:
            self._abandoned_factory = abandoned_record_factory
        self._lock = threading.Lock()
        self._pending: dict[str, StartedCall] = {}
        self._seen_events: set[EventKey] = set()
        # The turn's own, not the class's, though most turns never change them: each is read on every
        # call (_closed twice by the pre-call hook and again at its end; add_deferred reads the next four
        # on every event, build_record the metadata), and Python 3.11 reads a field an instance lacks
        # the long way, ~300 instructions a read where the turn's own is ~20 (callgrind); a store is
        # ~50, once a turn. Immutable values: a turn replaces them, never writes into them.
        self._closed: bool = False
        self._subscribers: tuple[Subscriber, ...] = ()
        self._more_pending = _NO_MORE_PENDING
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | tuple[()] = ()
        self._sync_waiters = 0
        self._metadata: Mapping[str, ModelMetadata] = _NO_METADATA

    # Fields most turns never change and few read, read off the class until a turn writes its own: a
    # store in __init__ is ~50 instructions, a dict or list made ~150, on every turn. Only immutable
    # values here: a turn writes its own, never into these.
    _abandoned_factory: AbandonedRecordFactory | None = None
    # Call ids LiteLLM retried itself (num_retries): their attempts share the id. A set of the
    # turn's own once it has one (begin_call with retry=True).
    _retried_ids: frozenset[str] | set[str] = frozenset()
    # Made by the first sync wait (few turns have one): a Condition over a plain Lock costs
    # several microseconds to make (it probes the lock for three methods it lacks).
    _idle: threading.Condition | None = None
    _wake_if_unanswered = False
    _bare_metadata: Mapping[str, ModelMetadata] = _NO_METADATA
    _loop: asyncio.AbstractEventLoop | None = None
    _token: Token[TurnTokenAccumulator | None] | None = None

    # -- when ------------------------------------------------------------------------------------
    _created_at: datetime | None = None
    _closed_at: datetime | None = None
    _closed_ts: float | None = None

    @property
    def created_at(self) -> datetime:
        """When the turn opened (UTC); what its stored rows are dated by unless told otherwise."""
        at = self._created_at
        if at is None:
            at = self._created_at = datetime.fromtimestamp(self._opened_at, UTC)
        return at

    @created_at.setter
    def created_at(self, value: datetime) -> None:
        self._created_at = value

    @property
    def closed_at(self) -> datetime | None:
        """When the turn closed (UTC), or None while it is open."""
        at = self._closed_at
        if at is None and self._closed_ts is not None:
            at = self._closed_at = datetime.fromtimestamp(self._closed_ts, UTC)
        return at

    # -- labels & metadata -----------------------------------------------------------------------
    def labels_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "turn_id": self.turn_id,
            "user_id": self.user_id,
            "thread_id": self.thread_id,
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "tags": list(self.tags),
        }
        out.update(self.labels)
        return out

    def register_model_metadata(
        self, model_ref: str, *, model_id: str | None = None, display_name: str | None = None
    ) -> ModelMetadata:
        """Attach the application's ``model_id`` / ``display_name`` to every record of ``model_ref``.

        ``model_ref`` is the model string the application passes to LiteLLM (``openai/gpt-4o-mini``);
        LiteLLM reports the bare name (``gpt-4o-mini``), so the bare name is indexed too.
        """
        meta = ModelMetadata(model_ref=model_ref, model_id=model_id, display_name=display_name)
        # Calls that ended before this were made without it, whenever their events are read.
        self._read_deferred()
        with self._lock:
            # New dicts (a turn registers a few models at most): the class's empty ones are shared.
            self._metadata = {**self._metadata, model_ref: meta}
            self._bare_metadata = {**self._bare_metadata, _bare_model_name(model_ref): meta}
        return meta

    @property
    def has_model_metadata(self) -> bool:
        """Whether any model metadata was registered (most turns register none)."""
        return bool(self._metadata)

    def metadata_for(self, model: str | None) -> ModelMetadata | None:
        # Most turns register none: asked on every event, that answer needs no lock.
        if not model or not self._metadata:
            return None
        with self._lock:
            return (
                self._metadata.get(model)
                or self._bare_metadata.get(model)
                or self._bare_metadata.get(_bare_model_name(model))
            )

    # -- subscribers -----------------------------------------------------------------------------
    def on_call(self, fn: Subscriber) -> Callable[[], None]:
        """Have ``fn(record, turn)`` called with each record of this turn as it lands (and late ones)."""
        with self._lock:
            self._subscribers = (*self._subscribers, fn)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not fn)

        return unsubscribe

    # -- the call lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_calls(self) -> int:
        """Calls started and not yet over (an attempt LiteLLM never logs is over once it has its answer)."""
        with self._lock:
            return sum(1 for p in self._all_pending_locked() if not p.finished)

    @property
    def calls(self) -> list[TokenCallRecord]:
        """Records in the order their events arrived."""
        # Not only when events wait: another thread may be reading a batch it already took.
        self._read_deferred()
        return self._records

    def begin_call(
        self,
        pending: StartedCall,
        *,
        bind: bool = True,
        retry: bool = False,
        new_call: bool = False,
        call_id: str | None = None,
    ) -> None:
        """Count a starting call as pending in this turn, and bind it in :data:`call_bindings` so its
        end event finds it wherever it is logged from; ``bind=False`` when the call carries its turn
        itself (see the callback's ``_TURN_OF_CALL``) and needs no binding that could be evicted.

        ``retry``: a further attempt of a call LiteLLM retries itself under the same call id. LiteLLM
        starts it only once the attempt before it has raised, so an attempt still pending then ended
        unlogged: it becomes a record of its own (``unlogged_retry_attempt``), and so does the last
        attempt if it never reports either.

        ``new_call``: this is a call of its own, not its start seen again by another callback instance:
        with its id already pending (the caller passed one ``litellm_call_id`` to several calls) and
        bound by the same instance (a second instance handed a copy of the details is not a second
        call), it is pending as well, and the scope waits for both.

        ``call_id``: ``pending.call_id``, when the caller has it at hand: the property is a Python-level
        call, 400 instructions on every call.

        The callback's pre-call hook makes the usual case itself (``bind=False``, no retry, the id not
        pending yet in the open turn) and calls this for any other: a change to that case here is one
        there too (tests/unit/test_pre_call_equivalence.py compares them).
        """
        if call_id is None:
            call_id = pending.call_id
        superseded: StartedCall | None = None
        # acquire/release rather than ``with``, and one dict operation for the usual first start: on
        # every call, 1,000 fewer instructions (callgrind).
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                return
            existing = self._pending.setdefault(call_id, pending)
            if retry:
                retried = self._retried_ids
                if not isinstance(retried, set):
                    retried = self._retried_ids = set()
                retried.add(call_id)
                superseded = self._supersede_locked(None if existing is pending else existing, pending)
            elif existing is not pending and new_call and existing.binder is pending.binder is not None:
                self._own_more_pending_locked().setdefault(call_id, []).append(pending)
        finally:
            lock.release()
        if bind:
            call_bindings.bind(call_id, self)
        if superseded is not None:
            with self._build_lock:
                # Behind the events that arrived before this attempt started.
                self._read_deferred_locked()
                self._add_abandoned(superseded, superseded=True)

    def _supersede_locked(self, existing: StartedCall | None, attempt: StartedCall) -> StartedCall | None:
        """Put a further attempt of a call in place of the attempt before it, and return that one if it
        is still pending. The attempts of a call share its details; another call the caller passed
        the same ``litellm_call_id`` to has its own, and is not superseded: taking it for the attempt
        before recorded it as an estimated abandoned attempt, and its own end event, unwaited for, came
        late, out of the turn's totals."""
        call_id = attempt.call_id
        details = getattr(attempt, "call_details", None)
        if existing is None or details is None or getattr(existing, "call_details", None) is details:
            self._pending[call_id] = attempt
            return existing
        more = self._own_more_pending_locked().setdefault(call_id, [])
        for i, started in enumerate(more):
            if getattr(started, "call_details", None) is details:
                more[i] = attempt
                return started
        # The attempt before it ended with an event: this one is in flight beside the other call.
        more.append(attempt)
        return None

    def _own_more_pending_locked(self) -> dict[str, list[StartedCall]]:
        more = self._more_pending
        if type(more) is not dict:
            more = self._more_pending = {}
        return more

    def started_call(self, call_id: str, call_details: object = None) -> StartedCall | None:
        """The call ``call_id`` as its pre-call hook bound it, while it is pending: until its end event
        is added (or deferred), or the turn closes. With other calls pending under the same id (the
        caller passed it to each), the one whose LiteLLM details are ``call_details``, or ``None``."""
        with self._lock:
            started = self._pending.get(call_id)
            more = self._more_pending.get(call_id) if self._more_pending else None
            if not more or started is None or call_details is None:
                return started
            for candidate in (started, *more):
                if getattr(candidate, "call_details", None) is call_details:
                    return candidate
            return None

    def add(self, record: TokenCallRecord, *, event_key: EventKey | None = None, call_details: object = None) -> bool:
        """Add a finished call. Returns False if it was a duplicate of an event already added.
        ``call_details``: the LiteLLM details its end event carried (see :meth:`_ended_locked`).

        After the turn closed, the record is kept in ``late_calls``, flagged ``late``, and still handed
        to subscribers; it no longer changes the totals.
        """
        with self._build_lock:
            # Behind the events still unread, which arrived before this one.
            self._read_deferred_locked()
            with self._lock:
                if event_key is not None:
                    if event_key in self._seen_events:
                        return False
                    self._seen_events.add(event_key)
                if self._closed:
                    record = record.with_flags(RecordFlag.LATE)
                    self.late_calls.append(record)
                else:
                    self._records.append(record)
                if self._more_pending:
                    self._ended_locked(record.call_id, call_details)
                else:
                    self._pending.pop(record.call_id, None)
                waiters = self._wake_waiters_locked()
                subscribers = self._subscribers + global_subscribers()
        if waiters:
            _wake(waiters)
        if subscribers:
            dispatch(record, self, subscribers, self._loop)
        return True

    def add_deferred(
        self, event: DeferredRecord, call_id: str, event_key: EventKey, call_details: object = None
    ) -> bool | None:
        """Keep an end event to be read later (see :class:`DeferredRecord`). Returns False for a
        duplicate event, and None when the turn cannot defer it: it is closed (the record is late) or
        someone subscribed (they hear of each record as it lands); then :meth:`add` the record now."""
        # acquire/release rather than ``with``, and the waiters looked at only when there are any: on
        # every event, 1,700 fewer instructions (callgrind).
        lock = self._lock
        lock.acquire()
        try:
            # The global subscribers read off their module (not through global_subscribers()), and the
            # key hashed once (added, then the set's size tells whether it was new): 500 fewer
            # instructions an event (callgrind).
            if self._closed or self._subscribers or _subscribers_module._global_subscribers:
                return None
            seen = self._seen_events
            before = len(seen)
            seen.add(event_key)
            if len(seen) == before:
                return False
            self._deferred.append(event)
            full = len(self._deferred) >= MAX_DEFERRED_RECORDS
            if self._more_pending:
                self._ended_locked(call_id, call_details)
            else:
                self._pending.pop(call_id, None)
            waiters = self._wake_waiters_locked() if self._waiters or self._sync_waiters else None
        finally:
            lock.release()
        if waiters:
            _wake(waiters)
        if full:
            self._read_deferred()
        return True

    def _ended_locked(self, call_id: str, call_details: object) -> None:
        """A call ``call_id`` ended. With others in flight under the same id, the one whose details its
        end event carried is over: taking the first one for it instead kept a call that had ended
        pending, so the scope waited for it, and priced the one still in flight, when abandoned, from
        the other's input."""
        more = self._more_pending.get(call_id)
        if more and call_details is not None:
            for i, started in enumerate(more):
                if getattr(started, "call_details", None) is call_details:
                    del more[i]
                    if not more:
                        del self._more_pending[call_id]
                    return
        self._pending.pop(call_id, None)
        self._next_pending_locked(call_id)

    def _next_pending_locked(self, call_id: str) -> None:
        """A call ``call_id`` ended: another in flight under the same id is pending in its place."""
        more = self._more_pending.get(call_id)
        if more:
            self._pending[call_id] = more.pop(0)
            if not more:
                del self._more_pending[call_id]

    def _read_deferred(self) -> None:
        # acquire/release rather than ``with`` here and below: once a batch, 2,500 fewer instructions
        # (callgrind).
        build_lock = self._build_lock
        build_lock.acquire()
        try:
            self._read_deferred_locked()
        finally:
            build_lock.release()

    def _read_deferred_locked(self) -> None:
        """Read the deferred events into records; the caller holds ``_build_lock`` (not ``_lock``:
        reading an event looks up the turn's model metadata)."""
        if not self._deferred:
            return
        lock = self._lock
        lock.acquire()
        try:
            events, self._deferred = self._deferred, []
        finally:
            lock.release()
        records: list[TokenCallRecord] = []
        try:
            for event in events:
                records.append(event[0].build(event, self))
        finally:
            # build() turns every Exception into a flagged record; anything else (KeyboardInterrupt, a
            # gevent Timeout) must not take the batch with it: the unread events go back, first in line.
            lock.acquire()
            try:
                self._records.extend(records)
                if len(records) < len(events):
                    self._deferred[:0] = events[len(records) :]
            finally:
                lock.release()

    def _wake_waiters_locked(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """Wake whoever waits for the pending calls (only a closing scope does): a call just ended, so
        the wait is over if none is left, and its deadline may be shorter if one is (the last call that
        had its response is in: the rest get ``settle_timeout``, not ``logging_timeout``)."""
        if self._sync_waiters and self._idle is not None:
            # Condition.notify_all is Python code run on every event otherwise, mostly for nobody.
            self._idle.notify_all()
        if not self._waiters:
            return []
        if self._pending or self._more_pending:
            # Woken only when its wait is over or changes (see _settle_async): a wake-up is a round of
            # the wait loop (a future and a timer made, checked, cancelled), and the usual scope exit
            # has its last two calls still being logged: one round a turn less, ~40 Python-level calls,
            # 25k instructions a call with a scope per 3-call turn (callgrind).
            try:
                if self._wake_if_unanswered:
                    awaited, responded = self._wait_state_locked()
                else:
                    # Whether a call has its response decides nothing then: not read (a Python-level
                    # call or two a pending call, ~3,500 instructions for a call with its answer).
                    awaited, responded = self._awaited_locked(), False
            except Exception:
                # Call details that cannot be read: the waiter reads them again and decides.
                awaited = responded = False
            if awaited and (responded or not self._wake_if_unanswered):
                return []
        waiters, self._waiters = self._waiters, ()
        return waiters

    # -- closing ---------------------------------------------------------------------------------
    async def aclose(self, timeout: float | None = None) -> None:
        """Wait (bounded) for pending calls, then close: what is still pending becomes ``abandoned``.

        ``timeout`` overrides both deadlines (``settle_timeout`` and ``logging_timeout``). Cancelled
        while it waits, it still waits for the calls whose answer has arrived (at most
        ``settle_timeout`` more), then re-raises.
        """
        try:
            try:
                # Nothing pending (a turn with no calls, or whose events are all in): no wait to set up.
                if self._pending or self._more_pending:
                    await self._settle_async(timeout)
            except asyncio.CancelledError:
                # Cancelled (a request cancelled just after its last call returned): a call whose
                # answer has arrived is being logged, within milliseconds. Closed now, it would be
                # estimated as abandoned and its reported usage would come as a late event no table
                # holds. So wait for those calls only, and no longer than ``settle_timeout``: a
                # cancelled request (a server shutting down) must not wait out ``logging_timeout`` for
                # a stuck logger. A second cancellation (anyio repeats it at every await) ends it too.
                with contextlib.suppress(asyncio.CancelledError):
                    await self._settle_async(
                        self.settle_timeout if timeout is None else min(timeout, self.settle_timeout),
                        answered_only=True,
                    )
                raise
        finally:
            self._finalize()
            # _deactivate in place: a Python-level call fewer on every turn.
            token = self._token
            if token is not None:
                self._token = None
                try:
                    _current_turn.reset(token)
                except ValueError:
                    # As _deactivate: closed from another context.
                    if _current_turn.get() is self:
                        _current_turn.set(None)

    def close(self, timeout: float | None = None) -> None:
        """The sync twin of :meth:`aclose`; blocks the calling thread while it waits.

        Refused on an event loop's thread when it would have to wait: use ``await turn.aclose()``.
        """
        if timeout != 0 and self.pending_calls:
            _refuse_blocking_inside_event_loop("TurnTokenAccumulator.close()", "`await turn.aclose()`")
        try:
            self._settle_sync(timeout)
        finally:
            self._finalize()
            self._deactivate()

    def _awaited_locked(self) -> bool:
        """Whether a pending call may still report its end: one that is over without an event is
        recorded at close, and nothing is waited for it."""
        # A loop over the usual calls under distinct ids, not any() over a list of them all: a list and
        # a generator fewer, ~1,500 instructions, at every event that leaves calls pending.
        for p in self._pending.values() if not self._more_pending else self._all_pending_locked():
            if not p.finished:
                return True
        return False

    def _wait_state_locked(self) -> tuple[bool, bool]:
        """Whether a pending call may still report its end (see :meth:`_awaited_locked`), and whether
        one has its response (it gets ``logging_timeout``), in one pass."""
        awaited = False
        for p in self._pending.values() if not self._more_pending else self._all_pending_locked():
            if p.responded:
                # Not finished then (see StartedCall.responded): both are known.
                return True, True
            if not awaited and not p.finished:
                awaited = True
        return awaited, False

    def _all_pending_locked(self) -> list[StartedCall]:
        calls = list(self._pending.values())
        for more in self._more_pending.values():
            calls.extend(more)
        return calls

    def _settle_deadline_locked(self, started: float, timeout: float | None, responded: bool | None = None) -> float:
        """When to stop waiting, re-evaluated on every wake-up: a call can get its response meanwhile.
        ``responded``: whether a pending call has its response, if the caller already knows."""
        if timeout is not None:
            return started + timeout
        if responded is None:
            responded = any(p.responded for p in self._all_pending_locked())
        if responded:
            return started + max(self.logging_timeout, self.settle_timeout)
        return started + self.settle_timeout

    async def _settle_async(self, timeout: float | None, *, answered_only: bool = False) -> None:
        loop = asyncio.get_running_loop()
        started = _monotonic()
        lock = self._lock
        while True:
            # The lock taken without ``with``, and the future made without the loop's Python-level
            # create_future when it is asyncio's own: in every wait's first round. Pinned by the wait
            # tests in tests/unit/test_accumulator.py.
            lock.acquire()
            try:
                if not self._pending and not self._more_pending:
                    # Woken by the last call's event, the usual end of a wait.
                    return
                if timeout is None and not answered_only and started + self.settle_timeout > _monotonic():
                    # Whether a call has its response is not read until settle_timeout has passed: till
                    # then the wait goes on either way, and the deadline filed is settle_timeout's.
                    # Woken there by the keeper, the next round reads it and, for a call with its
                    # response, files logging_timeout's. Most waits end well before (their calls' events
                    # come within milliseconds): a response_arrived read fewer, ~3,500 instructions, at
                    # every wait and at every event that leaves calls pending (see _wake_waiters_locked).
                    awaited, responded = self._awaited_locked(), False
                else:
                    awaited, responded = self._wait_state_locked()
                if not awaited or (answered_only and not responded):
                    return
                deadline = self._settle_deadline_locked(started, timeout, responded)
                if deadline <= _monotonic():
                    return
                # Whether an event that leaves no call with its response changes this wait: it
                # shortens the long deadline, and ends a wait for answered calls only. One flag for
                # every waiter (two closers of a turn, on one loop or two): one that needs the wake
                # keeps it set until the waiters are woken. A waiter woken that did not need it waits
                # another round; one left asleep that needed it waited out logging_timeout.
                wake_if_unanswered = responded and (timeout is None or answered_only)
                waiters = self._waiters
                if wake_if_unanswered or not waiters:
                    self._wake_if_unanswered = wake_if_unanswered
                fut: asyncio.Future[None] = (
                    _Future(loop=loop) if type(loop).create_future is _BASE_CREATE_FUTURE else loop.create_future()
                )
                if waiters:
                    waiters.append((loop, fut))
                else:
                    self._waiters = [(loop, fut)]
            finally:
                lock.release()
            # On a timeout, loop once more: the deadline may have moved (a response arrived). The
            # keeper resolving the future at the deadline is what wait_for does, without its extra
            # future, callbacks and timer (see _DeadlineKeeper).
            ref = weakref.ref(fut)
            keeper = _deadlines
            keeper.waits[ref] = deadline
            if deadline < keeper.wake_at:
                keeper.wake_by(deadline)
            try:
                await fut
            finally:
                keeper.waits.pop(ref, None)

    def _settle_sync(self, timeout: float | None) -> None:
        started = time.monotonic()
        with self._lock:
            while self._awaited_locked():
                remaining = self._settle_deadline_locked(started, timeout) - time.monotonic()
                if remaining <= 0:
                    return
                idle = self._idle
                if idle is None:
                    # Made under the lock: a second Condition over it would miss the first one's notifications.
                    idle = self._idle = threading.Condition(self._lock)
                self._sync_waiters += 1
                try:
                    idle.wait(remaining)
                finally:
                    # wait() holds the lock again when it returns, even on an exception.
                    self._sync_waiters -= 1

    def _finalize(self) -> None:
        # The locks taken without ``with``, and _read_deferred in place: on every turn (~600 instructions).
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                return
            self._closed = True
            self._closed_ts = time.time()
            if not self._pending and not self._more_pending:
                # The usual close: every call has reported. Reading the unread events is all there is to do.
                if not self._deferred:
                    return
                started = []
            else:
                started = self._all_pending_locked()
                self._pending.clear()
                if self._more_pending:
                    # Not empty: the turn's own dict (the class's is read-only).
                    self._more_pending.clear()
        finally:
            lock.release()
        try:
            # Closed: no event is deferred any more, and these are the last records of the turn.
            build_lock = self._build_lock
            build_lock.acquire()
            try:
                self._read_deferred_locked()
            finally:
                build_lock.release()
        finally:
            # Even if that read was interrupted: the calls that never reported are in no other list.
            for call in started:
                self._add_abandoned(call)
            if started:
                # Another closer of the turn still waiting (on another task, loop or thread) has nothing
                # left to wait for; woken once the records are in, it would otherwise sleep to its deadline.
                with self._lock:
                    waiters = self._wake_waiters_locked() if self._waiters or self._sync_waiters else None
                if waiters:
                    _wake(waiters)

    def _add_abandoned(self, call: StartedCall, *, superseded: bool = False) -> None:
        """Keep the record of a call (or attempt) that never reported; ``superseded`` for an attempt a
        retry superseded (it raised), which is not a call its turn abandoned and is not counted."""
        pending: PendingCall | None = None
        try:
            pending = call.pending_call()
            meta = self.metadata_for(pending.model)
            if call.call_id in self._retried_ids:
                # Only a retried call's answer is priced here: any other call whose answer arrived is
                # logged, if late.
                record = _answered_record(pending, meta)
                if record is None:
                    record = _refused_attempt_record(pending, meta, raised=superseded)
                if record is None:
                    record = (self._abandoned_factory or _default_abandoned_record)(pending, meta)
                record = record.with_flags(RecordFlag.UNLOGGED_RETRY_ATTEMPT)
            else:
                record = (self._abandoned_factory or _default_abandoned_record)(pending, meta)
        except Exception:
            # What could be read of the call, if anything; never priced.
            known: dict[str, Any] = {"model": "unknown"}
            if pending is not None:
                known = {
                    "model": pending.model,
                    "provider": pending.provider,
                    "call_kind": pending.call_kind,
                    "stream": pending.stream,
                    "started_at": pending.started_at,
                }
            record = TokenCallRecord(
                call_id=call.call_id,
                status=CallStatus.ABANDONED,
                flags=(RecordFlag.NO_CALLBACK, RecordFlag.PRICING_ERROR),
                **known,
            )
        with self._lock:
            self._records.append(record)
            subscribers = self._subscribers
        try:
            if not superseded:
                call.abandoned()
        except Exception:
            # Only a count depends on it: the record is kept, and the other calls still get theirs.
            warn_once("turn:abandoned", "turnledger could not count an abandoned call", exc_info=True)
        dispatch(record, self, subscribers + global_subscribers(), self._loop)

    # -- totals ----------------------------------------------------------------------------------
    def _snapshot(self) -> list[TokenCallRecord]:
        self._read_deferred()
        with self._lock:
            return list(self._records)

    @property
    def total_prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self._snapshot())

    @property
    def total_completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self._snapshot())

    @property
    def total_tokens(self) -> int:
        return sum(c.total_tokens for c in self._snapshot())

    @property
    def total_cost_usd(self) -> Decimal | None:
        """Exact sum of the priced calls; ``None`` only when every call is unpriced.

        Unpriced calls are never counted as free: see :attr:`unpriced_calls`.
        """
        total, _ = sum_costs(c.cost_usd for c in self._snapshot())
        return total

    @property
    def total_cost_micros(self) -> int | None:
        return micros_from_usd(self.total_cost_usd)

    @property
    def unpriced_calls(self) -> int:
        return sum(1 for c in self._snapshot() if c.cost_usd is None)

    @property
    def abandoned_calls(self) -> int:
        return sum(1 for c in self._snapshot() if c.status is CallStatus.ABANDONED)

    def per_message_summary(self) -> dict[str, dict[str, Any]]:
        """Totals grouped by model: calls, every token kind, exact ``cost_usd`` and ``cost_micros``.

        The per-model ``cost_micros`` add up to :attr:`total_cost_micros` (largest-remainder rounding).
        """
        groups: dict[str, list[TokenCallRecord]] = {}
        for record in self._snapshot():
            group = groups.get(record.model)
            if group is None:
                groups[record.model] = [record]
            else:
                group.append(record)
        summary: dict[str, dict[str, Any]] = {}
        for model, records in groups.items():
            first = records[0]
            totals = record_totals(records)
            statuses = [r.status for r in records]
            totals["failed_calls"] = statuses.count(CallStatus.FAILURE)
            totals["abandoned_calls"] = statuses.count(CallStatus.ABANDONED)
            totals["provider"] = first.provider
            totals["model_ref"] = first.model_ref
            totals["model_id"] = first.model_id
            totals["display_name"] = first.display_name
            summary[model] = totals
        micros = split_micros([s["cost_usd"] for s in summary.values()])
        for entry, m in zip(summary.values(), micros, strict=True):
            entry["cost_micros"] = m
        return summary

    @property
    def grand_total(self) -> dict[str, Any]:
        totals = record_totals(self._snapshot())
        totals["cost_micros"] = micros_from_usd(totals["cost_usd"])
        return totals

    def __iter__(self) -> Iterator[TokenCallRecord]:
        return iter(self._snapshot())

    def __len__(self) -> int:
        self._read_deferred()
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        return (
            f"TurnTokenAccumulator(turn_id={self.turn_id!r}, calls={len(self)}, "
            f"cost_usd={self.total_cost_usd!r}, closed={self._closed})"
        )

    # -- context ---------------------------------------------------------------------------------
    def _activate(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._token = _current_turn.set(self)

    def _deactivate(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            _current_turn.reset(token)
        except ValueError:
            # Closed from another context (start_turn in one task, close in another): that context's
            # copy of the var is its own business; ours must not point at a closed turn.
            if _current_turn.get() is self:
                _current_turn.set(None)


TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)


_TOKEN_GETTER = operator.attrgetter(*TOKEN_FIELDS)


def record_totals(records: Sequence[TokenCallRecord]) -> dict[str, Any]:
    """Calls, each token kind, the exact priced ``cost_usd`` (None if all unpriced) and ``unpriced_calls``."""
    totals: dict[str, Any] = {"calls": len(records)}
    # Column sums in C (one getter call per record): a generator per field was most of this time.
    columns = list(zip(*map(_TOKEN_GETTER, records), strict=True)) or [() for _ in TOKEN_FIELDS]
    totals.update(zip(TOKEN_FIELDS, map(sum, columns), strict=True))
    totals["cost_usd"], totals["unpriced_calls"] = sum_costs(r.cost_usd for r in records)
    return totals


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, fut in waiters:
        if loop is running:
            # On the waiter's own loop (an async call's event): no self-pipe write and wake-up needed.
            # _resolve in place: a Python-level call fewer on every turn.
            if not fut.done():
                fut.set_result(None)
            continue
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, fut)


_Future = asyncio.Future
# The class threading.RLock() makes an instance of (the C one), called directly: threading.RLock is a
# Python-level factory, ~500 instructions on every turn.
_RLock = type(threading.RLock())
# The clock of async waits and of the keeper that ends them, one and the same, bound here: the keeper's
# thread reads it at any time, also while a test drives this module's ``time`` for a sync close.
_monotonic = time.monotonic
# What asyncio's own loops make a future with (``Future(loop=self)``); a loop that makes its own
# (uvloop) is asked to.
_BASE_CREATE_FUTURE = asyncio.BaseEventLoop.create_future


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _DeadlineKeeper:
    """Ends the waits of closing scopes at their deadlines, for every event loop of the process, from
    a thread of its own.

    A wait armed a timer on its loop (``loop.call_at``) and cancelled it when the turn's last event
    woke it, as nearly every wait ends: asyncio's Python code made a timer handle, pushed it on the
    loop's heap (comparing handles in Python), cancelled it and later popped it, some 90 bytecodes and
    2,600 instructions a call with a scope per 3-call turn (callgrind). One timer per loop left armed
    at the earliest deadline cost more than it saved (+64 bytecodes a call): LiteLLM's logging worker
    pushes and pops a timer of its own for every event (``asyncio.wait_for``), and each of those, and
    every round of the loop, then went past it. Here a wait files its deadline in :attr:`waits` (one
    dict store, and one pop when it ends) and tells the thread only of a deadline earlier than the one
    it sleeps until: turns come and go, each filing a deadline later than the last, and the thread
    sleeps through to one whose wait is long over, then until the earliest deadline still filed.

    A wait is filed by a weak reference to its future: a loop closed while a scope waits on it is not
    kept alive by it, nor is the turn. The thread is made by the first wait, and again after a fork.
    """

    def __init__(self) -> None:
        self.waits: dict[weakref.ref[asyncio.Future[None]], float] = {}
        # When the thread next looks at the waits (time.monotonic), infinite while it looks: a wait
        # filed meanwhile then takes the lock, and finds when the thread looks next once it is done.
        # Read without the lock by every wait: a float read and compared under the GIL.
        self.wake_at = math.inf
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def wake_by(self, deadline: float) -> None:
        """Have the thread look at the waits by ``deadline``: a wait that ends then was just filed."""
        with self._lock:
            if deadline >= self.wake_at:
                return
            self.wake_at = deadline
            if self._thread is not None and self._thread.is_alive():
                self._wakeup.notify()
                return
            self._thread = threading.Thread(target=self._run, name="turnledger-deadlines", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = _monotonic()
                if self.wake_at > now:
                    self._wakeup.wait(None if self.wake_at == math.inf else self.wake_at - now)
                    continue
                self.wake_at = math.inf
                try:
                    due = self._due_locked(now)
                except Exception:
                    # Nothing here should raise; if it did, the thread lives on for the waits filed,
                    # and looks again a second later.
                    self.wake_at = now + 1.0
                    warn_once("turn:deadlines", "turnledger could not read closing scopes' deadlines", exc_info=True)
                    continue
                if due:
                    self._lock.release()
                    try:
                        _wake_at_deadline(due)
                    finally:
                        # Not held while the thread sleeps: a loop closed meanwhile is not kept alive.
                        del due
                        self._lock.acquire()

    def _due_locked(self, now: float) -> list[asyncio.Future[None]]:
        """The waits whose deadline has passed, taken off the list; when the thread looks next is set."""
        due: list[asyncio.Future[None]] = []
        next_at = math.inf
        waits = self.waits
        # A copy, in C, under the GIL: waits are filed and ended meanwhile without the lock.
        for ref, deadline in list(waits.items()):
            fut = ref()
            if fut is None or fut.done():
                # Its wait is over (the loop closed under it, or a pop not yet made).
                waits.pop(ref, None)
            elif deadline <= now:
                waits.pop(ref, None)
                due.append(fut)
            elif deadline < next_at:
                next_at = deadline
        self.wake_at = next_at
        return due


def _wake_at_deadline(due: list[asyncio.Future[None]]) -> None:
    for fut in due:
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            fut.get_loop().call_soon_threadsafe(_resolve, fut)


_deadlines = _DeadlineKeeper()


def _new_keeper_after_fork() -> None:
    # The child has no thread, and the parent's may have held the lock when it forked.
    global _deadlines
    _deadlines = _DeadlineKeeper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_keeper_after_fork)


def _bare_model_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


class TurnSink(Protocol):
    """Where a closed turn goes when its scope exits (``scoped_turn(..., persist=sink)``): a BatchWriter.

    ``persist_turn`` takes the turn before its first await: a scope whose exit is cancelled still
    calls it, and the cancellation may come at that await.
    """

    async def persist_turn(self, turn: TurnTokenAccumulator) -> None: ...

    def submit_threadsafe(self, turn: TurnTokenAccumulator) -> None: ...


class scoped_turn:
    """Open a turn for the block: ``async with scoped_turn(user_id=...) as turn`` or plain ``with``.

    On exit it waits (up to ``logging_timeout`` for calls whose response arrived, ``settle_timeout``
    for streams and calls in flight) for calls still being logged, records the ones
    that never report as ``abandoned``, closes the turn and restores the previous turn, so nested
    scopes stay isolated. Exceptions from the block propagate unchanged; calls made before them
    are still in the turn.

    With ``persist=writer`` (a :class:`~turnledger.BatchWriter`) the closed turn is then handed to the
    writer; the async exit waits until the turn is durable. A hand-off that fails is logged, never raised.
    """

    def __init__(
        self, *, turn: TurnTokenAccumulator | None = None, persist: TurnSink | None = None, **labels: Any
    ) -> None:
        self.turn = turn if turn is not None else TurnTokenAccumulator(**labels)
        self.persist = persist

    async def __aenter__(self) -> TurnTokenAccumulator:
        # TurnTokenAccumulator._activate in place: a Python-level call fewer on every turn.
        turn = self.turn
        try:
            turn._loop = asyncio.get_running_loop()
        except RuntimeError:
            # Run by no asyncio loop (trio through anyio): as _activate.
            turn._loop = None
        turn._token = _current_turn.set(turn)
        return turn

    def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Coroutine[Any, Any, None]:
        # Without a writer the exit is the turn's close: its coroutine is handed back to be awaited
        # directly, with no coroutine of the exit's own around it (made, and passed through on every
        # resume of the wait): ~1,500 instructions a turn (callgrind). Exceptions of the block
        # propagate as before (the close returns None).
        if self.persist is None:
            return self.turn.aclose()
        return self._aexit_persist()

    async def _aexit_persist(self) -> None:
        try:
            await self.turn.aclose()
        finally:
            # Also when the wait for pending calls was cancelled (a request cancelled, a timeout): the
            # turn is closed all the same, its calls are billable, and a turn not handed over is lost.
            if self.persist is not None:
                try:
                    await self.persist.persist_turn(self.turn)
                except Exception:
                    _persist_failed(self.turn)

    def __enter__(self) -> TurnTokenAccumulator:
        _refuse_blocking_inside_event_loop("a plain `with scoped_turn(...)`", "`async with scoped_turn(...)`")
        self.turn._activate()
        return self.turn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.turn.close()
        finally:
            if self.persist is not None:
                try:
                    self.persist.submit_threadsafe(self.turn)
                except Exception:
                    _persist_failed(self.turn)


def _persist_failed(turn: TurnTokenAccumulator) -> None:
    # Every lost hand-off is a billing record that did not reach the writer: logged with its turn id
    # each time (not once per cause), so it can be recovered from the logs or the subscribers' ledger.
    from turnledger._logging import logger, problem_counts

    problem_counts["scoped_turn:persist"] += 1
    logger.error(
        "turnledger could not hand turn %s (%d calls, cost_usd=%s) to its writer",
        turn.turn_id,
        len(turn),
        turn.total_cost_usd,
        exc_info=True,
    )


def _refuse_blocking_inside_event_loop(what: str, instead: str) -> None:
    """A sync wait on the event loop's own thread would starve the very loop LiteLLM logs async calls
    on: every call would be abandoned after the full deadline and then arrive late (measured)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} would block the running event loop; use {instead}")


def start_turn(**labels: Any) -> TurnTokenAccumulator:
    """Open a turn in the current context without a block (for middleware that cannot wrap one).

    Close it with ``await turn.aclose()`` / ``turn.close()`` (which also makes it no longer current
    in the context that opened it), or prefer :class:`scoped_turn`.
    """
    turn = TurnTokenAccumulator(**labels)
    turn._activate()
    return turn


def register_model_usage_metadata(
    model_ref: str, *, model_id: str | None = None, display_name: str | None = None
) -> bool:
    """Register model metadata on the current turn; returns False when no turn is open."""
    turn = _current_turn.get()
    if turn is None:
        return False
    turn.register_model_metadata(model_ref, model_id=model_id, display_name=display_name)
    return True

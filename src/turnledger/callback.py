"""LiteLLM events -> :class:`TokenCallRecord` in the turn the call started in.

Measured on litellm 1.106 (tests/integration/test_capture.py pins each):
- ``log_pre_api_call`` runs in the caller's context (for ``aembedding``, in an executor thread with a
  copy of it), before the request is sent: that is where a call is bound to its turn.
- Async calls end in ``async_log_*_event`` on the loop, about 1 ms after the await returned (success)
  or before the exception reaches the caller (failure). Sync calls end in ``log_*_event`` in
  LiteLLM's logging thread pool; a sync stream ends in a thread with no copy of the caller's context.
- Each event is delivered once per registered logger: the async path never also calls the sync
  hooks, and vice versa.

The hooks keep references and do little else: LiteLLM calls them with the caches cold from its own
work, where reading an event cost about three times what it costs in a run of events (measured in
bench/capture_bench.py). The pre-call hook keeps LiteLLM's arguments, read into a ``PendingCall`` only
for a call that never reports; the success hook keeps the event, and its turn reads it into a record
in a batch (see :class:`~turnledger.accumulator.DeferredRecord`), so the response LiteLLM returned is
read up to 8 events later or at scope exit: an application that changes a response object in place
(its ``usage``, its ``_hidden_params``) inside a turn changes what is billed, as it already could in
the millisecond before LiteLLM logs it. Read at once: a success LiteLLM did not price (see
``_deferrable``), a failure, an event after its turn closed, one outside any turn, and one a
subscriber must hear of as it lands. An event read later is counted ``captured`` when it arrives,
and ``errors`` (with its flagged record) when it is read, by the instance whose copy the turn kept.

The callback never raises into LiteLLM: every hook is wrapped, problems are logged once per cause and
counted, and a record is kept with whatever could be read.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from turnledger._logging import warn_once
from turnledger.accumulator import (
    EventKey,
    ModelMetadata,
    PendingCall,
    TurnMark,
    TurnTokenAccumulator,
    _current_turn,
    call_bindings,
    get_current_accumulator,
)
from turnledger.call_details import provider_answered, response_arrived
from turnledger.money import FLOAT_SIGNIFICANT_DIGITS, _from_float
from turnledger.price_table import PriceTable
from turnledger.pricing import (
    _FLOAT_SURELY_BELIEVABLE_FROM,
    _FLOAT_SURELY_BELIEVABLE_UNTIL,
    answer_timed_out,
    billed_service_tier,
    delivered_before_failure,
    estimate_missing_usage,
    estimate_unanswered_call,
    price_call,
    redacted_messages,
    request_system,
    request_tools,
)
from turnledger.records import (
    CallKind,
    CallStatus,
    CostSource,
    RecordFlag,
    TokenCallRecord,
    _RecordDraft,
)
from turnledger.request_ids import exception_request_id, headers_request_id, response_request_id
from turnledger.subscribers import Subscriber, dispatch, global_subscribers
from turnledger.usage import (
    MODEL_CLASSES,
    TokenCounts,
    UsualCounts,
    is_model,
    token_counts,
    usage_counts,
    usual_counts_of,
)

_CALL_KINDS: dict[str, CallKind] = {}
for _kind, _names in {
    # LiteLLM's Anthropic /v1/messages passthrough (``litellm.anthropic_messages``) is a chat call: billed
    # by tokens, its input estimated as any chat call's when it never reports usage (a read timeout).
    CallKind.CHAT: ("completion", "acompletion", "anthropic_messages", "aanthropic_messages"),
    CallKind.TEXT_COMPLETION: ("text_completion", "atext_completion"),
    CallKind.EMBEDDING: ("embedding", "aembedding"),
    CallKind.IMAGE_GENERATION: ("image_generation", "aimage_generation", "image_edit", "aimage_edit"),
    CallKind.TRANSCRIPTION: ("transcription", "atranscription"),
    CallKind.SPEECH: ("speech", "aspeech"),
    CallKind.RERANK: ("rerank", "arerank"),
    CallKind.MODERATION: ("moderation", "amoderation"),
    CallKind.RESPONSES: ("responses", "aresponses"),
    CallKind.OCR: ("ocr", "aocr"),
}.items():
    for _name in _names:
        _CALL_KINDS[_name] = _kind

# The enum members the hooks test on every event, as module globals: reading a member off its enum
# class goes through the enum metaclass, ~70 ns more than a global (measured on 3.11), several
# times per event.
_SUCCESS = CallStatus.SUCCESS
_FAILURE = CallStatus.FAILURE
_USAGE_ESTIMATED = RecordFlag.USAGE_ESTIMATED
_OTHER_KIND = CallKind.OTHER
_RESPONSE_COST = CostSource.RESPONSE_COST
_INF = math.inf
_SHORT_FLOAT_REPR = FLOAT_SIGNIFICANT_DIGITS + 1
"""A float's repr this short has at most 15 digits: its Decimal needs no rounding (see money._from_float)."""

# Every list LiteLLM may copy a registered logger into (``function_setup`` promotes entries of
# ``litellm.callbacks`` into the others); uninstall must clear all of them.
_LITELLM_CALLBACK_LISTS = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "_async_input_callback",
    "service_callback",
)


def call_kind_of(call_type: object) -> CallKind:
    if isinstance(call_type, str):
        return _CALL_KINDS.get(call_type, _OTHER_KIND)
    value = getattr(call_type, "value", None)
    return _CALL_KINDS.get(value, _OTHER_KIND) if isinstance(value, str) else _OTHER_KIND


_from_timestamp = datetime.fromtimestamp
_monotonic = time.monotonic
_turn_in_context = _current_turn.get
"""``_current_turn.get``, bound once: Python 3.11 compiles a method call on an imported name as an
attribute read and a call, which makes and frees a bound method on every pre-call hook (~350
instructions, callgrind)."""
_combine = datetime.combine
_UTC_AS_IS_FROM = datetime(1901, 1, 1)
_UTC_AS_IS_UNTIL = datetime(2200, 1, 1)
"""Naive times in this range, in a local zone that is UTC, are UTC as they are: there the timestamp
round trip gives back every microsecond (a timestamp below 2**33 s has a float step under 1 us).
Outside it (``datetime.min``, ``datetime.max``) the round trip may round, or fail, and still does."""


_zone_checked: object = None
"""The ``time.tzname`` :data:`_zone_is_utc` was worked out for: ``time.tzset()`` makes a new tuple."""
_zone_is_utc = False


def _local_zone_is_utc() -> bool:
    """Whether the local zone is UTC as the time module sees it now (after the last ``time.tzset()``).
    Its answer is read inline while ``time.tzname`` is unchanged: the call costs 400 instructions."""
    global _zone_checked, _zone_is_utc
    names = time.tzname
    if names is not _zone_checked:
        _zone_is_utc = time.timezone == 0 and time.daylight == 0 and names[0] == "UTC"
        _zone_checked = names
    return _zone_is_utc


def _utc(value: object) -> datetime | None:
    """A LiteLLM timestamp in UTC; ``None`` for anything that is not a representable time (NaN, 1e20,
    ``datetime.min`` in a zone east of UTC): the record loses its timing, never its tokens."""
    try:
        if type(value) is datetime or isinstance(value, datetime):
            tzinfo = value.tzinfo
            if tzinfo is None:
                # A local zone that is UTC (a server's usual one: TZ unset, Etc/UTC), as the time module
                # sees it now (time.tzset() changes it): the naive time is UTC already, and a datetime
                # built from its fields is what the timestamp round trip below gives (2,100 fewer
                # instructions a timestamp, two or three an event; callgrind). Only a zone named
                # UTC: a GMT one (Africa/Abidjan) had other offsets once. Not for a subclass, which may
                # read its own timestamp(), nor a second fold, which the round trip drops.
                if (
                    type(value) is datetime
                    and (_zone_is_utc if time.tzname is _zone_checked else _local_zone_is_utc())
                    and not value.fold
                    and _UTC_AS_IS_FROM <= value < _UTC_AS_IS_UNTIL
                ):
                    return _combine(value, value.time(), UTC)
                # LiteLLM stamps naive local times (datetime.now()). timestamp() reads one as local time, as
                # astimezone does, at a third of its cost: astimezone builds a named local zone each time.
                return _from_timestamp(value.timestamp(), UTC)
            return value if tzinfo is UTC else value.astimezone(UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return None


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    ms = (end - start).total_seconds() * 1000.0
    return ms if ms >= 0 else None


def _stand_in_call_id(kwargs: object) -> str:
    """An id for an event that came without ``litellm_call_id``, the same for every callback instance
    that sees that event (they all get the same kwargs object), so de-duplication still works."""
    return f"unknown-{id(kwargs):x}"


class _SeenKeys:
    """A bounded, thread-safe memory of keys (the oldest forgotten first)."""

    def __init__(self, max_entries: int) -> None:
        self._lock = threading.Lock()
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self.max_entries = max_entries

    def first_sighting(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            self._keys[key] = None
            if len(self._keys) > self.max_entries:
                self._keys.popitem(last=False)
            return True

    def __contains__(self, key: object) -> bool:
        # No lock: a dict lookup is atomic in CPython, and a key being added meanwhile is not yet seen either way.
        return key in self._keys


class _CallsStartedOutsideTurns:
    """Ids of calls that started with no turn open, kept while they are in flight and a grace period after.

    Their end event may come in a turn's context (a stream opened outside any turn and read inside
    one): it still belongs to no turn. Every installed instance gets that same end event, one after
    another, so the first to see it cannot forget the id: the id is forgotten ``grace_s`` after the
    first end event. LiteLLM's own retries (``num_retries``) reuse the call id and run the pre-call
    hook again, on the async path after the failed attempt's end event, on the sync path sometimes
    before it (measured on 1.106): a new start puts an ended id back in flight. (A sync call's end
    event comes in a copy of its caller's context, or a sync stream's in none: never in a turn that
    was not open when it started, however long after that failure it comes.) A call that never
    ends (a stream broken off, a task cancelled) fires no end event: it is forgotten ``max_age_s``
    after it started. ``max_entries`` is the last resort, the oldest ended ids forgotten first.

    Each map is kept in time order, so pruning pops from its front: O(1) amortised. Readers take no
    lock; writers add an id to its new map before removing it from its old one, and readers look in
    the maps in an order that sees it in at least one of them.
    """

    def __init__(
        self,
        *,
        grace_s: float = 60.0,
        max_age_s: float = 3600.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._in_flight: OrderedDict[str, float] = OrderedDict()  # id -> when it (last) started
        self._ended: OrderedDict[str, float] = OrderedDict()  # id -> when its first end event came
        self.grace_s = grace_s
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self.clock = clock

    def started(self, call_id: str) -> None:
        """The pre-call hook saw ``call_id`` with no turn open (once per installed instance)."""
        if call_id in self._in_flight:
            return
        with self._lock:
            now = self.clock()
            if call_id not in self._in_flight:
                self._in_flight[call_id] = now
                self._ended.pop(call_id, None)  # a retry: in flight again
            self._prune(now)

    def ended(self, call_id: str | None) -> bool:
        """Whether ``call_id`` started outside any turn; the first end event of an id in flight starts
        its grace period."""
        if call_id is None:
            return False
        if call_id in self._ended:  # the instances after the first, or a retry's repeated end
            return True
        if call_id not in self._in_flight:
            # It may have moved between the two lookups, either way.
            return call_id in self._ended or call_id in self._in_flight
        with self._lock:
            if call_id in self._in_flight:
                now = self.clock()
                self._ended[call_id] = now
                del self._in_flight[call_id]
                self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        # Called with the lock held.
        ended, in_flight = self._ended, self._in_flight
        forget_ended_before = now - self.grace_s
        while ended and next(iter(ended.values())) <= forget_ended_before:
            ended.popitem(last=False)
        forget_started_before = now - self.max_age_s
        while in_flight and next(iter(in_flight.values())) <= forget_started_before:
            in_flight.popitem(last=False)
        while len(ended) + len(in_flight) > self.max_entries:
            (ended or in_flight).popitem(last=False)

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._ended)


_TURN_OF_CALL = "turnledger_turn"
"""The key under which the pre-call hook leaves, in LiteLLM's ``model_call_details`` of the call, a weak
reference to the turn the call started in (a :class:`~turnledger.accumulator.TurnMark`; ``None``: it
started outside any turn).

That dict is the ``kwargs`` LiteLLM hands every hook of the call (measured on 1.106.12: chat, sync
and async streams, embeddings, image generation, each Router attempt and fallback); a hook that
redacts the payload first gets a shallow copy of it, which still holds the key. So the end event
finds its turn whatever ran meanwhile: no process-wide map, nothing evicted. Weak: a turn is not
kept alive by a call it made (a stream never read to its end), and no cycle runs through the turn's
own pending calls, which hold those details."""

_CALL_BINDER = "turnledger_binder"
"""Next to :data:`_TURN_OF_CALL`: the ``tracker_name`` of the instance whose pre-call hook marked the
call (a string: LiteLLM's details may be pickled or copied). Its hook running again for the call is
a further attempt of a call LiteLLM retries itself (``num_retries``); another instance's is the same
start seen again."""

_MISSING: Any = object()


_RETRIED_UNLOGGED = frozenset({"acompletion", "aresponses"})
"""Call types whose further attempts LiteLLM (1.106.12) runs outside its logging wrapper: its own
retries (``acompletion_with_retries``, ``aresponses_with_retries``) and an ``acompletion``'s
``context_window_fallback_dict`` call the unwrapped function."""


def _attempt_never_logged(kwargs: Mapping[str, Any]) -> bool:
    """Whether LiteLLM logs no end of this further attempt of a call, even once it is answered, so its
    answer is no sign of an event to wait for. A stream logs itself as it is read.

    A sync ``completion`` retried by ``num_retries`` runs each attempt through the logging wrapper
    (``completion_with_retries``), which sets ``max_retries`` to 0 for it; one that falls back by
    ``context_window_fallback_dict`` calls the unwrapped function with the caller's ``max_retries``
    (LiteLLM's default is None). A fallback with ``max_retries=0`` passed is taken as logged: its scope
    waits ``logging_timeout`` for it, then prices it from its answer all the same.
    """
    if kwargs.get("stream"):
        return False
    call_type = kwargs.get("call_type")
    if call_type in _RETRIED_UNLOGGED:
        return True
    return call_type == "completion" and kwargs.get("max_retries") != 0


def _turn_of_call(kwargs: Mapping[str, Any], call_id: str | None) -> tuple[TurnTokenAccumulator | None, bool]:
    """The turn an end event belongs to, and whether it belonged to one that no longer exists.

    A call whose pre-call hook ran says so itself (:data:`_TURN_OF_CALL`). Its turn may have been
    garbage collected (closed, stored and dropped, the call's stream read later): then it belongs to
    no turn, never to the one current where its event fires. Only an event the pre-call hook did not
    mark looks further: a LiteLLM cache hit (LiteLLM fires no pre-call hook for one, so it had no
    binding to lose either), or details that are not a mutable mapping (never seen from LiteLLM).
    """
    mark = kwargs.get(_TURN_OF_CALL, _MISSING)
    if type(mark) is TurnMark:
        turn: TurnTokenAccumulator | None = mark()
        return turn, turn is None
    if mark is None:
        # Its bookkeeping only: a call started outside any turn is forgotten a grace period after it ends.
        _started_outside_turns.ended(call_id)
        return None, False
    turn = call_bindings.lookup(call_id) if call_id is not None else None
    if turn is None and not _started_outside_turns.ended(call_id):
        # No pre-call hook saw it (LiteLLM fires none for a cache hit): the context's turn.
        turn = get_current_accumulator()
    return turn, False


_unscoped_events = _SeenKeys(10_000)
"""Event keys of events that belong to no turn: global subscribers hear of each once."""
_started_outside_turns = _CallsStartedOutsideTurns()


class _Stats(Counter[str]):
    """A :class:`~collections.Counter` whose items are stored as a dict's.

    ``Counter`` defines ``__delitem__`` in Python, so CPython stores every item of it through a
    Python-level ``__setitem__`` lookup (``slot_mp_ass_subscript``): the hooks count on every event,
    and ``stats[key] += 1`` costs 750 instructions less here (callgrind). The differences from a
    Counter: ``del stats[key]`` of a key it lacks raises ``KeyError``, as a dict's does, and its repr
    names this class.
    """

    __slots__ = ()
    __delitem__ = dict.__delitem__  # type: ignore[assignment]


class TokenTrackingCallback(CustomLogger):
    """The LiteLLM logger that feeds turns. Register it with :func:`install`.

    ``name`` tells instances apart: LiteLLM drops a second logger of the same class whose public
    scalar attributes are equal, so every instance carries a distinct ``tracker_name``. Several
    instances never double-count: a turn keeps one record per LiteLLM event.

    ``price_table`` prices the calls LiteLLM cannot (the last stage of the cost chain, see
    :mod:`turnledger.pricing`). It is an immutable value held by this instance, never written into
    ``litellm.model_cost``: ``install(TokenTrackingCallback(price_table=PriceTable.from_file(...)))``.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        on_record: Subscriber | None = None,
        price_table: PriceTable | None = None,
    ) -> None:
        super().__init__()
        self.tracker_name: str = name or f"turnledger-{uuid.uuid4().hex[:12]}"
        # Private: LiteLLM compares loggers' public attributes to de-duplicate them.
        self._price_table = price_table
        self._on_record: tuple[Subscriber, ...] = (on_record,) if on_record is not None else ()
        self._stats_lock = threading.Lock()
        self.stats: Counter[str] = _Stats()
        """What this instance saw, by outcome. Events: ``captured``, ``unscoped``, ``late``, ``duplicate``,
        ``errors``. Calls: ``abandoned``, a call whose turn closed before LiteLLM reported its end (it
        was recorded ``abandoned``), counted when its turn closes by the instance whose pre-call hook
        bound it to the turn (the first to see it start): with several instances installed, each such
        call is counted once, so their sum is the process's total. An end event that still comes
        afterwards is counted as an event as well: ``late``, or ``unscoped`` (flagged late) when its
        turn no longer exists."""

    def _count(self, key: str) -> None:
        # acquire/release rather than ``with``: 1,100 fewer instructions on every event (callgrind).
        lock = self._stats_lock
        lock.acquire()
        try:
            self.stats[key] += 1
        finally:
            lock.release()

    # -- LiteLLM hooks ---------------------------------------------------------------------------
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        try:
            # The ContextVar itself, the turn's own fields, the started call made in one step: the hook
            # runs on every call, where each Python-level call it makes costs some 400 instructions.
            # ``kwargs.get(...)`` each time rather than ``get = kwargs.get``: a method call on the
            # details makes no bound method, which costs more than the five reads (~400, callgrind).
            turn = _turn_in_context()
            marked = type(kwargs) is dict or isinstance(kwargs, MutableMapping)
            retry = first_start = False
            if marked:
                # The call carries its turn itself (see _TURN_OF_CALL). Its first start binds it:
                # LiteLLM's own retries run this hook again, with the same details, in the turn it
                # started in. Every installed instance sees each start; the one that bound the call
                # (_CALL_BINDER) tells the turn that a further attempt began.
                mark = kwargs.get(_TURN_OF_CALL, _MISSING)
                if mark is _MISSING:
                    kwargs[_TURN_OF_CALL] = turn._weak_self if turn is not None else None
                    kwargs[_CALL_BINDER] = self.tracker_name
                    first_start = True
                else:
                    turn = mark() if type(mark) is TurnMark else None
                    retry = kwargs.get(_CALL_BINDER) == self.tracker_name
            elif not isinstance(kwargs, Mapping):
                return
            if turn is not None and turn._closed:
                return
            call_id = kwargs.get("litellm_call_id")
            if not isinstance(call_id, str) or not call_id:
                warn_once("pre_call:no_call_id", "LiteLLM pre-call event without litellm_call_id")
                return
            if turn is None:
                _started_outside_turns.started(call_id)
                return
            started = _StartedCall(
                (
                    self,
                    call_id,
                    kwargs.get("model") or model,
                    messages,
                    kwargs.get("input"),
                    kwargs.get("original_response"),
                    kwargs.get("llm_api_duration_ms"),
                    kwargs,
                    _monotonic(),
                    # Read for a further attempt only: a first one starts with no headers in the details.
                    kwargs.get("response_headers") if retry else None,
                    retry and _attempt_never_logged(kwargs),
                )
            )
            if marked and not retry:
                # begin_call's usual case in place, its lock, closed test and insert as it makes them: a
                # start whose id is not pending yet in the open turn, which needs no binding (~1,000
                # instructions on every call, callgrind). Any other, this pass has changed nothing, and
                # begin_call finds the turn as it would have.
                lock = turn._lock
                lock.acquire()
                try:
                    inserted = not turn._closed and turn._pending.setdefault(call_id, started) is started
                finally:
                    lock.release()
                if inserted:
                    return
            turn.begin_call(started, bind=not marked, retry=retry, new_call=first_start, call_id=call_id)
        except Exception:
            self._count("errors")
            warn_once("pre_call:error", "turnledger could not bind a call to its turn", exc_info=True)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_end(kwargs, response_obj, start_time, end_time, _SUCCESS)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_end(kwargs, response_obj, start_time, end_time, CallStatus.FAILURE)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_end(kwargs, response_obj, start_time, end_time, _SUCCESS)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._on_end(kwargs, response_obj, start_time, end_time, CallStatus.FAILURE)

    def redact_standard_logging_payload_from_model_call_details(self, model_call_details: dict[str, Any]) -> Any:
        """LiteLLM's own, short-cut where it has nothing to do.

        LiteLLM calls this on every async success event before the hook. Its version imports three
        names on each call before it finds it has nothing to do (message logging on and no excluded
        payload fields): 3.5 us an event, measured on 1.106; this test is 0.2 us. When there is
        something to do, LiteLLM's version does it.
        """
        # getattr(obj, name, default) as attribute reads whose AttributeError gives the default: two
        # builtin calls less on every event (the try costs nothing when nothing is raised).
        try:
            logging_off = self.turn_off_message_logging
        except AttributeError:
            logging_off = False
        if logging_off is False:
            try:
                excluded = litellm.standard_logging_payload_excluded_fields
            except AttributeError:
                excluded = None
            if not excluded:
                return model_call_details
        return super().redact_standard_logging_payload_from_model_call_details(model_call_details)

    # -- events -> records -----------------------------------------------------------------------
    def _on_end(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any, status: CallStatus) -> None:
        try:
            # An exact type test first: isinstance against an ABC is a Python-level call (~0.2 us).
            kw: Mapping[str, Any] = kwargs if type(kwargs) is dict or isinstance(kwargs, Mapping) else {}
            call_id = kw.get("litellm_call_id")
            if not isinstance(call_id, str) or not call_id:
                call_id = None
            # The usual end, a call its pre-call hook marked, read here: _turn_of_call as a call of its
            # own, and the tuple it answers with, cost 600 instructions an event (callgrind).
            mark = kw.get(_TURN_OF_CALL)
            if type(mark) is TurnMark:
                turn: TurnTokenAccumulator | None = mark()
                orphaned = turn is None
            else:
                turn, orphaned = _turn_of_call(kw, call_id)
            # The end time itself, not its text: every instance reads the same LiteLLM value alike.
            # (A tuple, not a union: the union is built anew on every call, twice as slow.)
            # LiteLLM's datetime tested first by its exact type: isinstance against a tuple of types
            # costs 400 instructions more (callgrind).
            end_key = end_time if type(end_time) is datetime or isinstance(end_time, (datetime, int, float)) else None
            if turn is not None and call_id is not None and not self._on_record:
                # _deferrable's answer for a success with a LiteLLM response read in place, in the order
                # it reads them: the call cost 600 instructions an event (callgrind). Any other event
                # goes to it.
                if status is _SUCCESS and type(response_obj) in MODEL_CLASSES:
                    cost = kw.get("response_cost")
                    if type(cost) is float and 0.0 < cost < _INF:
                        try:
                            usage = response_obj.__dict__.get("usage")
                            if usage is None:
                                extra = response_obj.__pydantic_extra__
                                usage = extra.get("usage") if extra else None
                            # getattr(usage, "total_tokens", None) without the call: its AttributeError
                            # is caught here, where any exception means "read at once" (no tokens).
                            tokens = usage.total_tokens
                        except Exception:
                            tokens = None
                        deferrable = type(tokens) is int and tokens > 0
                    else:
                        deferrable = False
                else:
                    deferrable = _deferrable(kw, response_obj, status)
                if deferrable:
                    event = (_EndEvent, self, kw, response_obj, start_time, end_time, status)
                    kept = turn.add_deferred(event, call_id, (call_id, status, end_key), kw)
                    if kept is not None:
                        # Counted here, not through _count: a Python-level call less on every event, 400
                        # instructions (callgrind).
                        lock = self._stats_lock
                        lock.acquire()
                        try:
                            self.stats["captured" if kept else "duplicate"] += 1
                        finally:
                            lock.release()
                        return
            record = self._record_or_flagged(kw, response_obj, start_time, end_time, status, turn)
            event_key: EventKey = (record.call_id, status, end_key)
            if turn is None:
                if orphaned:
                    record = record.with_flags(RecordFlag.LATE)
                self._count("unscoped")
                # Every installed instance sees the event: global subscribers must hear of it once.
                first = _unscoped_events.first_sighting(event_key)
                dispatch(record, None, self._on_record + (global_subscribers() if first else ()))
                return
            was_closed = turn.closed
            if turn.add(record, event_key=event_key, call_details=kw):
                self._count("late" if was_closed else "captured")
            else:
                self._count("duplicate")
            # This instance's own subscribers hear of every event it saw, whichever instance's copy
            # the turn kept.
            if self._on_record:
                dispatch(record.with_flags(RecordFlag.LATE) if was_closed else record, turn, self._on_record)
        except Exception:
            self._count("errors")
            warn_once("event:dispatch", "turnledger failed to deliver a call record", exc_info=True)

    def _record_or_flagged(
        self,
        kwargs: Mapping[str, Any],
        response_obj: Any,
        start_time: Any,
        end_time: Any,
        status: CallStatus,
        turn: TurnTokenAccumulator | None,
    ) -> TokenCallRecord:
        """The event's record, or, when it cannot be read, a record of what could be, flagged."""
        try:
            return self.build_record(kwargs, response_obj, start_time, end_time, status, turn)
        except Exception:
            return self._flagged_record(kwargs, status)

    def _flagged_record(self, kwargs: Mapping[str, Any], status: CallStatus) -> TokenCallRecord:
        """What could be read of an event :meth:`build_record` raised on, flagged; called from the except
        clause, whose exception it logs."""
        self._count("errors")
        warn_once(f"event:{status}", "turnledger could not read a LiteLLM %s event", status, exc_info=True)
        call_id = kwargs.get("litellm_call_id")
        # Only a name as given: str() of whatever else came may raise too, and the record would be lost.
        model = kwargs.get("model")
        return TokenCallRecord(
            call_id=call_id if isinstance(call_id, str) and call_id else _stand_in_call_id(kwargs),
            model=model if isinstance(model, str) and model else "unknown",
            status=status,
            flags=(RecordFlag.MALFORMED_EVENT,),
        )

    def build_record(
        self,
        kwargs: Mapping[str, Any],
        response_obj: Any,
        start_time: Any,
        end_time: Any,
        status: CallStatus,
        turn: TurnTokenAccumulator | None,
    ) -> TokenCallRecord:
        """Read one LiteLLM end event into a record; missing pieces are flagged, not fatal."""
        get = kwargs.get
        # A tuple, added to on the rare event that has a flag: the usual one has none, and a list made
        # for it on every event cost 130 instructions (callgrind).
        flags: tuple[RecordFlag, ...] = ()
        call_id = get("litellm_call_id")
        if not isinstance(call_id, str) or not call_id:
            flags += (RecordFlag.MALFORMED_EVENT,)
            call_id = _stand_in_call_id(kwargs)
        model = get("model")
        if not isinstance(model, str) or not model:
            model = getattr(response_obj, "model", None)
            if not isinstance(model, str) or not model:
                flags += (RecordFlag.MALFORMED_EVENT,)
                model = "unknown"
        provider = get("custom_llm_provider")
        if not isinstance(provider, str):
            provider = None
        # _utc's usual case (LiteLLM's naive local times, the local zone UTC) read here, for both times:
        # two Python-level calls less an event.
        utc_zone = _zone_is_utc if time.tzname is _zone_checked else _local_zone_is_utc()
        end_as_is = (
            utc_zone
            and type(end_time) is datetime
            and end_time.tzinfo is None
            and not end_time.fold
            and _UTC_AS_IS_FROM <= end_time < _UTC_AS_IS_UNTIL
        )
        if (
            utc_zone
            and type(start_time) is datetime
            and start_time.tzinfo is None
            and not start_time.fold
            and _UTC_AS_IS_FROM <= start_time < _UTC_AS_IS_UNTIL
        ):
            started: datetime | None = _combine(start_time, start_time.time(), UTC)
            if end_as_is:
                # Both naive times are UTC as they are: the difference of the two UTC times is theirs
                # (aware times with the same tzinfo subtract as naive ones), and the end one, read for
                # nothing else, is never made: 850 fewer instructions an event (callgrind).
                ms = (end_time - start_time).total_seconds() * 1000.0
                latency: float | None = ms if ms >= 0 else None
            else:
                latency = _ms_between(started, _utc(end_time))
        else:
            started = _utc(start_time)
            latency = _ms_between(started, _combine(end_time, end_time.time(), UTC) if end_as_is else _utc(end_time))
        stream = bool(get("stream"))
        ttft = _ms_between(started, _utc(get("completion_start_time"))) if stream else None
        success = status is _SUCCESS

        # A failure usually carries no response; one that does (billed, then refused) is priced by its usage,
        # one broken off after part of its answer by what was delivered, one that timed out waiting for its
        # answer by its estimated input.
        # normalize_usage's counts; a usual chat usage block's as a tuple, stored in the record from it
        # (see usage_counts), its TokenCounts made only for an estimate or price_call, which read one.
        counts: UsualCounts | TokenCounts = usage_counts(response_obj)
        # isinstance: mypy narrows both branches by it, and not the second by ``type() is`` (same cost).
        if not isinstance(counts, tuple):
            if counts.flags:
                flags += tuple(counts.flags)
            if success and not counts.present:
                flags += (RecordFlag.USAGE_MISSING,)
            inline_cost = counts.inline_cost
            count_discarded = counts.count_discarded
            # counts.used_tokens read in place: a property is a Python-level call.
            used_tokens = counts.prompt_tokens > 0 or counts.completion_tokens > 0
        else:
            # What _usual_counts would set: present, no flags, no inline cost, every count believed.
            inline_cost = None
            count_discarded = False
            used_tokens = counts[0] > 0 or counts[1] > 0
        call_type = get("call_type")
        call_kind = _CALL_KINDS.get(call_type, _OTHER_KIND) if type(call_type) is str else call_kind_of(call_type)
        price_table = self._price_table
        # Only a call that used no tokens can have its usage missing: skip the call otherwise.
        estimated = (
            estimate_missing_usage(
                _as_sent(kwargs, call_id, turn),
                response_obj,
                token_counts(counts),
                model=model,
                provider=provider,
                call_kind=call_kind,
                price_table=price_table,
            )
            if success and not used_tokens
            else None
        )

        error_type: str | None = None
        error_request_id: str | None = None
        cost: Decimal | None
        cost_flags: Sequence[RecordFlag] = ()
        unanswered = False
        if status is _FAILURE:
            exc = get("exception")
            error_type = type(exc).__name__ if isinstance(exc, BaseException) else None
            # The id of the error answer (what the provider's support knows a refused call by), from
            # this attempt's own exception: never an earlier attempt's headers left in shared details.
            error_request_id = exception_request_id(exc)
            # A stream broken off after its answer began: the lost connection's exception has no
            # headers, the success status had them.
            answer_headers = _attempt_answer_headers(kwargs, call_id, turn)
            if error_request_id is None:
                error_request_id = headers_request_id(answer_headers)
            # A usage block whose every count was discarded tells of tokens it could not say: answered.
            unanswered = not used_tokens and not count_discarded
            if unanswered:
                sent = _as_sent(kwargs, call_id, turn)
                # Part of the answer was delivered before the failure (a stream broken off, sync or
                # async): billed.
                estimated = delivered_before_failure(
                    sent, model=model, provider=provider, call_kind=call_kind, price_table=price_table
                )
                if estimated is None and (
                    answer_timed_out(exc) or provider_answered(kwargs) or answer_headers is not None
                ):
                    # The provider had the request and went on with it (or answered it, and LiteLLM
                    # failed after that, or broke off before the first chunk): billed as an abandoned
                    # call is.
                    estimated = estimate_unanswered_call(
                        sent, model=model, provider=provider, call_kind=call_kind, price_table=price_table
                    )
        response_cost = get("response_cost")
        if estimated is not None:
            counts, cost, source, cost_flags = estimated
        elif unanswered:
            cost, source = Decimal(0), CostSource.NOT_BILLED
        elif (
            type(response_cost) is float
            and _FLOAT_SURELY_BELIEVABLE_FROM <= response_cost <= _FLOAT_SURELY_BELIEVABLE_UNTIL
            and inline_cost is None
            and not count_discarded
            and get("cache_hit") is not True
        ):
            # price_call's usual answer, without its two Python-level calls: LiteLLM's float
            # response_cost, believable whatever its rounding (see pricing._accept), no inline cost
            # before it in the chain, not a cache hit, every count believed. And money._from_float's
            # usual case, a short repr that is not integral, read here too.
            text = repr(response_cost)
            # A believable cost is positive: one under 1 USD (every call's, about) is not integral,
            # and is_integer(), a method call, is asked only of the others.
            if len(text) <= _SHORT_FLOAT_REPR and (response_cost < 1.0 or not response_cost.is_integer()):
                cost = Decimal(text)
            else:
                cost = _from_float(response_cost)
            source = _RESPONSE_COST
        else:
            cost, source, cost_flags = price_call(
                kwargs,
                response_obj,
                token_counts(counts),
                model=model,
                provider=provider,
                call_kind=call_kind,
                price_table=price_table,
            )
        if cost_flags:
            flags += tuple(cost_flags)

        # Most turns register no metadata: asked first, that saves two lookups that find none (3,000
        # instructions an event, callgrind).
        # turn.has_model_metadata read in place: a property is a Python-level call.
        meta = _metadata(turn, model, get("litellm_params")) if turn is not None and turn._metadata else None
        # record_draft() and sealed_record() done in place: two Python-level calls less an event. The
        # draft class called rather than object.__new__(draft class): 300 fewer instructions (callgrind).
        record: Any = _RecordDraft()
        record.call_id = call_id
        record.model = model
        record.provider = provider
        record.call_kind = call_kind
        record.status = status
        usual: UsualCounts = counts if isinstance(counts, tuple) else usual_counts_of(counts)
        (
            record.prompt_tokens,
            record.completion_tokens,
            record.total_tokens,
            record.cached_tokens,
            record.cache_creation_tokens,
            record.cache_creation_1h_tokens,
            record.reasoning_tokens,
            record.image_input_tokens,
            record.image_output_tokens,
            record.audio_input_tokens,
            record.audio_output_tokens,
        ) = usual
        record.cost_usd = cost
        record.cost_source = source
        record.started_at = started
        record.latency_ms = latency
        record.ttft_ms = ttft
        if error_request_id is None:
            # response_request_id's answer for a LiteLLM response without headers in its hidden params
            # (a mocked answer, a provider that sends none) read here: a Python-level call less.
            private = response_obj.__pydantic_private__ if type(response_obj) in MODEL_CLASSES else None
            hidden = private.get("_hidden_params") if type(private) is dict else None
            headers = hidden.get("additional_headers", _MISSING) if type(hidden) is dict else _MISSING
            if headers is None or (type(headers) is dict and not headers):
                record.provider_request_id = None
            else:
                record.provider_request_id = response_request_id(response_obj)
        else:
            record.provider_request_id = error_request_id
        record.model_ref = meta.model_ref if meta else None
        record.model_id = meta.model_id if meta else None
        record.display_name = meta.display_name if meta else None
        record.stream = stream
        record.usage_estimated = _USAGE_ESTIMATED in flags
        record.error_type = error_type
        record.flags = tuple(dict.fromkeys(flags)) if flags else ()
        record.__class__ = TokenCallRecord
        return record  # type: ignore[no-any-return]


def _as_sent(kwargs: Mapping[str, Any], call_id: str, turn: TurnTokenAccumulator | None) -> Mapping[str, Any]:
    """``kwargs`` for an estimate of what the call was sent: with message logging off, LiteLLM replaces
    the event's messages with a placeholder before the callbacks run (``redact_messages.py``, 1.106),
    and the messages its pre-call hook saw are the ones sent. Only an event read at once can have
    them (its call is still pending in its turn): a late or deferred one is estimated from the event,
    where the placeholder leaves its input unknown (see ``pricing._estimate_and_price``)."""
    if turn is None or not redacted_messages(kwargs.get("messages")):
        return kwargs
    started = turn.started_call(call_id, kwargs)
    if started is None:
        return kwargs
    request = started.pending_call().request
    sent = request.get("messages")
    if not isinstance(sent, list) or not sent or redacted_messages(sent):
        return kwargs
    # LiteLLM blanks the input too (an embedding's texts).
    return {**kwargs, "messages": sent, "input": request.get("input")}


def _attempt_answer_headers(kwargs: Mapping[str, Any], call_id: str, turn: TurnTokenAccumulator | None) -> object:
    """The headers of the success answer this attempt of the call got before it failed, or ``None``.

    LiteLLM writes an answer's headers into the call details (``response_headers``) when its success
    status arrives, on the openai SDK path only, and never an error answer's (1.106.12): a stream
    broken off after that keeps them there. The details are shared by the attempts of a call LiteLLM
    retries itself, so they are this attempt's only when this very call (its details) is pending in
    the turn and they are not the object that was there when the attempt started (``headers_at_start``).
    A failure read without its started call (no turn, a late event) cannot tell: ``None``."""
    headers = kwargs.get("response_headers")
    if headers is None or turn is None:
        return None
    started = turn.started_call(call_id, kwargs)
    if type(started) is not _StartedCall or started._kwargs is not kwargs or headers is started.headers_at_start:
        return None
    return headers


def _deferrable(kwargs: Mapping[str, Any], response_obj: Any, status: CallStatus) -> bool:
    """Whether reading the event later reads what it says now.

    Only a success that used tokens and that LiteLLM has priced: its price is in the event. Any other
    is priced from the global price map (``litellm.model_cost``), which ``register_model`` or a call
    passing its own prices can change before a batch is read; and LiteLLM may retry a failed call
    with the same call details.
    """
    if status is not _SUCCESS:
        return False
    cost = kwargs.get("response_cost")
    if type(cost) is not float or not 0.0 < cost < math.inf:
        return False
    # Tokens used: a success without them has its usage estimated, from the caller's live messages
    # and the price map. A usage block that is not an object (a dict) is simply read at once.
    try:
        # ``response_obj.usage``: on a LiteLLM response (a pydantic model keeping ``usage`` among its
        # extras) read from its fields and extras, as :func:`~turnledger.usage.usage_block` reads it,
        # not through pydantic's ``__getattr__`` (1.8 us, measured; 0.1 us this way). Read here, not
        # in a function of its own: 400 instructions an event (callgrind).
        if type(response_obj) in MODEL_CLASSES or is_model(response_obj):
            usage = response_obj.__dict__.get("usage")
            if usage is None:
                extra = response_obj.__pydantic_extra__
                usage = extra.get("usage") if extra else None
        else:
            usage = getattr(response_obj, "usage", None)
        tokens = getattr(usage, "total_tokens", None)
    except Exception:
        return False  # read at once, where what cannot be read is flagged
    return type(tokens) is int and tokens > 0


class _StartedCall(tuple[Any, ...]):
    """What the pre-call hook keeps of a call (see :class:`~turnledger.accumulator.StartedCall`).

    A tuple, built in one step by the pre-call hook, which makes one for every call, and a
    tuple subclass costs 1,100 instructions to make where a slotted class with an ``__init__`` costs
    2,500 (callgrind). Its fields are read back only for a call that is retried, fails or never
    reports.

    The fields: the callback instance, the call id; read at the start, because a further attempt (a
    context-window fallback) changes them in the live details: the model, the messages and the
    ``input`` (LiteLLM blanks the live input once the response arrives with message logging off);
    ``original_response`` (a retry's details still hold the attempt before it's answer, if any: not
    this attempt's) and ``llm_api_duration_ms`` (the attempt before it's, until this one's request
    ends); LiteLLM's live ``model_call_details`` (it marks there when the response arrived); the
    monotonic start; ``response_headers`` when a further attempt started (see PendingCall), and
    whether LiteLLM logs no end of this call even once it is answered (see log_pre_api_call).
    """

    __slots__ = ()

    @property
    def _callback(self) -> TokenTrackingCallback:
        return self[0]  # type: ignore[no-any-return]

    @property
    def call_id(self) -> str:
        return self[1]  # type: ignore[no-any-return]

    @property
    def _model(self) -> Any:
        return self[2]

    @property
    def _messages(self) -> Any:
        return self[3]

    @property
    def _input(self) -> Any:
        return self[4]

    @property
    def _answer_at_start(self) -> object:
        return self[5]

    @property
    def _duration_at_start(self) -> object:
        return self[6]

    @property
    def _kwargs(self) -> Mapping[str, Any]:
        return self[7]  # type: ignore[no-any-return]

    @property
    def _started_monotonic(self) -> float:
        return self[8]  # type: ignore[no-any-return]

    @property
    def headers_at_start(self) -> object:
        return self[9]

    @property
    def never_logged(self) -> bool:
        return self[10]  # type: ignore[no-any-return]

    # responded and finished read their fields by index: a closing scope asks them of every call still
    # pending, in each round of its wait, and every property read is a Python-level call.
    @property
    def responded(self) -> bool:
        kwargs = self[7]
        return not self[10] and response_arrived(kwargs, bool(kwargs.get("stream")))

    @property
    def binder(self) -> object:
        return self._callback

    @property
    def call_details(self) -> Mapping[str, Any]:
        return self._kwargs

    @property
    def finished(self) -> bool:
        # An answer in the details that was there when it started is an earlier attempt's.
        kwargs = self[7]
        return self[10] and kwargs.get("original_response") is not self[5] and response_arrived(kwargs, False)

    def pending_call(self) -> PendingCall:
        kwargs = self._kwargs
        get = kwargs.get
        litellm_params = get("litellm_params")
        duration = get("llm_api_duration_ms")
        provider = get("custom_llm_provider")
        if provider is None and isinstance(litellm_params, Mapping):
            provider = litellm_params.get("custom_llm_provider")
        return PendingCall(
            call_id=self.call_id,
            model=str(self._model or "unknown"),
            provider=provider if isinstance(provider, str) else None,
            call_kind=call_kind_of(get("call_type")),
            stream=bool(get("stream")),
            started_at=_utc(get("start_time")) or datetime.now(UTC),
            started_monotonic=self._started_monotonic,
            request={
                "messages": self._messages,
                "input": self._input,
                "tools": request_tools(kwargs),
                "system": request_system(kwargs),
                "service_tier": billed_service_tier(kwargs, None),
            },
            price_table=self._callback._price_table,
            call_details=kwargs,
            answer_at_start=self._answer_at_start,
            # LiteLLM writes a new float when a request ends: the very object seen at the start is an
            # earlier attempt's (or this attempt's request has not ended).
            request_duration_ms=None if duration is self._duration_at_start else duration,
            headers_at_start=self.headers_at_start,
        )

    def abandoned(self) -> None:
        self._callback._count("abandoned")


class _EndEvent:
    """Reads an end event kept as LiteLLM delivered it (a
    :data:`~turnledger.accumulator.DeferredRecord`): the tuple ``(_EndEvent, callback, kwargs,
    response_obj, start_time, end_time, status)``, with the callback instance and the hook's arguments.

    A plain tuple that names its reader first: the success hook makes one for every event, and a
    tuple subclass instance cost 1,100 instructions more to make (callgrind).
    """

    __slots__ = ()

    # Called off the class with the event tuple as ``self`` (never an instance), as ``event[0].build(event,
    # turn)``: a plain function, so bench/capture_bench.py can wrap it in place.
    def build(self: Any, turn: TurnTokenAccumulator) -> TokenCallRecord:
        _, callback, kwargs, response_obj, start_time, end_time, status = self
        # _record_or_flagged's work in place: a Python-level call less on every event read.
        try:
            record: TokenCallRecord = callback.build_record(kwargs, response_obj, start_time, end_time, status, turn)
        except Exception:
            record = callback._flagged_record(kwargs, status)
        return record


def _metadata(turn: TurnTokenAccumulator, model: str, litellm_params: object) -> ModelMetadata | None:
    """The turn's metadata for the model LiteLLM reports, else for the model the caller asked for."""
    meta = turn.metadata_for(model)
    if meta is None and (type(litellm_params) is dict or isinstance(litellm_params, Mapping)):
        original = litellm_params.get("model")
        meta = turn.metadata_for(original if isinstance(original, str) else None)
    return meta


token_tracker = TokenTrackingCallback(name="turnledger-default")
"""The default instance, registered by :func:`install`."""

_install_lock = threading.Lock()


def install(callback: TokenTrackingCallback | None = None) -> TokenTrackingCallback:
    """Register ``callback`` (default :data:`token_tracker`) on LiteLLM. Idempotent; returns it."""
    cb = callback if callback is not None else token_tracker
    with _install_lock:
        if not any(existing is cb for existing in litellm.callbacks):
            litellm.callbacks.append(cb)
        _warm_tokenizer_once()
    return cb


_tokenizer_warmed = False


def _warm_tokenizer_once() -> None:
    """Load LiteLLM's tokenizer in the background: the first estimate of an abandoned call or a missing
    usage block would otherwise load it on the event loop, stalling it for about 300 ms (measured)."""
    global _tokenizer_warmed
    if _tokenizer_warmed:
        return
    _tokenizer_warmed = True

    def warm() -> None:
        with contextlib.suppress(Exception):
            litellm.token_counter(model="gpt-4o-mini", messages=[{"role": "user", "content": "warm up"}])
        # And LiteLLM's provider configs, which its first cost_per_token builds (importing provider
        # modules): a turn's first call priced at its close (a retry LiteLLM did not log) otherwise
        # paid it on the event loop: 45-60 ms here, 0.3-0.8 s on a loaded machine (measured, 1.106.12).
        with contextlib.suppress(Exception):
            litellm.cost_per_token(
                model="gpt-4o-mini", custom_llm_provider="openai", prompt_tokens=1, completion_tokens=1
            )

    threading.Thread(target=warm, name="turnledger-tokenizer-warmup", daemon=True).start()


def uninstall(callback: TokenTrackingCallback | None = None) -> None:
    """Unregister ``callback`` (default :data:`token_tracker`) from every LiteLLM callback list.

    ``litellm.callbacks.remove(x)`` alone is not enough: LiteLLM has already copied ``x`` into its
    success/failure/input lists on the first call after registration.
    """
    cb = callback if callback is not None else token_tracker
    with _install_lock:
        for name in _LITELLM_CALLBACK_LISTS:
            current = getattr(litellm, name, None)
            if isinstance(current, list):
                current[:] = [c for c in current if c is not cb]
        utils_list = getattr(getattr(litellm, "utils", None), "callback_list", None)
        if isinstance(utils_list, list):
            utils_list[:] = [c for c in utils_list if c is not cb]


def is_installed(callback: TokenTrackingCallback | None = None) -> bool:
    cb = callback if callback is not None else token_tracker
    return any(
        existing is cb
        for name in _LITELLM_CALLBACK_LISTS
        for existing in (getattr(litellm, name, None) or [])
        if isinstance(getattr(litellm, name, None), list)
    )

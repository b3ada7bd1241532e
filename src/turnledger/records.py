"""One LLM call's accounting: :class:`TokenCallRecord` and the enums it is described by."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Any

MICROS_PER_USD = Decimal(1_000_000)

MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)
"""Money arithmetic runs in this context, never the application's: a caller that set
``getcontext().prec = 4`` for its own purposes must not round our sums. 60 digits hold any
per-token rate times any token count exactly."""

EXACT_SUM_CONTEXT = Context(prec=MAX_PREC, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""Sums of stored costs (and their products with a row count) in reports: exact, as PostgreSQL's
``SUM`` of ``NUMERIC`` is. Each cost holds up to MONEY_CONTEXT's 60 significant digits, from 1e-30 to
1e13 USD, so a sum can need more than 60: rounded to them, a SQLite report would differ from the
same report on PostgreSQL. Only for addition and multiplication, which give a finite result whatever
the precision (a division in it could run out of memory)."""


class CallStatus(StrEnum):
    """How a call ended, as far as turnledger could see."""

    SUCCESS = "success"
    FAILURE = "failure"
    ABANDONED = "abandoned"
    """The call started but LiteLLM never reported an end (a stream broken off, a task cancelled)
    before its turn closed. The provider may still bill it, so it is kept, never dropped; one flagged
    ``provider_error`` was refused by the provider and is not billed."""


class CallKind(StrEnum):
    """What kind of LiteLLM call produced the record (from LiteLLM's ``call_type``)."""

    CHAT = "chat"
    TEXT_COMPLETION = "text_completion"
    EMBEDDING = "embedding"
    IMAGE_GENERATION = "image_generation"
    TRANSCRIPTION = "transcription"
    SPEECH = "speech"
    RERANK = "rerank"
    MODERATION = "moderation"
    RESPONSES = "responses"
    OCR = "ocr"
    OTHER = "other"


class CostSource(StrEnum):
    """Which stage of the cost chain priced a call. ``NONE`` means unpriced: cost unknown, not free."""

    PROVIDER = "provider"
    RESPONSE_COST = "response_cost"
    HIDDEN_PARAMS = "hidden_params"
    COMPLETION_COST = "completion_cost"
    COST_PER_TOKEN = "cost_per_token"
    PRICE_TABLE = "price_table"
    ESTIMATED = "estimated"
    CACHE_HIT = "cache_hit"
    """Answered from LiteLLM's own response cache: no provider call was made, cost is exactly 0."""
    NOT_BILLED = "not_billed"
    """A failed call for which the provider reported no usage (but one that timed out waiting for its
    answer: the provider had it, and its input is estimated), or an abandoned one the provider answered
    with an HTTP error (``provider_error``): nothing was billed, cost is exactly 0."""
    NONE = "none"


class RecordFlag(StrEnum):
    """Why a record deserves a second look. Flags never stop a record from being kept."""

    MALFORMED_EVENT = "malformed_event"
    """The LiteLLM event lacked something expected (ids, model, timing); what could be read was kept."""
    MALFORMED_USAGE = "malformed_usage"
    """A usage count was not a non-negative integer, or the counts did not add up."""
    USAGE_MISSING = "usage_missing"
    """The response carried no usage block at all."""
    USAGE_ESTIMATED = "usage_estimated"
    """Token counts were estimated locally because the provider reported none."""
    NO_CALLBACK = "no_callback"
    """LiteLLM fired no end event for the call before its turn closed (see ``CallStatus.ABANDONED``)."""
    UNLOGGED_RETRY_ATTEMPT = "unlogged_retry_attempt"
    """An attempt of a call LiteLLM retried itself (``num_retries`` on ``completion`` or ``acompletion``,
    every attempt under the call's one ``litellm_call_id``) whose end LiteLLM never logged: it logs one
    failure per call, and on the async path nothing after the first attempt. The provider had the
    request, so it is kept as a record of its own, status ``abandoned``, priced as an abandoned call is
    (an HTTP error answer in the call details: not billed; otherwise its input estimated), unless the
    call details hold this attempt's answer with usage (an async retry that succeeded): then status
    ``success``, priced from that usage; or unless it failed without an answer before its timeout could
    fire (LiteLLM measured its request shorter than its timeout): then flagged ``provider_error``, not
    billed."""
    LATE = "late"
    """The end event arrived after the turn had closed; the record went to subscribers only."""
    NEGATIVE_COST = "negative_cost"
    """A pricing stage produced a negative cost, which was discarded."""
    IMPLAUSIBLE_COST = "implausible_cost"
    """A pricing stage produced a cost for one call above ``MAX_CALL_COST_USD`` or, not 0, below
    ``MIN_CALL_COST_USD``, which was discarded (the call is unpriced): no real call costs that, and
    such a figure could not be stored."""
    PRICING_ERROR = "pricing_error"
    """A pricing stage raised; the chain went on."""
    PRICE_PREFIX_MATCH = "price_prefix_match"
    """Priced by a shorter entry of the user's price table (``gpt-4o`` for ``gpt-4o-mini``): the table
    has no entry for this exact model. Add one if the two are priced differently."""
    SANITIZED = "sanitized"
    """A stored string was changed to fit its column: NUL characters removed, or an over-long value
    shortened to its start plus a hash of the whole (logged with the turn id)."""
    PROVIDER_ERROR = "provider_error"
    """An abandoned call the provider had answered with an HTTP error (a 4xx or 5xx), as LiteLLM's call
    details showed though LiteLLM logged no failure (a sync ``num_retries`` without ``tenacity``).
    Providers bill no error answer: no tokens, cost exactly 0 (``not_billed``), nothing estimated.
    With ``unlogged_retry_attempt``, also an attempt that raised before any timeout it was sent with
    could fire, with no answer: LiteLLM (1.106.12) keeps no error of an async call's later attempts,
    so such an attempt was refused with an HTTP error or never reached the provider (a connection
    error), and neither is billed."""
    COMPLETION_NOT_SEEN = "completion_not_seen"
    """The call's output could not be seen (an abandoned call): completion tokens are counted as 0,
    so the estimated cost is a lower bound."""
    SERVICE_TIER_UNPRICED = "service_tier_unpriced"
    """Priced by the user's price table, whose entry has no rates for the service tier the call was
    billed at (``flex``, ``priority``...: ``input_cost_per_token_priority`` and the like): it was billed
    at the standard rates, which that tier does not charge (OpenAI's flex costs half, priority up to
    twice as much). Add the tier's rates to the entry."""


_MICROS_CONTEXT = MONEY_CONTEXT.copy()
"""MONEY_CONTEXT's settings passed to each operation rather than entered with ``localcontext`` (a
context copied per call). A copy of its own, so the status flags these operations set never land on
the shared MONEY_CONTEXT."""


def micros_from_usd(cost_usd: Decimal | None) -> int | None:
    """Integer micro-USD, rounded half-even once, for callers that want an integer."""
    if cost_usd is None:
        return None
    ctx = _MICROS_CONTEXT
    return int(ctx.multiply(cost_usd, MICROS_PER_USD).to_integral_value(ROUND_HALF_EVEN, ctx))


@dataclass(frozen=True, slots=True)
class TokenCallRecord:
    """The accounting of one LiteLLM call, or one attempt of it: one record per LiteLLM event. A Router
    retry or fallback is a call of its own (one record per attempt, each with its own call id). The
    attempts of a call LiteLLM retries itself (``num_retries`` on ``completion`` or ``acompletion``)
    share its call id, a record each, those LiteLLM never logged flagged ``unlogged_retry_attempt``.
    The provider client's own retries inside one attempt (the openai SDK's ``max_retries``) are that
    attempt's single record."""

    call_id: str
    """LiteLLM's ``litellm_call_id``; shared by the attempts of a call LiteLLM retried itself."""
    model: str
    """The model LiteLLM reports (provider prefix usually stripped, e.g. ``gpt-4o-mini``)."""
    provider: str | None = None
    """LiteLLM's ``custom_llm_provider`` (``openai``, ``anthropic``...)."""
    call_kind: CallKind = CallKind.CHAT
    status: CallStatus = CallStatus.SUCCESS
    prompt_tokens: int = 0
    """Input tokens as the provider counts them (OpenAI convention: cache reads and writes included)."""
    completion_tokens: int = 0
    """Output tokens, reasoning included."""
    total_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens read from the provider's prompt cache (a subset of ``prompt_tokens``)."""
    cache_creation_tokens: int = 0
    """Input tokens written to the prompt cache (a subset of ``prompt_tokens``), 5-minute and 1-hour."""
    cache_creation_1h_tokens: int = 0
    """The part of ``cache_creation_tokens`` written with a 1-hour lifetime, where the provider says."""
    reasoning_tokens: int = 0
    """Reasoning tokens (a subset of ``completion_tokens``)."""
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    audio_input_tokens: int = 0
    """Audio input tokens (a subset of ``prompt_tokens``), billed at their own, higher rate."""
    audio_output_tokens: int = 0
    """Audio output tokens (a subset of ``completion_tokens``), billed at their own rate."""
    cost_usd: Decimal | None = None
    """Exact cost in USD; ``None`` means unpriced (unknown), ``Decimal(0)`` means free."""
    cost_source: CostSource = CostSource.NONE
    started_at: datetime | None = None
    """When LiteLLM started the call (UTC)."""
    latency_ms: float | None = None
    ttft_ms: float | None = None
    """Time to first token, for streams."""
    provider_request_id: str | None = None
    """The provider's id for the request, from its ``x-request-id`` or ``request-id`` header (what its
    request logs and support know it by; never the answer body's ``id``). ``None`` when unknown: a
    failure LiteLLM logged without a response, a provider that sends neither header, and an attempt
    LiteLLM retried without logging it whose answer's headers it did not keep (it keeps them for a
    call through the openai SDK, not for DeepSeek or Anthropic: measured on 1.106.12)."""
    model_ref: str | None = None
    """The application's own reference for the model, from ``register_model_metadata``."""
    model_id: str | None = None
    display_name: str | None = None
    stream: bool = False
    usage_estimated: bool = False
    error_type: str | None = None
    """The exception class name of a failed call. Never its message: messages can quote the prompt."""
    flags: tuple[RecordFlag, ...] = ()

    @property
    def cost_micros(self) -> int | None:
        """``cost_usd`` in integer micro-USD (half-even), ``None`` when unpriced."""
        return micros_from_usd(self.cost_usd)

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None

    @property
    def late(self) -> bool:
        return RecordFlag.LATE in self.flags

    def with_flags(self, *flags: RecordFlag) -> TokenCallRecord:
        merged = self.flags + tuple(f for f in flags if f not in self.flags)
        return dataclasses.replace(self, flags=merged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: money as a decimal string (never a float), times as ISO-8601."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Decimal):
                value = f"{value:f}"  # fixed point: never "1.5E-7"
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            elif isinstance(value, StrEnum):
                value = value.value
            out[f.name] = value
        out["cost_micros"] = self.cost_micros
        return out


class _RecordDraft(TokenCallRecord):
    """:class:`TokenCallRecord`'s slots, writable: a record being filled in (see :func:`record_draft`).

    A subclass adding no slots, so that sealing it (``draft.__class__ = TokenCallRecord``) finds the
    two layouts the same at once; a class of its own with the same slots had its slot names compared,
    700 instructions a record (callgrind). Writable: ``object.__setattr__`` in place of the frozen
    one, which CPython then calls directly as a plain class's (no Python-level call per store)."""

    __slots__ = ()
    __init__ = object.__init__  # an empty draft: its fields are stored one by one
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


def record_draft() -> Any:
    """An empty record to fill in field by field (``draft.model = ...``), then :func:`sealed_record`.

    The callback fills one in per LiteLLM event. Plain attribute stores: a call passing the 29
    fields as keywords cost 22,500 instructions a record, 6,400 this way (callgrind; above 15
    keywords CPython 3.11 builds a dict of them and unpacks it again, and a frozen dataclass sets
    each field through a call). Every field must be set: the draft has no defaults, and a field
    left out fails when it is read. ``Any``: mypy cannot see a draft's fields (nor those of
    :data:`record_from_fields`'s keywords); a misspelt one fails at once, the slots being fixed.
    """
    return _new_object(_RecordDraft)


def sealed_record(draft: Any) -> TokenCallRecord:
    """The draft, every field set, as the frozen :class:`TokenCallRecord` it now is (the same object)."""
    draft.__class__ = TokenCallRecord
    record: TokenCallRecord = draft
    return record


_new_object = object.__new__


def _compile_record_builder() -> Callable[..., TokenCallRecord]:
    """``TokenCallRecord(**fields)`` as a draft filled in and sealed (see :func:`record_draft`).

    Generated from the dataclass's own fields and defaults, keyword-only, so it follows the class;
    a field with a default factory or a ``__post_init__`` gets the class.
    """
    fields = dataclasses.fields(TokenCallRecord)
    if hasattr(TokenCallRecord, "__post_init__") or any(
        f.default_factory is not dataclasses.MISSING or not f.init for f in fields
    ):
        return TokenCallRecord
    namespace: dict[str, Any] = {"_draft": record_draft, "_sealed": sealed_record}
    params: list[str] = []
    body: list[str] = []
    for f in fields:
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    record.{f.name} = {f.name}\n")
    source = (
        f"def record_from_fields(*, {', '.join(params)}):\n    record = _draft()\n{''.join(body)}"
        "    return _sealed(record)\n"
    )
    exec(source, namespace)
    builder: Callable[..., TokenCallRecord] = namespace["record_from_fields"]
    return builder


record_from_fields = _compile_record_builder()
"""``record_from_fields(call_id=..., model=..., ...)`` equals ``TokenCallRecord(...)``, built faster."""

"""The cost chain: which source prices a call, in exact Decimal. Unpriced is ``None``, never 0.

Stages, tried in order; the first that can price answers and is recorded as ``cost_source``:

1. ``provider``: a cost the provider sent inline (OpenRouter's ``usage.cost``).
2. ``response_cost``: LiteLLM's ``kwargs["response_cost"]``.
3. ``hidden_params``: ``response_obj._hidden_params["response_cost"]``.
4. ``completion_cost``: ``litellm.completion_cost(completion_response=...)``, for events LiteLLM did
   not price itself (no ``response_cost`` key; when the key is there, LiteLLM already ran this).
5. ``cost_per_token``: ``litellm.cost_per_token`` with the normalized cache, 1-hour cache, reasoning,
   audio and image counts and the billed service tier passed in (it prices every input token as
   fresh text at the standard tier unless told). Skipped for image
   generation, which token rates cannot price, and when LiteLLM's own pricing of the event already
   failed because it does not know the model; a model it cannot price is asked once per version of
   ``litellm.model_cost``, not on every call.
6. ``price_table``: the caller's own :class:`~turnledger.price_table.PriceTable`, for the model as
   LiteLLM reports it, then for the model the response says served it (an Azure deployment).

The usual call stops at stage 2 and reads no LiteLLM cost function at all, which keeps the callback
within a few microseconds. What a stage says is not taken blindly: a negative cost is discarded and
flagged (LiteLLM prices a negative completion count negatively, measured on 1.106), and ``0`` from a
LiteLLM stage for a call that used tokens, or that is billed beyond tokens (an image, a transcription,
speech, a rerank), counts only if LiteLLM's map really lists the model at zero rates; otherwise it is
"unknown", not "free", and the chain goes on. A usage block with a count that could not be believed
(``malformed_usage``) is priced from the counts as read, not by LiteLLM's figure for the raw block;
one where none could be read has an unknown price, not 0 (its tokens are unknown, not none).

LiteLLM's costs are floats summed in binary (``0.00021280000000000002`` for a DeepSeek call worth
exactly ``0.0002128``). A float carries 15 significant decimal digits faithfully, so each LiteLLM
figure is read by :func:`~turnledger.money.to_decimal` (shortest repr rounded half-even to 15
significant digits): exact for every cost with up to 15 significant digits (any realistic
tokens x rates sum), without the binary noise. Everything after that is Decimal arithmetic.

Missing usage: LiteLLM does not add ``stream_options={"include_usage": True}`` to a stream sent to a
custom ``api_base`` (only to OpenAI's own), and then reports 0 tokens and ``response_cost == 0.0``.
turnledger does **not** inject ``include_usage`` itself: an OpenAI-compatible server may reject the
unknown parameter (failing the caller's call, which capture must never do) and, when accepted, it
adds a usage-only final chunk the caller's stream loop would see. Instead such a call is detected
(0 tokens, content returned) and its usage estimated with ``litellm.token_counter``
(``cost_source='estimated'``, ``usage_estimated=True``). Callers who know their server supports it
should pass ``stream_options={"include_usage": True}`` themselves and get exact counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from turnledger._logging import warn_once
from turnledger.call_details import answer_in_details, failed_before_timeout, provider_refused
from turnledger.money import _from_float, to_decimal
from turnledger.price_table import billing_provider
from turnledger.records import MONEY_CONTEXT, CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.request_ids import headers_request_id
from turnledger.usage import (
    TokenCounts,
    estimate_counts,
    get_field,
    normalize_usage,
    private_field,
    response_text,
    usage_block,
    usage_missing,
)

if TYPE_CHECKING:
    from turnledger.accumulator import ModelMetadata, PendingCall
    from turnledger.price_table import PriceTable

logger = logging.getLogger("turnledger")

PriceResult = tuple[Decimal | None, CostSource, list[RecordFlag]]

decimal_from_litellm = to_decimal
"""LiteLLM's float costs are read by :func:`turnledger.money.to_decimal`: shortest repr, rounded to 15
significant digits, so ``0.00021280000000000002`` -> ``Decimal('0.0002128')``."""


# -- the chain ----------------------------------------------------------------------------------------

INLINE_COST_PROVIDERS = frozenset({"openrouter"})
"""Providers that send the call's cost inline in their usage block, streamed or not."""


# Read on every event, as module globals: an enum member read off its class costs ~70 ns more
# (measured on 3.11).
_IMAGE_GENERATION = CallKind.IMAGE_GENERATION
_RESPONSE_COST = CostSource.RESPONSE_COST


def price_call(
    kwargs: Mapping[str, Any],
    response_obj: Any,
    counts: TokenCounts,
    *,
    model: str | None = None,
    provider: str | None = None,
    call_kind: CallKind = CallKind.CHAT,
    price_table: PriceTable | None = None,
) -> PriceResult:
    """Price one finished call through the chain (module docstring). Never raises."""
    flags: list[RecordFlag] = []
    name = model or _str(kwargs.get("model")) or _str(getattr(response_obj, "model", None)) or ""
    prov = provider if provider is not None else _str(kwargs.get("custom_llm_provider"))
    is_image = call_kind is _IMAGE_GENERATION

    if kwargs.get("cache_hit") is True:
        # LiteLLM answered from its own cache: no provider was called, nothing was billed. Its usage
        # block repeats the cached response's tokens, which must not be priced again.
        return Decimal(0), CostSource.CACHE_HIT, flags
    # On a stream LiteLLM stamps its own computed cost into usage.cost when the provider sent none
    # (litellm.main._stamp_streaming_usage_cost), so there only a provider known to send inline costs
    # is believed; LiteLLM's figure is then read, as what it is, from response_cost below.
    inline = counts.inline_cost if (not kwargs.get("stream") or prov in INLINE_COST_PROVIDERS) else None
    if inline is not None:
        cost = _accept(inline, False, flags, counts, call_kind, name, prov)
        if cost is not None:
            return cost, CostSource.PROVIDER, flags
        if decimal_from_litellm(inline) is None:
            _add(flags, RecordFlag.MALFORMED_USAGE)  # NaN, "n/a", True: a cost sent but unreadable
    # LiteLLM's own figures price the usage block as the provider sent it; when a count of it could
    # not be believed, they would bill tokens the record does not show. The counts as read are priced.
    # Parts that only disagree with their total (Perplexity's reasoning beside its completion) keep
    # LiteLLM's figure: it also bills what tokens do not show (citations, searches).
    from_litellm = not counts.count_discarded
    cost = _accept(kwargs.get("response_cost"), True, flags, counts, call_kind, name, prov) if from_litellm else None
    if cost is not None:
        return cost, _RESPONSE_COST, flags
    hidden = get_field(response_obj, "_hidden_params") if from_litellm else None
    cost = _accept(get_field(hidden, "response_cost"), True, flags, counts, call_kind, name, prov)
    if cost is not None:
        return cost, CostSource.HIDDEN_PARAMS, flags
    # LiteLLM computes response_cost with completion_cost itself: when the event carries the key,
    # re-running it on the same response answers the same None, at ~450 us an event.
    if (
        from_litellm
        and "response_cost" not in kwargs
        and response_obj is not None
        and not isinstance(response_obj, Mapping)
    ):
        value = _run_stage("completion_cost", name, prov, flags, _completion_cost, kwargs, response_obj, name, prov)
        cost = _accept(value, True, flags, counts, call_kind, name, prov)
        if cost is not None:
            return cost, CostSource.COMPLETION_COST, flags
    images_out = _images_generated(kwargs, response_obj) if is_image else 0
    tier = billed_service_tier(kwargs, response_obj)
    cost, source, more = price_counts(
        counts,
        model=name,
        provider=prov,
        call_kind=call_kind,
        price_table=price_table,
        images_out=images_out,
        ask_litellm=not _litellm_said_unmapped(kwargs),
        service_tier=tier,
        priced_as=litellm_pricing_name(kwargs),
    )
    flags.extend(f for f in more if f not in flags)
    if cost is None and price_table is not None:
        # An Azure deployment (or a proxy alias) answers with the model that served it.
        served = _str(getattr(response_obj, "model", None))
        if served and served != name:
            served_cost = _table_cost(price_table, served, prov, counts, images_out, flags, tier)
            if served_cost is not None:
                return served_cost, CostSource.PRICE_TABLE, flags
    return cost, source, flags


def _accept(
    value: object,
    from_litellm: bool,
    flags: list[RecordFlag],
    counts: TokenCounts,
    call_kind: CallKind,
    name: str,
    prov: str | None,
) -> Decimal | None:
    """A stage's figure as a believable cost, or ``None``: a LiteLLM ``0`` counts only where it is a price.

    A function of its own, not a closure in :func:`price_call`: one made on every call, and its cell
    variables, cost a few tenths of a microsecond an event (measured)."""
    if type(value) is float:  # LiteLLM's response_cost, on every event
        if _FLOAT_SURELY_BELIEVABLE_FROM <= value <= _FLOAT_SURELY_BELIEVABLE_UNTIL:
            # Its Decimal, within 1e-14 of it, lies inside the plausible range and is not 0: nothing for
            # _believable to flag nor for the test of 0 below to refuse (1,400 instructions, callgrind).
            return _from_float(value)
        cost = _believable(_from_float(value), flags, name, True)
    else:
        cost = _believable(decimal_from_litellm(value), flags, name)
    if cost is None:
        return None
    if cost == _ZERO and from_litellm and not _zero_is_a_price(counts, call_kind, name, prov):
        return None
    return cost


def price_counts(
    counts: TokenCounts,
    *,
    model: str,
    provider: str | None = None,
    call_kind: CallKind = CallKind.CHAT,
    price_table: PriceTable | None = None,
    images_out: int = 0,
    ask_litellm: bool = True,
    service_tier: str | None = None,
    priced_as: str | None = None,
) -> PriceResult:
    """Price known counts by rates alone: ``cost_per_token``, then the caller's price table.

    ``ask_litellm=False`` skips ``cost_per_token`` (LiteLLM already said it has no price for the model).
    ``priced_as``: the name LiteLLM prices the call under when it is not the model's (see
    :func:`litellm_pricing_name`), which ``cost_per_token`` is asked for instead.
    ``service_tier``: the tier the call was billed at (see :func:`billed_service_tier`), whose rates
    LiteLLM's map lists apart (OpenAI's flex at half the standard rate, priority at up to twice it),
    and so may the price table (flagged ``service_tier_unpriced`` when its entry does not).
    """
    flags: list[RecordFlag] = []
    is_image = call_kind is CallKind.IMAGE_GENERATION
    rated = priced_as or model
    if (ask_litellm or priced_as) and not is_image and rated:
        value = _run_stage(
            "cost_per_token", rated, provider, flags, _cost_per_token, counts, rated, provider, call_kind, service_tier
        )
        cost = _believable(decimal_from_litellm(value), flags, model)
        if cost is not None and (cost > 0 or _zero_is_a_price(counts, call_kind, rated, provider)):
            return cost, CostSource.COST_PER_TOKEN, flags
    if price_table is not None and model:
        cost = _table_cost(price_table, model, provider, counts, images_out, flags, service_tier)
        if cost is not None:
            return cost, CostSource.PRICE_TABLE, flags
    return None, CostSource.NONE, flags


def _table_cost(
    table: PriceTable,
    model: str,
    provider: str | None,
    counts: TokenCounts,
    images_out: int,
    flags: list[RecordFlag],
    service_tier: str | None,
) -> Decimal | None:
    """The price table's cost of the call at its billed service tier, flagged ``price_prefix_match``
    when only a prefix of the name matched (the README promises the flag wherever the table prices), and
    ``service_tier_unpriced`` when the entry has no rates for that tier (billed at the standard ones)."""
    found = table.match(model, provider)
    if found is None:
        return None
    cost = found.price.cost(
        counts, images_out=images_out, service_tier=service_tier, provider=billing_provider(model, provider)
    )
    if cost is not None and cost == 0 and _tokens_unknown(counts):
        return None
    cost = _believable(cost, flags, model)
    if cost is not None and found.price.for_service_tier(service_tier) is None:
        _add(flags, RecordFlag.SERVICE_TIER_UNPRICED)
    names = (model, f"{provider}/{model}")
    if found.via_alias is None:
        exact = found.key in names
    else:
        # Both hops by their whole name: the model to the alias, and the alias to its target's key.
        exact = found.via_alias in names and found.key == table.aliases.get(found.via_alias)
    if cost is not None and not exact:
        _add(flags, RecordFlag.PRICE_PREFIX_MATCH)
    return cost


def estimate_missing_usage(
    kwargs: Mapping[str, Any],
    response_obj: Any,
    counts: TokenCounts,
    *,
    model: str,
    provider: str | None = None,
    call_kind: CallKind = CallKind.CHAT,
    price_table: PriceTable | None = None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """For a call that reported 0 tokens yet returned content, or, billed by tokens, was sent input
    (an embedding server that sends no usage: LiteLLM fills in zeros): estimated counts and their price.

    ``None`` when usage is not missing (the normal case; costs one attribute read), for an answer from
    LiteLLM's own cache (nothing was billed), or when the estimate failed. An estimate that finds no
    tokens either prices nothing: the cost is unknown, not 0.
    """
    if counts.used_tokens or kwargs.get("cache_hit") is True:
        return None
    if not usage_missing(counts, response_obj) and not (
        call_kind in _BILLED_BY_TOKENS and _sent_input(kwargs.get("messages"), kwargs.get("input"))
    ):
        return None
    return _estimate_and_price(
        kwargs, response_obj, model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def estimate_unanswered_call(
    kwargs: Mapping[str, Any],
    *,
    model: str,
    provider: str | None = None,
    call_kind: CallKind = CallKind.CHAT,
    price_table: PriceTable | None = None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """For a failed call that reported no usage but that the provider may bill all the same: its wait
    for the answer timed out (see :func:`answer_timed_out`), so the provider had the whole request and
    went on with it, as it does with a call cancelled in flight (an ``abandoned`` one). Its input is
    estimated, as an abandoned call's is; its output was never seen, so the cost is a lower bound
    (``completion_not_seen``). A call billed beyond tokens (an image, audio) is unpriced: what the
    provider went on to produce is not known, and it is not free. ``None`` when nothing billed by
    tokens was sent; unpriced when the estimate failed.
    """
    if call_kind in _BILLED_BEYOND_TOKENS:
        return TokenCounts(), None, CostSource.NONE, [RecordFlag.COMPLETION_NOT_SEEN]
    return _estimate_billed_failure(
        kwargs, None, "", model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def _estimate_billed_failure(
    kwargs: Mapping[str, Any],
    response_obj: Any,
    delivered_text: str,
    *,
    model: str,
    provider: str | None,
    call_kind: CallKind,
    price_table: PriceTable | None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """A failed call the provider had whole: its input estimated, and the output it delivered before
    the failure (``delivered_text``, possibly none); what it generated beyond that was never seen."""
    if call_kind not in _BILLED_BY_TOKENS or not _sent_input(kwargs.get("messages"), kwargs.get("input")):
        return None
    estimated = _estimate_and_price(
        kwargs,
        response_obj,
        model=model,
        provider=provider,
        call_kind=call_kind,
        price_table=price_table,
        completion_text=delivered_text,
    )
    if estimated is None:  # input was sent, and may be billed: unpriced, not free
        return TokenCounts(), None, CostSource.NONE, [RecordFlag.PRICING_ERROR, RecordFlag.COMPLETION_NOT_SEEN]
    counts, cost, source, flags = estimated
    return counts, cost, source, [*flags, RecordFlag.COMPLETION_NOT_SEEN]


def delivered_before_failure(
    kwargs: Mapping[str, Any],
    *,
    model: str,
    provider: str | None = None,
    call_kind: CallKind = CallKind.CHAT,
    price_table: PriceTable | None = None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """For a failed call that delivered part of its answer first (a stream broken off or timed out
    mid-flight): the usage of what was delivered, which the provider billed. LiteLLM counts the chunks
    seen and hands that usage to the failure event as ``kwargs["combined_usage_object"]`` (measured on
    1.106.12). It counts them itself unless the chunks carried usage, so ``usage_estimated``; the
    provider may have generated more than it delivered, so ``completion_not_seen`` (a lower bound).

    LiteLLM's sync stream path hands its failure event no such usage (1.106.12, ``__next__``): then the
    chunks are read from the stream itself, the event's ``original_response``, and counted with the
    input as an abandoned call's is (see :func:`_stream_delivered_before_failure`).
    ``None`` when nothing was delivered, or it cannot be told that anything was.
    """
    partial = kwargs.get("combined_usage_object")
    counts = normalize_usage({"usage": partial}) if partial is not None else TokenCounts()
    if not counts.used_tokens and not _tokens_unknown(counts):
        return _stream_delivered_before_failure(
            kwargs, model=model, provider=provider, call_kind=call_kind, price_table=price_table
        )
    _add_tools_litellm_left_out(counts, kwargs, model)
    return _price_delivered_usage(
        counts, kwargs, None, model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def _add_tools_litellm_left_out(counts: TokenCounts, kwargs: Mapping[str, Any], model: str) -> None:
    """Add the request's tool definitions to a prompt LiteLLM counted itself. It counts a broken-off
    stream's prompt from its messages alone (1.106, ``calculate_usage``), and the provider bills the
    tools as input too: 30 of them are about 1,000 tokens beside an 11-token question. A prompt count
    other than that of the messages alone is the provider's own (its usage chunk came), which counts
    them already; so is one that cannot be told apart, and then nothing is added."""
    tools = request_tools(kwargs)
    messages = kwargs.get("messages")
    if not tools or not isinstance(messages, list) or not messages or redacted_messages(messages):
        return
    try:
        if counts.prompt_tokens != estimate_counts(model, messages=messages).prompt_tokens:
            return
        with_tools = estimate_counts(model, messages=messages, tools=tools).prompt_tokens
    except Exception:
        return  # LiteLLM's count stands: a lower bound, as the record says
    added = max(0, with_tools - counts.prompt_tokens)
    counts.prompt_tokens += added
    counts.total_tokens += added


def _price_delivered_usage(
    counts: TokenCounts,
    kwargs: Mapping[str, Any],
    response_obj: Any,
    *,
    model: str,
    provider: str | None,
    call_kind: CallKind,
    price_table: PriceTable | None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]]:
    """The usage a failed stream delivered, priced as a lower bound: LiteLLM's count of it or the
    provider's usage chunk, which one cannot always be told (see :func:`delivered_before_failure`)."""
    counts.estimated = True
    counts.flag(RecordFlag.USAGE_ESTIMATED)
    counts.flag(RecordFlag.COMPLETION_NOT_SEEN)
    return _price_estimate(
        counts, kwargs, response_obj, model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def _stream_delivered_before_failure(
    kwargs: Mapping[str, Any],
    *,
    model: str,
    provider: str | None,
    call_kind: CallKind,
    price_table: PriceTable | None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """A failed stream that had delivered chunks, counted from the event alone: its input estimated,
    plus the chunks' text when the stream can be read. LiteLLM stamps ``completion_start_time`` when a
    stream yields its first chunk, and keeps the chunks it yielded on the stream object it logs as
    ``original_response`` (``CustomStreamWrapper.chunks``, 1.106.12). When that list cannot be read
    (another LiteLLM, a provider whose handler logs something else), the stamp alone says the provider
    was answering: its input is billed, a lower bound.

    The input is counted from the messages the stream object holds when it holds them: with message
    logging off (``litellm.turn_off_message_logging``), LiteLLM replaces the event's messages in place
    with a placeholder before the failure callbacks run."""
    if not kwargs.get("stream"):
        return None
    stream = kwargs.get("original_response")
    chunks = _stream_chunks(stream)
    if chunks is None:
        if not isinstance(kwargs.get("completion_start_time"), datetime):
            return None
        chunks = []
    elif not chunks:
        return None
    delivered = "".join(response_text(chunk) for chunk in chunks)
    # The provider's usage came before the failure: its usage chunk (a read timeout waiting for the end
    # of the stream), or the input counted as the answer starts (Anthropic's message_start). It counts
    # the input the provider billed, which an estimate would undercount.
    delivered_usage = _chunks_usage(chunks)
    if delivered_usage is not None:
        _count_at_least(delivered_usage, model, delivered)
        return _price_delivered_usage(
            delivered_usage,
            kwargs,
            chunks[-1],
            model=model,
            provider=provider,
            call_kind=call_kind,
            price_table=price_table,
        )
    sent = _stream_messages(stream)
    if sent is not None:
        kwargs = {**kwargs, "messages": sent}
    # The last chunk may say which service tier served the call.
    last = chunks[-1] if chunks else None
    return _estimate_billed_failure(
        kwargs, last, delivered, model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def _stream_chunks(stream: object) -> list[Any] | None:
    """The chunks a LiteLLM stream object has yielded so far, or ``None`` when it is not one."""
    if stream is None or isinstance(stream, str | bytes | Mapping):
        return None
    try:
        chunks = getattr(stream, "chunks", None)
        # A snapshot: the stream's own thread appended to it, and has stopped (it failed).
        return list(chunks) if isinstance(chunks, list) else None
    except Exception:
        return None


def _chunks_usage(chunks: list[Any]) -> TokenCounts | None:
    """The usage the last chunk that carried one reported (a provider's usage chunk), or ``None``."""
    for chunk in reversed(chunks):
        if usage_block(chunk) is None:
            continue
        counts = normalize_usage(chunk)
        if counts.used_tokens or _tokens_unknown(counts):
            return counts
    return None


def _count_at_least(counts: TokenCounts, model: str, delivered_text: str) -> None:
    """Raise the output of usage sent before the answer's end (Anthropic's message_start counts 1 token)
    to the tokens of the text delivered, when that is more."""
    seen = _unredacted_text(delivered_text)
    text = delivered_text if seen is None else seen
    if not text:
        return
    try:
        tokens = estimate_counts(model, completion_text=text).completion_tokens
    except Exception:
        return  # the usage as sent: a lower bound, as the record says
    if tokens > counts.completion_tokens:
        counts.total_tokens += tokens - counts.completion_tokens
        counts.completion_tokens = tokens


def _stream_messages(stream: object) -> list[Any] | None:
    """The chat messages a LiteLLM stream object was sent (``CustomStreamWrapper.messages``), or ``None``."""
    if stream is None or isinstance(stream, str | bytes | Mapping):
        return None
    try:
        messages = getattr(stream, "messages", None)
        return list(messages) if isinstance(messages, list) and messages else None
    except Exception:
        return None


def answer_timed_out(exc: object) -> bool:
    """Whether a failure is a read timeout: the request was sent whole, and the wait for the answer ran
    out. A connect, write or pool timeout, or any other error without an answer, reached no provider
    that would bill it. Read from the exception's chain: LiteLLM wraps the HTTP client's own
    ``httpx.ReadTimeout`` (measured on 1.106: ``Timeout`` <- ``APITimeoutError`` <- ``ReadTimeout``).

    The first HTTP client error in the chain is this call's own outcome, and decides. What lies beyond
    it is an earlier error the call was made while handling: a Router retries inside the handler of
    the attempt before, so a 500's chain runs on (``httpx.HTTPStatusError`` <- the earlier ``Timeout``)
    into that attempt's ``ReadTimeout``, which says nothing of the 500.
    """
    import httpx

    seen = 0
    while isinstance(exc, BaseException) and seen < _MAX_CHAIN:
        if isinstance(exc, httpx.HTTPError):
            return isinstance(exc, httpx.ReadTimeout)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


_MAX_CHAIN = 16
"""Links of an exception chain looked at: LiteLLM's are about five deep; a cycle must not spin."""


REDACTED_BY_LITELLM = "redacted-by-litellm"
"""What LiteLLM writes in place of a call's messages and output when message logging is off
(``litellm.turn_off_message_logging`` or per call): ``litellm.constants.REDACTED_BY_LITELLM``, 1.106."""


def redacted_messages(messages: object) -> bool:
    """Whether ``messages`` are LiteLLM's redaction placeholder, exactly as its ``perform_redaction``
    writes them over an event's messages (1.106): what was sent is not in the event."""
    if type(messages) is not list or len(messages) != 1:
        return False
    message = messages[0]
    return type(message) is dict and message == {"role": "user", "content": REDACTED_BY_LITELLM}


def _unredacted_text(text: str) -> str | None:
    """An output without LiteLLM's placeholders (one per part it replaced: content, reasoning, tool call
    arguments; a tool call's name is kept), or ``None`` when it holds none."""
    if REDACTED_BY_LITELLM not in text:
        return None
    return text.replace(REDACTED_BY_LITELLM, "")


def _estimate_and_price(
    kwargs: Mapping[str, Any],
    response_obj: Any,
    *,
    model: str,
    provider: str | None,
    call_kind: CallKind,
    price_table: PriceTable | None,
    completion_text: str | None = None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]] | None:
    """``completion_text``: the output to count, when it is not ``response_obj``'s.

    LiteLLM's redaction placeholder is never counted as text (see :data:`REDACTED_BY_LITELLM`): an
    output it replaced in place cannot be recovered, so only what it left (a tool call's name) is
    counted, ``completion_not_seen`` (a lower bound); messages it replaced leave the input unknown,
    so the call is unpriced. The caller passes the messages the call was sent when it still has them
    (the callback: those its pre-call hook saw)."""
    messages = _chat_messages(call_kind, kwargs.get("messages"))
    if redacted_messages(messages):
        return TokenCounts(), None, CostSource.NONE, [RecordFlag.USAGE_MISSING, RecordFlag.COMPLETION_NOT_SEEN]
    messages, input_texts = _estimated_input(call_kind, with_system_prompt(messages, request_system(kwargs)), kwargs)
    if completion_text is None:
        completion_text = response_text(response_obj)
    seen_text = _unredacted_text(completion_text)
    try:
        estimate = estimate_counts(
            model,
            messages=messages,
            input_texts=input_texts,
            completion_text=completion_text if seen_text is None else seen_text,
            tools=request_tools(kwargs),
        )
        if seen_text is not None:
            estimate.flag(RecordFlag.COMPLETION_NOT_SEEN)
    except Exception as exc:
        warn_once(
            "estimate",
            "turnledger could not estimate the missing usage of %s (%s)",
            model,
            type(exc).__name__,
            detail=f"{provider}/{model}:{type(exc).__name__}",
        )
        return None
    if not estimate.used_tokens:
        return estimate, None, CostSource.NONE, [*estimate.flags, RecordFlag.USAGE_MISSING]
    return _price_estimate(
        estimate, kwargs, response_obj, model=model, provider=provider, call_kind=call_kind, price_table=price_table
    )


def _price_estimate(
    counts: TokenCounts,
    kwargs: Mapping[str, Any],
    response_obj: Any,
    *,
    model: str,
    provider: str | None,
    call_kind: CallKind,
    price_table: PriceTable | None,
) -> tuple[TokenCounts, Decimal | None, CostSource, list[RecordFlag]]:
    """Estimated (or partly delivered) counts priced at the tier the call was billed at: ``estimated``
    when a rate priced them, the counts' own flags first."""
    cost, source, flags = price_counts(
        counts,
        model=model,
        provider=provider,
        call_kind=call_kind,
        price_table=price_table,
        service_tier=billed_service_tier(kwargs, response_obj),
        priced_as=litellm_pricing_name(kwargs),
    )
    flags = [*counts.flags, *(f for f in flags if f not in counts.flags)]
    return counts, cost, CostSource.ESTIMATED if cost is not None else source, flags


_BILLED_BY_TOKENS = frozenset({CallKind.CHAT, CallKind.TEXT_COMPLETION, CallKind.EMBEDDING, CallKind.RESPONSES})


def _estimated_input(call_kind: CallKind, messages: object, request: Mapping[str, Any]) -> tuple[object, object]:
    """The ``(messages, input texts)`` an estimate counts. A text completion's prompts are counted as
    the texts they are: LiteLLM wraps each in a user message (1.106.12), and counted as chat messages
    they would be billed the framing tokens of a chat message, which a completions endpoint never
    adds (7 more than the 161 of a prompt, measured): the estimate would no longer be a lower bound."""
    if call_kind is CallKind.TEXT_COMPLETION and isinstance(messages, list) and messages:
        prompts = [get_field(m, "content") for m in messages]
        if all(isinstance(p, str) for p in prompts):
            return None, prompts
    return messages, request.get("input")


def _chat_messages(call_kind: CallKind, messages: object) -> object:
    """The messages to estimate from: none for an embedding. LiteLLM wraps its input in chat messages
    (measured on 1.106), which would count each text with a message's framing, and token ids not at
    all; its ``input`` is estimated instead."""
    return None if call_kind is CallKind.EMBEDDING else messages


_PRICED_SERVICE_TIERS = frozenset({"flex", "balanced", "priority", "fast", "ultrafast"})
"""Tiers LiteLLM's map may price apart (``input_cost_per_token_flex``...), as LiteLLM 1.106 names them."""
_STANDARD_SERVICE_TIERS = frozenset({"default", "standard"})


_GEMINI_TRAFFIC_TIERS = {"ON_DEMAND_PRIORITY": "priority", "FLEX": "flex", "BATCH": "flex", "ON_DEMAND_FLEX": "flex"}
"""Gemini's ``usageMetadata.trafficType`` as the tier it bills, as LiteLLM 1.106 maps it (other types: standard)."""


def billed_service_tier(call_details: Mapping[str, Any], response_obj: Any) -> str | None:
    """The service tier a call was billed at, as LiteLLM's ``completion_cost`` resolves it: the tier the
    response says served the call (Gemini says it in its traffic type), else the one the request asked
    for (``auto`` is no tier)."""
    served = get_field(response_obj, "service_tier")
    if not isinstance(served, str):
        served = get_field(usage_block(response_obj), "service_tier")
    if not isinstance(served, str):
        specific = get_field(private_field(response_obj, "_hidden_params"), "provider_specific_fields")
        traffic = get_field(specific, "traffic_type")
        if traffic:
            served = _GEMINI_TRAFFIC_TIERS.get(str(traffic).upper(), "default")
    if isinstance(served, str):
        if served.lower() in _PRICED_SERVICE_TIERS:
            return served.lower()
        if served.lower() in _STANDARD_SERVICE_TIERS:
            return None
    optional = call_details.get("optional_params")
    requested = optional.get("service_tier") if isinstance(optional, Mapping) else None
    if requested is None:
        requested = call_details.get("service_tier")
    return requested if isinstance(requested, str) and requested.lower() != "auto" else None


def litellm_pricing_name(call_details: Mapping[str, Any] | None) -> str | None:
    """The name LiteLLM prices a call's tokens under when it is not the model's, or ``None``: as
    ``completion_cost`` chooses it (``select_model_name_for_cost_calc``, 1.106.12).

    - A Router deployment with prices of its own (``input_cost_per_token``... in its ``litellm_params``
      or its ``model_info``): a Router keeps them in ``litellm.model_cost`` under the deployment's
      ``model_info.id``, not under the model's name.
    - Else the ``base_model`` the caller named (an Azure deployment: ``azure/gpt-4o``), in the call's
      ``litellm_params`` or its Router deployment's ``model_info``.

    A call LiteLLM did not price itself (a stream without usage, an abandoned or timed-out call, a usage
    block that could not be believed) is priced from its counts: without this name, at the model's list
    price, or not at all for a deployment name LiteLLM does not know.
    """
    if not isinstance(call_details, Mapping):
        return None
    params = call_details.get("litellm_params")
    if not isinstance(params, Mapping):
        return None
    try:
        import litellm
        from litellm.litellm_core_utils.litellm_logging import use_custom_pricing_for_model
        from litellm.utils import get_base_model_from_metadata

        if use_custom_pricing_for_model(dict(params)):
            for key in ("litellm_metadata", "metadata"):
                model_id = get_field(get_field(params.get(key), "model_info"), "id")
                if isinstance(model_id, str) and model_id and isinstance(litellm.model_cost.get(model_id), Mapping):
                    return model_id
            return None
        base_model = get_base_model_from_metadata(call_details)
    except Exception:
        return None
    return base_model if isinstance(base_model, str) and base_model else None


def request_tools(call_details: Mapping[str, Any]) -> object:
    """The tool definitions a chat request sent, from LiteLLM's call details, or ``None``.

    A provider bills them as input (30 plain fields: about 670 tokens beside a 9-token question), so an
    estimate without them would bill a small part of the prompt.
    """
    optional = call_details.get("optional_params")
    tools = optional.get("tools") if isinstance(optional, Mapping) else None
    return tools if tools is not None else call_details.get("tools")


def request_system(call_details: Mapping[str, Any]) -> object:
    """A system prompt a request sent beside its messages, or ``None``: Anthropic's ``/v1/messages``
    (``litellm.anthropic_messages(system=...)``) and the Responses API (``aresponses(instructions=...)``)
    take it as a parameter of their own, which LiteLLM keeps in the call's ``optional_params``
    (1.106.12); ``acompletion`` keeps it among the messages."""
    optional = call_details.get("optional_params")
    for name in ("system", "instructions"):
        system = optional.get(name) if isinstance(optional, Mapping) else None
        if system is None:
            system = call_details.get(name)
        if system is not None:
            return system
    return None


def with_system_prompt(messages: object, system: object) -> object:
    """``messages`` with ``system`` first, for an estimate of what was sent: the provider bills it as input
    (a long system prompt is often most of it). Unchanged when there is none, or the messages hold one."""
    if not system or not isinstance(messages, list):
        return messages
    if any(get_field(m, "role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]


def _sent_input(messages: object, input_: object) -> bool:
    """Whether the request carried something a provider bills input tokens for."""
    for value in (messages, input_):
        if isinstance(value, str | Sequence) and not isinstance(value, bytes) and len(value) > 0:
            return True
    return False


def price_refused_attempt(pending: PendingCall, meta: ModelMetadata | None, *, raised: bool) -> TokenCallRecord | None:
    """The record of an unlogged attempt of a call LiteLLM retried itself that failed before it could
    time out (see :func:`~turnledger.call_details.failed_before_timeout`): flagged ``provider_error``,
    not billed, as an attempt whose HTTP error answer the call details show. ``None`` for any other
    attempt, priced as an abandoned call is. ``raised``: a later attempt started.

    Only a request that is no stream: a stream's timeout may be another (``stream_timeout``).
    """
    if pending.stream or not failed_before_timeout(pending.call_details, pending.request_duration_ms, raised=raised):
        return None
    return _not_billed_record(pending, meta)


def _attempt_request_id(pending: PendingCall) -> str | None:
    """The request id of the answer this call (or attempt) got, when LiteLLM kept its headers in the
    call details (the openai SDK path writes them on a success status, never for an error answer):
    headers there that are not those it started with (an earlier attempt's, ``headers_at_start``) were
    written after it started. A superseded attempt is read as the next one starts, before its request."""
    details = pending.call_details
    headers = details.get("response_headers") if details is not None else None
    return headers_request_id(headers) if headers is not pending.headers_at_start else None


def _not_billed_record(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord:
    """A call the provider did not bill: refused with an HTTP error answer, or never had."""
    return TokenCallRecord(
        call_id=pending.call_id,
        model=pending.model,
        provider=pending.provider,
        call_kind=pending.call_kind,
        status=CallStatus.ABANDONED,
        cost_usd=Decimal(0),
        cost_source=CostSource.NOT_BILLED,
        stream=pending.stream,
        started_at=pending.started_at,
        provider_request_id=_attempt_request_id(pending),
        model_ref=meta.model_ref if meta else None,
        model_id=meta.model_id if meta else None,
        display_name=meta.display_name if meta else None,
        flags=(RecordFlag.NO_CALLBACK, RecordFlag.PROVIDER_ERROR),
    )


def price_abandoned_call(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord:
    """The record of a call that never reported an end: kept, flagged, its input estimated.

    Prompt tokens are estimated from the request's messages (or embedding input) with
    ``litellm.token_counter``. What the caller received is not visible here (LiteLLM fires nothing
    for a stream broken off), so completion tokens are 0 and the record says so with
    ``completion_not_seen``: the cost is a lower bound. Status stays ``abandoned``.

    A call the provider refused (an HTTP error answer in LiteLLM's call details, see
    :func:`~turnledger.call_details.provider_refused`) was not billed: it is flagged
    ``provider_error``, with no tokens and a cost of exactly 0 (``not_billed``), as a logged failure
    without usage is. A customer is not charged for a request the provider turned down.
    """
    if provider_refused(pending.call_details):
        return _not_billed_record(pending, meta)
    flags: list[RecordFlag] = [RecordFlag.NO_CALLBACK]
    counts = TokenCounts()
    cost: Decimal | None = None
    source = CostSource.NONE
    request = pending.request if isinstance(pending.request, Mapping) else {}
    try:
        messages, input_texts = _estimated_input(
            pending.call_kind,
            with_system_prompt(_chat_messages(pending.call_kind, request.get("messages")), request.get("system")),
            request,
        )
        counts = estimate_counts(
            pending.model,
            messages=messages,
            input_texts=input_texts,
            tools=request.get("tools"),
        )
    except Exception as exc:
        flags.append(RecordFlag.PRICING_ERROR)
        warn_once(
            "estimate",
            "turnledger could not estimate an abandoned call to %s (%s)",
            pending.model,
            type(exc).__name__,
            detail=f"{pending.provider}/{pending.model}:{type(exc).__name__}",
        )
    else:
        flags.extend(counts.flags)
        flags.append(RecordFlag.COMPLETION_NOT_SEEN)
        if counts.prompt_tokens > 0:
            cost, source, more = price_counts(
                counts,
                model=pending.model,
                provider=pending.provider,
                call_kind=pending.call_kind,
                price_table=pending.price_table,
                service_tier=billed_service_tier(request, None),
                priced_as=litellm_pricing_name(pending.call_details),
            )
            flags.extend(more)
            if cost is not None:
                source = CostSource.ESTIMATED
    return TokenCallRecord(
        call_id=pending.call_id,
        model=pending.model,
        provider=pending.provider,
        call_kind=pending.call_kind,
        status=CallStatus.ABANDONED,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.total_tokens,
        cost_usd=cost,
        cost_source=source,
        stream=pending.stream,
        started_at=pending.started_at,
        model_ref=meta.model_ref if meta else None,
        model_id=meta.model_id if meta else None,
        display_name=meta.display_name if meta else None,
        usage_estimated=counts.estimated,
        provider_request_id=_attempt_request_id(pending),
        flags=tuple(dict.fromkeys(flags)),
    )


_NOT_THIS_ANSWERS_PRICE = frozenset({"response_cost", "cache_hit"})
"""Call-details keys that belong to another attempt than the answer's: an earlier attempt's logged
failure set ``response_cost`` to 0, and a cache hit has no attempt."""


def price_unlogged_answer(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord | None:
    """The record of an attempt LiteLLM never logged although the provider answered it, priced from
    the usage of that answer as LiteLLM's call details hold it; ``None`` when they hold no answer of
    this attempt's (the caller then estimates it as an abandoned call).

    An ``acompletion`` that LiteLLM retries itself (1.106.12) runs its later attempts outside the
    logging wrapper: one that succeeds returns its answer, with usage, and is never logged. The
    answer an earlier attempt left in the shared details (``answer_at_start``) is not this attempt's,
    so it is never priced twice. A stream's answer is not there until it is read to the end.

    Its ``provider_request_id`` is the provider's request-id header, as every record's: LiteLLM keeps
    the headers of an answer it got through the openai SDK (the OpenAI format) in the details
    (``response_headers``), those of an answer through its own HTTP handler (DeepSeek, Anthropic,
    measured on 1.106.12) nowhere but in the response it returned to the caller. Then it is ``None``
    (unknown), never the answer body's ``id`` nor headers an earlier attempt left there.
    """
    details = pending.call_details
    if pending.stream or details is None or details.get("original_response") is pending.answer_at_start:
        return None
    answer = answer_in_details(details)
    if answer is None:
        return None
    counts = normalize_usage(answer)
    if not counts.present:
        return None
    kwargs = {key: value for key, value in details.items() if key not in _NOT_THIS_ANSWERS_PRICE}
    cost, source, flags = price_call(
        kwargs,
        answer,
        counts,
        model=pending.model,
        provider=pending.provider,
        call_kind=pending.call_kind,
        price_table=pending.price_table,
    )
    return TokenCallRecord(
        call_id=pending.call_id,
        model=pending.model,
        provider=pending.provider,
        call_kind=pending.call_kind,
        status=CallStatus.SUCCESS,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.total_tokens,
        cached_tokens=counts.cached_tokens,
        cache_creation_tokens=counts.cache_creation_tokens,
        cache_creation_1h_tokens=counts.cache_creation_1h_tokens,
        reasoning_tokens=counts.reasoning_tokens,
        image_input_tokens=counts.image_input_tokens,
        image_output_tokens=counts.image_output_tokens,
        audio_input_tokens=counts.audio_input_tokens,
        audio_output_tokens=counts.audio_output_tokens,
        cost_usd=cost,
        cost_source=source,
        stream=pending.stream,
        started_at=pending.started_at,
        provider_request_id=_attempt_request_id(pending),
        model_ref=meta.model_ref if meta else None,
        model_id=meta.model_id if meta else None,
        display_name=meta.display_name if meta else None,
        flags=tuple(dict.fromkeys([RecordFlag.NO_CALLBACK, *counts.flags, *flags])),
    )


# -- stages that call LiteLLM ------------------------------------------------------------------------


def _completion_cost(kwargs: Mapping[str, Any], response_obj: Any, model: str, provider: str | None) -> float:
    import litellm

    optional = kwargs.get("optional_params")
    opts: Mapping[str, Any] = optional if isinstance(optional, Mapping) else {}
    call_type = kwargs.get("call_type")
    extra: dict[str, Any] = {}
    if isinstance(call_type, str) and call_type:
        extra["call_type"] = call_type
    for key in ("size", "quality", "n"):
        if opts.get(key) is not None:
            extra[key] = opts[key]
    # The response's own model names what was billed (an Azure deployment answers with its base model).
    response_model = getattr(response_obj, "model", None)
    return float(
        litellm.completion_cost(
            completion_response=response_obj,
            model=None if isinstance(response_model, str) and response_model else model,
            custom_llm_provider=provider,
            **extra,
        )
    )


def _cost_per_token(
    counts: TokenCounts, model: str, provider: str | None, call_kind: CallKind, service_tier: str | None
) -> Decimal:
    import litellm
    from litellm.types.utils import Usage

    usage = Usage(
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.total_tokens,
        # Audio and image tokens have rates of their own (gpt-4o-audio-preview's audio input costs 16
        # times its text input): left out, LiteLLM would price them as text.
        prompt_tokens_details={
            "cached_tokens": counts.cached_tokens,
            "cache_creation_tokens": counts.cache_creation_tokens,
            "cache_creation_token_details": {
                "ephemeral_5m_input_tokens": counts.cache_creation_5m_tokens,
                "ephemeral_1h_input_tokens": counts.cache_creation_1h_tokens,
            },
            "audio_tokens": counts.audio_input_tokens,
            "image_tokens": counts.image_input_tokens,
            # Which of those were cache reads: without it LiteLLM bills them as fresh audio too.
            "cached_tokens_details": {
                "audio_tokens": counts.cached_audio_tokens,
                "image_tokens": counts.cached_image_tokens,
            },
        },
        completion_tokens_details={
            "reasoning_tokens": counts.reasoning_tokens,
            "audio_tokens": counts.audio_output_tokens,
            "image_tokens": counts.image_output_tokens,
        },
    )
    call_type = "embedding" if call_kind is CallKind.EMBEDDING else "completion"
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=model, custom_llm_provider=provider, usage_object=usage, call_type=call_type, service_tier=service_tier
    )
    prompt_dec = decimal_from_litellm(prompt_cost)
    completion_dec = decimal_from_litellm(completion_cost)
    if prompt_dec is None or completion_dec is None:
        raise ValueError("cost_per_token returned a non-number")
    # Each half is read (and de-noised) on its own, then summed exactly, in MONEY_CONTEXT.
    return MONEY_CONTEXT.add(prompt_dec, completion_dec)


_NOT_MAPPED_HINTS = ("not mapped", "isn't mapped", "not found in cost map", "does not exist in passed")
_UNMAPPED_MAX = 4096
_unmapped_lock = threading.Lock()
_unmapped: dict[tuple[str, str | None, str], tuple[int, int]] = {}
"""(stage, provider, model) -> the identity and size of ``litellm.model_cost`` when LiteLLM said it
has no price. An unknown model otherwise pays for two failing LiteLLM lookups (~270 us) on every
call; a refreshed or grown map (``register_model``, :func:`~turnledger.refresh_price_map`) asks again."""


def _map_version() -> tuple[int, int]:
    import litellm

    cost_map = litellm.model_cost
    return id(cost_map), len(cost_map)


def _run_stage(stage: str, model: str, provider: str | None, flags: list[RecordFlag], fn: Any, *args: Any) -> Any:
    """Run one LiteLLM stage; a raise is logged once per stage, model and cause (past
    ``_logging.MAX_DETAILED_CAUSES`` models, once per stage for the rest), and the chain goes on."""
    key = (stage, provider, model)
    known_unmapped = _unmapped.get(key)
    if known_unmapped is not None and known_unmapped == _map_version():
        return None
    try:
        return fn(*args)
    except Exception as exc:
        text = str(exc).lower()
        if type(exc).__name__ == "ModelNotMappedError" or any(h in text for h in _NOT_MAPPED_HINTS):
            # LiteLLM not knowing a model is an answer ("cannot price"), not a fault.
            with _unmapped_lock:
                if len(_unmapped) >= _UNMAPPED_MAX:
                    _unmapped.clear()
                first = key not in _unmapped
                _unmapped[key] = _map_version()
            if first:
                logger.debug("turnledger: LiteLLM's %s has no price for %s/%s", stage, provider, model)
            return None
        _add(flags, RecordFlag.PRICING_ERROR)
        warn_once(
            f"pricing:{stage}",
            "turnledger: pricing stage %s failed for %s (%s)",
            stage,
            model,
            type(exc).__name__,
            detail=f"{provider}/{model}:{type(exc).__name__}",
        )
        return None


# -- helpers -------------------------------------------------------------------------------------------


MAX_CALL_COST_USD = Decimal(1_000_000)
"""The largest cost believed for one call. The dearest real calls cost tens of dollars (a million
output tokens at the highest listed rate is about $600): a million is far past anything real. A larger
figure is a fault (a rate entered per million tokens as per token, a wrapped-around count priced by a
stage that read the raw block), and past about $9.2 trillion its micro-USD do not fit the 64-bit
column, which would refuse the turn's good calls with it."""

MIN_CALL_COST_USD = Decimal("1e-30")
"""The smallest cost other than 0 believed for one call. The cheapest token is billed about 1e-10 USD;
a figure sent as text or as a Decimal can be far smaller (``1e-20000``), and PostgreSQL's ``numeric``
holds at most 16,383 digits after the point: the database would refuse the whole turn."""


_COST_CONTEXT = MONEY_CONTEXT.copy()
"""MONEY_CONTEXT's settings in a copy of its own, so the status flags rounding sets never land on the shared one."""


_ZERO = Decimal(0)
_FLOAT_SURELY_BELIEVABLE_FROM = float(MIN_CALL_COST_USD) * 10
_FLOAT_SURELY_BELIEVABLE_UNTIL = float(MAX_CALL_COST_USD) / 2
"""Float costs in this range are believable whatever rounding to 15 digits makes of them (see _accept)."""
"""Compared against as a Decimal: a Decimal compared with the int 0 converts it each time (twice as slow)."""


def _believable(cost: Decimal | None, flags: list[RecordFlag], model: str, from_float: bool = False) -> Decimal | None:
    """``cost`` (to the 60 significant digits of money arithmetic), or ``None`` (flagged) when it is
    negative, above :data:`MAX_CALL_COST_USD` or, not 0, below :data:`MIN_CALL_COST_USD`.

    ``from_float``: ``cost`` is what ``money._from_float`` made of a float, which rounding to 60 digits
    leaves as it is (at most 60 digits, an exponent within a few hundred of 0): not rounded again,
    1,200 instructions an event (callgrind)."""
    if cost is None:
        return None
    if cost < _ZERO:
        _add(flags, RecordFlag.NEGATIVE_COST)
        return None
    if not from_float:
        cost = _COST_CONTEXT.plus(cost)
    if cost > MAX_CALL_COST_USD or _ZERO < cost < MIN_CALL_COST_USD:
        _add(flags, RecordFlag.IMPLAUSIBLE_COST)
        warn_once("pricing:implausible", "turnledger: discarded an implausible cost for %s", model, detail=model)
        return None
    return cost


_BILLED_BEYOND_TOKENS = frozenset(
    {CallKind.IMAGE_GENERATION, CallKind.TRANSCRIPTION, CallKind.SPEECH, CallKind.RERANK, CallKind.OCR}
)
"""Call kinds billed by what token counts do not show (images, audio seconds, characters, queries, pages):
their 0 tokens say nothing about their price. LiteLLM prices an OCR call of a model without
``ocr_cost_per_page`` at 0.0 (1.106.12, with a warning): unknown, not free."""


def _zero_is_a_price(counts: TokenCounts, call_kind: CallKind, model: str, provider: str | None) -> bool:
    """Whether a LiteLLM stage's ``0`` means free, not "could not price".

    A call billed by tokens that used none costs nothing. LiteLLM also answers 0 when it priced
    nothing: tokens at a rate it lacks, an image it could not size, a transcription whose duration it
    could not read (without ``soundfile`` installed, measured on 1.106: whisper-1 at 0 seconds). Then
    only a model its map lists at zero rates is free.
    """
    beyond_tokens = call_kind in _BILLED_BEYOND_TOKENS
    if not beyond_tokens and not counts.used_tokens and not _tokens_unknown(counts):
        return True
    return _litellm_lists_free(model, provider, by_tokens=not beyond_tokens)


def _tokens_unknown(counts: TokenCounts) -> bool:
    """Whether no token was read only because the block's counts could not be believed (every one
    negative, wrapped around or unreadable): the call's tokens, and so its price, are unknown, not 0."""
    return counts.count_discarded and not counts.used_tokens


def _litellm_lists_free(model: str, provider: str | None, *, by_tokens: bool = True) -> bool:
    """Whether LiteLLM's price map lists ``model`` as free: zero input and output token rates, or, for a
    call not billed by tokens, every rate it lists (per second, per character, per image...) zero."""
    if not model:
        return False
    import litellm

    cost_map = litellm.model_cost
    entry = cost_map.get(f"{provider}/{model}") if provider else None
    if entry is None:
        entry = cost_map.get(model)
    if not isinstance(entry, Mapping):
        return False
    if by_tokens:
        rates = [entry.get("input_cost_per_token"), entry.get("output_cost_per_token")]
        return entry.get("input_cost_per_token") is not None and all(r in (None, 0) for r in rates)
    listed = [v for k, v in entry.items() if "cost_per" in k and v is not None]
    # A rate that is not a plain number (a tiered table) is not read as zero.
    return bool(listed) and all(type(v) in (int, float) and v == 0 for v in listed)


def _litellm_said_unmapped(kwargs: Mapping[str, Any]) -> bool:
    """Whether LiteLLM, pricing this very event, failed because it does not know the model.

    Its standard logging payload keeps the reason (``"This model isn't mapped yet..."``); asking
    ``cost_per_token`` again would only repeat it, at ~190 us an event.
    """
    if kwargs.get("response_cost") is not None:
        return False
    payload = kwargs.get("standard_logging_object")
    info = payload.get("response_cost_failure_debug_info") if isinstance(payload, Mapping) else None
    error = info.get("error_str") if isinstance(info, Mapping) else None
    return isinstance(error, str) and any(h in error.lower() for h in _NOT_MAPPED_HINTS)


def _images_generated(kwargs: Mapping[str, Any], response_obj: Any) -> int:
    data = get_field(response_obj, "data")
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return len(data)
    optional = kwargs.get("optional_params")
    n = optional.get("n") if isinstance(optional, Mapping) else None
    return n if isinstance(n, int) and n > 0 else 1


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _add(flags: list[RecordFlag], flag: RecordFlag) -> None:
    if flag not in flags:
        flags.append(flag)

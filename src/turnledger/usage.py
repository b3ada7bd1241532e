"""Provider usage blocks -> normalized token counts.

Normalized counts follow OpenAI's convention, which LiteLLM normalizes to: ``prompt_tokens``
includes cache reads and cache writes; ``completion_tokens`` includes reasoning. Provider families
that keep the parts apart are folded into it here, so a token is never counted twice nor dropped:

- OpenAI, Azure, OpenRouter, DeepSeek (and every LiteLLM ``Usage``): ``prompt_tokens`` already
  includes cached tokens (``prompt_tokens_details.cached_tokens``; DeepSeek's
  ``prompt_cache_hit_tokens``). LiteLLM folds Anthropic/Bedrock cache reads and writes into
  ``prompt_tokens`` too (measured on 1.106: 100 input + 1000 read + 300 written -> 1400).
- Raw Anthropic (``input_tokens`` beside ``cache_read_input_tokens`` / ``cache_creation_input_tokens``)
  and raw Bedrock Converse (``inputTokens``, ``cacheReadInputTokens``, ``cacheWriteInputTokens``):
  input excludes the cache, so prompt = input + read + write.
- Raw Gemini ``usageMetadata``: ``promptTokenCount`` includes ``cachedContentTokenCount``;
  ``thoughtsTokenCount`` is *outside* ``candidatesTokenCount``, so completion = candidates + thoughts.

Then fresh input = prompt - cache read - cache write. A count that is not a non-negative integer is
read as far as it can be and flagged ``malformed_usage``, never trusted blindly and never negative;
parts that exceed their whole (cache > prompt, reasoning > completion) raise the whole and are flagged.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from turnledger.records import RecordFlag, _new_object


@dataclass(slots=True)
class TokenCounts:
    """Normalized token counts of one call."""

    prompt_tokens: int = 0
    """All input tokens, cache reads and writes included."""
    completion_tokens: int = 0
    """All output tokens, reasoning included."""
    total_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens read from the prompt cache."""
    cache_creation_tokens: int = 0
    """Input tokens written to the prompt cache (5-minute and 1-hour together)."""
    cache_creation_1h_tokens: int = 0
    """The 1-hour part of ``cache_creation_tokens``."""
    reasoning_tokens: int = 0
    """The reasoning part of ``completion_tokens``."""
    image_input_tokens: int = 0
    """The image part of ``prompt_tokens``."""
    image_output_tokens: int = 0
    """The image part of ``completion_tokens``."""
    audio_input_tokens: int = 0
    """The audio part of ``prompt_tokens`` (billed at many times the text rate)."""
    audio_output_tokens: int = 0
    """The audio part of ``completion_tokens``."""
    cached_audio_tokens: int = 0
    """The audio part of ``cached_tokens`` (OpenAI's ``cached_tokens_details``), which is also inside
    ``audio_input_tokens``: those tokens are billed as cache reads, not as fresh audio."""
    cached_image_tokens: int = 0
    """The image part of ``cached_tokens``, likewise inside ``image_input_tokens``."""
    present: bool = False
    """Whether the response carried a usage block at all."""
    inline_cost: Any = None
    """A cost the provider sent inline in the usage block (OpenRouter's ``usage.cost``), as sent."""
    estimated: bool = False
    """Whether the counts were estimated locally (the provider reported none)."""
    count_discarded: bool = False
    """Whether a count in the block could not be believed and was read as 0 (see :func:`read_count`).
    Parts that merely disagree with their total are flagged ``malformed_usage`` too, but not this."""
    flags: list[RecordFlag] = field(default_factory=list)

    @property
    def fresh_prompt_tokens(self) -> int:
        """Input tokens neither read from nor written to the cache."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_creation_tokens)

    @property
    def cache_creation_5m_tokens(self) -> int:
        """Cache writes with the default (5-minute) lifetime."""
        return max(0, self.cache_creation_tokens - self.cache_creation_1h_tokens)

    @property
    def used_tokens(self) -> bool:
        return self.prompt_tokens > 0 or self.completion_tokens > 0

    def flag(self, flag: RecordFlag) -> None:
        if flag not in self.flags:
            self.flags.append(flag)


def get_field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; ``None`` when absent (LiteLLM hands both)."""
    if obj is None:
        return None
    if type(obj) is dict or isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


_NO_FIELDS: Mapping[str, Any] = {}
"""The fields of ``None``: a plain dict, typed read-only (a ``MappingProxyType`` is a call deeper on
each of the half dozen names read from it per event: 1,100 instructions an event, callgrind)."""


MODEL_CLASSES: set[type] = set()
"""Classes seen to be pydantic models (a few LiteLLM response and usage classes). ``isinstance`` against
``BaseModel`` runs its ABC metaclass's ``__instancecheck__``, 800 instructions (callgrind), three times
an event; a set lookup is a tenth of that. Only ever a subclass: a class stays one."""


def is_model(obj: object) -> bool:
    """``isinstance(obj, BaseModel)``, read first from the classes already seen."""
    cls = type(obj)
    if cls in MODEL_CLASSES:
        return True
    if isinstance(obj, BaseModel):
        if len(MODEL_CLASSES) < 256:  # bounded: an application may make model classes at run time
            MODEL_CLASSES.add(cls)
        return True
    return False


def fields_of(obj: Any) -> Mapping[str, Any]:
    """A usage block or details object as a read-only mapping of its fields (empty for ``None``).

    LiteLLM hands pydantic models; reading a name one lacks goes through pydantic's slow
    ``__getattr__`` (an exception per miss), and the callback reads a dozen such names per event,
    so a model is read through its ``__dict__`` and extras instead.
    """
    if obj is None:
        return _NO_FIELDS
    if type(obj) is dict:
        return obj
    if type(obj) in MODEL_CLASSES or is_model(obj):
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    if isinstance(obj, Mapping):
        return obj
    fields = getattr(obj, "__dict__", None)
    return fields if isinstance(fields, dict) else _NO_FIELDS


def private_field(obj: Any, name: str) -> Any:
    """``obj.<name>`` for an underscored attribute, ``None`` when absent.

    A pydantic model keeps its private attributes (LiteLLM's ``_hidden_params``) apart, and reading
    one as an attribute goes through pydantic's ``__getattr__`` (1.7 us, measured; 0.1 us this way).
    """
    if type(obj) in MODEL_CLASSES or is_model(obj):
        private = obj.__pydantic_private__
        if private and name in private:
            return private[name]
    return getattr(obj, name, None)


def _first(obj: Any, *names: str) -> Any:
    """The first of ``names`` that ``obj`` carries with a value other than ``None``."""
    for name in names:
        value = get_field(obj, name)
        if value is not None:
            return value
    return None


MAX_TOKEN_COUNT = 10**9
"""The largest count believed for one call. The largest context windows hold about 10 million tokens and
a batch of 2,048 embedding inputs about 17 million: a billion is 60 times anything real. Garbage
counts are mostly integer wrap-arounds (an unsigned 32-bit -1 is 4.3 billion, a signed 32-bit maximum
2.1 billion): believed, they would be billed as such (LiteLLM prices them at tens of thousands of
dollars), and past 2**63 could not be stored at all, which would refuse the turn's good calls with it."""


def read_count(counts: TokenCounts, value: Any) -> int:
    """A usage count as a non-negative int; anything else is flagged and read as far as possible.

    A count that cannot be believed (negative, not a number, above :data:`MAX_TOKEN_COUNT`) is read as 0.
    """
    # The usual count first, by its exact type (a bool's type is not int): about ten counts an event.
    if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    if value is None:
        return 0
    if isinstance(value, bool):
        return _discarded(counts)
    if isinstance(value, int):
        if not 0 <= value <= MAX_TOKEN_COUNT:
            return _discarded(counts)
        return value
    if isinstance(value, float):
        number = value
    else:
        # A string (or anything else) is malformed even when it can be read as a number.
        counts.flag(RecordFlag.MALFORMED_USAGE)
        try:
            number = float(str(value).strip())
        except ValueError:
            return _discarded(counts)
    # NaN fails the comparison; inf and absurd counts exceed the bound.
    if not 0 <= number <= MAX_TOKEN_COUNT:
        return _discarded(counts)
    if number != int(number):
        counts.flag(RecordFlag.MALFORMED_USAGE)
    return int(number)


def _discarded(counts: TokenCounts) -> int:
    counts.flag(RecordFlag.MALFORMED_USAGE)
    counts.count_discarded = True
    return 0


_USAGE_KEYS = ("prompt_tokens", "input_tokens", "inputTokens", "promptTokenCount")


def usage_block(response_obj: Any) -> Any:
    """The usage block of a LiteLLM response object or dict (or a bare usage block), or ``None``."""
    if response_obj is None:
        return None
    if type(response_obj) in MODEL_CLASSES or is_model(response_obj):
        # Read in place: fields_of would merge the model's fields and extras into a new dict.
        fields: Mapping[str, Any] = response_obj.__dict__
        extra = response_obj.__pydantic_extra__
        usage = fields.get("usage")
        if usage is None and extra:
            usage = extra.get("usage")
        if usage is None:
            usage = fields.get("usageMetadata")
            if usage is None and extra:
                usage = extra.get("usageMetadata")
    else:
        fields = fields_of(response_obj)
        usage = fields.get("usage")
        if usage is None:
            usage = fields.get("usageMetadata")
    if usage is None and not isinstance(response_obj, Mapping | BaseModel):
        usage = getattr(response_obj, "usage", None)  # a plain object with a ``usage`` property
    if usage is not None:
        return usage
    if isinstance(response_obj, Mapping) and any(k in response_obj for k in _USAGE_KEYS):
        return response_obj
    return None


def normalize_usage(response_obj: Any) -> TokenCounts:
    """Normalized counts from whatever LiteLLM handed the callback (never raises on odd shapes)."""
    return token_counts(usage_counts(response_obj))


UsualCounts = tuple[int, int, int, int, int, int, int, int, int, int, int]
"""The counts of a usual chat usage block (see :func:`usage_counts`), in :class:`TokenCounts`'s order:
prompt, completion, total, cached, cache creation, its 1-hour part, reasoning, image input, image
output, audio input, audio output."""

USUAL_COUNT_NAMES = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "reasoning_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "audio_input_tokens",
    "audio_output_tokens",
)
"""The fields of :class:`TokenCounts` (and of a record) that :data:`UsualCounts` holds, in its order."""

usual_counts_of: Callable[[TokenCounts], UsualCounts] = operator.attrgetter(*USUAL_COUNT_NAMES)
"""A :class:`TokenCounts`'s counts as :data:`UsualCounts` (the inverse of :func:`_usual_counts`, for
those counts)."""


def token_counts(counts: UsualCounts | TokenCounts) -> TokenCounts:
    """:func:`usage_counts`' answer as the :class:`TokenCounts` :func:`normalize_usage` gives."""
    return _usual_counts(counts) if isinstance(counts, tuple) else counts


def _usual_counts(counts: UsualCounts) -> TokenCounts:
    """The :class:`TokenCounts` of a usual chat usage block's counts, as its readers would give them.

    ``TokenCounts()`` with its fields stored here once each: its __init__ is a Python-level call from C
    storing 19 defaults, a dozen of them stored again (1,900 instructions an event, callgrind). Every
    field is set as __init__ sets it (the equivalence tests compare all of them, and would find one left
    unset). Class-level defaults (no slots) would save the stores but cost ~190 instructions on each
    later read of a field left at its default."""
    result: TokenCounts = _new_object(TokenCounts)
    (
        result.prompt_tokens,
        result.completion_tokens,
        result.total_tokens,
        result.cached_tokens,
        result.cache_creation_tokens,
        result.cache_creation_1h_tokens,
        result.reasoning_tokens,
        result.image_input_tokens,
        result.image_output_tokens,
        result.audio_input_tokens,
        result.audio_output_tokens,
    ) = counts
    result.cached_audio_tokens = 0
    result.cached_image_tokens = 0
    result.present = True
    result.inline_cost = None
    result.estimated = False
    result.count_discarded = False
    result.flags = []
    return result


def usage_counts(response_obj: Any) -> UsualCounts | TokenCounts:
    """:func:`normalize_usage`'s counts, those of a usual chat usage block as a plain tuple.

    A usual block (:data:`UsualCounts`) is one whose :class:`TokenCounts` would be made by
    :func:`_usual_counts`: present, every count believed, nothing flagged, no inline cost, no cached
    audio or image part. The callback stores those counts in its record straight from the tuple: a
    :class:`TokenCounts` made, read back and freed cost 2,100 instructions an event (build_record 38,400 ->
    36,300, callgrind)."""
    # usage_block's and fields_of's usual case, a LiteLLM response and its Usage (pydantic models of
    # classes already seen), read in place: two Python-level calls less an event.
    block = None
    if type(response_obj) in MODEL_CLASSES:
        block = response_obj.__dict__.get("usage")
        if block is None:
            extra = response_obj.__pydantic_extra__
            block = extra.get("usage") if extra else None
    if block is None:
        block = usage_block(response_obj)
        if block is None:
            return TokenCounts()
    if type(block) in MODEL_CLASSES:
        extra = block.__pydantic_extra__
        usage: Mapping[str, Any] = {**block.__dict__, **extra} if extra else block.__dict__
    # A tuple, not ``str | bytes | int | float``: that union is built anew on every call (0.2 us).
    elif isinstance(block, (str, bytes, int, float)):
        return TokenCounts()
    else:
        usage = fields_of(block)
    if type(usage) is dict:
        # The usual chat usage block (LiteLLM's Usage, its details None as a mocked answer has them, or
        # dicts or models of classes already seen, as OpenAI's answers have them), read here: no other
        # name can be in it, so what _read_openai_or_anthropic would read is known (a details object's
        # names it reads, of which the nested details must be None), and when every count is None or a
        # believable int and no part exceeds its whole, _check_invariants would change nothing but the
        # total. Anything else (a count to read_count, a part past its whole, a details object of
        # another kind or with extras) is left to the general readers, which say what is wrong with it.
        # normalize_usage on a real OpenAI answer (details of cached and reasoning tokens) 31,600 ->
        # 19,700 instructions, on a mocked one (no details) 12,600 -> 11,000 (callgrind, called directly).
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if (
            type(prompt) is int
            and 0 <= prompt <= MAX_TOKEN_COUNT
            and type(completion) is int
            and 0 <= completion <= MAX_TOKEN_COUNT
            and (total is None or (type(total) is int and 0 <= total <= MAX_TOKEN_COUNT))
            # No other name in it: LiteLLM's Usage has all five (prompt and completion found above),
            # which three membership tests tell for half what comparing its keys costs (900 instructions
            # against 1,700, callgrind).
            and (
                (
                    len(usage) == 5
                    and "total_tokens" in usage
                    and "prompt_tokens_details" in usage
                    and "completion_tokens_details" in usage
                )
                or usage.keys() <= _CHAT_USAGE_KEYS
            )
        ):
            usual = True
            cached: Any = 0
            creation: Any = 0
            image_in: Any = 0
            audio_in: Any = 0
            reasoning: Any = 0
            image_out: Any = 0
            audio_out: Any = 0
            details = usage.get("prompt_tokens_details")
            details_out = usage.get("completion_tokens_details")
            if details is not None:
                # fields_of's reading of a model of a class already seen without extras, or a dict.
                parts = (
                    details.__dict__
                    if type(details) in MODEL_CLASSES and not details.__pydantic_extra__
                    else details
                    if type(details) is dict
                    else _NO_FIELDS
                )
                if parts is _NO_FIELDS or (
                    parts.get("cache_creation_token_details") is not None
                    or parts.get("cached_tokens_details") is not None
                ):
                    usual = False
                cached = parts.get("cached_tokens")
                creation = parts.get("cache_creation_tokens")
                if creation is None:
                    creation = parts.get("cache_write_tokens")
                image_in = parts.get("image_tokens")
                audio_in = parts.get("audio_tokens")
                # read_count's usual cases: None is 0, a believable int is itself.
                if cached is None:
                    cached = 0
                elif type(cached) is not int or not 0 <= cached <= MAX_TOKEN_COUNT:
                    usual = False
                if creation is None:
                    creation = 0
                elif type(creation) is not int or not 0 <= creation <= MAX_TOKEN_COUNT:
                    usual = False
                if image_in is None:
                    image_in = 0
                elif type(image_in) is not int or not 0 <= image_in <= MAX_TOKEN_COUNT:
                    usual = False
                if audio_in is None:
                    audio_in = 0
                elif type(audio_in) is not int or not 0 <= audio_in <= MAX_TOKEN_COUNT:
                    usual = False
            if details_out is not None:
                parts = (
                    details_out.__dict__
                    if type(details_out) in MODEL_CLASSES and not details_out.__pydantic_extra__
                    else details_out
                    if type(details_out) is dict
                    else _NO_FIELDS
                )
                if parts is _NO_FIELDS:
                    usual = False
                reasoning = parts.get("reasoning_tokens")
                image_out = parts.get("image_tokens")
                audio_out = parts.get("audio_tokens")
                if reasoning is None:
                    reasoning = 0
                elif type(reasoning) is not int or not 0 <= reasoning <= MAX_TOKEN_COUNT:
                    usual = False
                if image_out is None:
                    image_out = 0
                elif type(image_out) is not int or not 0 <= image_out <= MAX_TOKEN_COUNT:
                    usual = False
                if audio_out is None:
                    audio_out = 0
                elif type(audio_out) is not int or not 0 <= audio_out <= MAX_TOKEN_COUNT:
                    usual = False
                usual = usual and reasoning + image_out + audio_out <= completion
            if usual and (details is None or (cached + creation <= prompt and image_in + audio_in <= prompt)):
                expected_total = prompt + completion
                counted = (
                    prompt,
                    completion,
                    expected_total,
                    cached,
                    creation,
                    0,
                    reasoning,
                    image_in,
                    image_out,
                    audio_in,
                    audio_out,
                )
                if total is None or total == expected_total:
                    return counted
                # A total that is not the sum of its parts: flagged, and read as the larger.
                counts = _usual_counts(counted)
                counts.total_tokens = max(total, expected_total)
                counts.flags.append(RecordFlag.MALFORMED_USAGE)
                return counts
    counts = TokenCounts()
    counts.present = True
    counts.inline_cost = usage.get("cost")
    if usage.get("promptTokenCount") is not None or usage.get("candidatesTokenCount") is not None:
        _read_gemini(counts, usage)
    elif usage.get("inputTokens") is not None or usage.get("outputTokens") is not None:
        _read_bedrock(counts, usage)
    else:
        _read_openai_or_anthropic(counts, usage)
    total = usage.get("total_tokens")
    _check_invariants(counts, total if total is not None else usage.get("totalTokens"))
    return counts


_CHAT_USAGE_KEYS = frozenset(
    {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"}
)
"""The names of a chat usage block that :func:`normalize_usage` can read without looking for any other."""

_ANTHROPIC_CACHE_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation")


def _null(usage: Mapping[str, Any], name: str) -> bool:
    """Whether ``usage`` names ``name`` and gives it no value (``"prompt_tokens": null``)."""
    return name in usage and usage[name] is None


def _read_openai_or_anthropic(counts: TokenCounts, usage: Mapping[str, Any]) -> None:
    # The counts are read through read_count, with its usual case written out in place: a count that
    # is absent (None) or a plain int within bounds (a dozen an event, a Python call each otherwise).
    get = usage.get
    prompt_raw = get("prompt_tokens")
    input_raw = get("input_tokens")
    # LiteLLM's ImageResponse usage carries prompt_tokens=0 beside the real input_tokens.
    use_input = prompt_raw is None or (prompt_raw == 0 and isinstance(input_raw, int) and input_raw > 0)
    completion_raw = get("completion_tokens")
    output_raw = get("output_tokens")
    use_output = completion_raw is None or (completion_raw == 0 and isinstance(output_raw, int) and output_raw > 0)

    # Details are often absent (None): their empty fields then without a call to fields_of (400
    # instructions each, callgrind).
    details = get("prompt_tokens_details")
    if details is None:
        details = get("input_tokens_details")
    prompt_details = _NO_FIELDS if details is None else fields_of(details)
    details = get("completion_tokens_details")
    if details is None:
        details = get("output_tokens_details")
    completion_details = _NO_FIELDS if details is None else fields_of(details)

    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = get("cache_read_input_tokens")
        if cached is None:
            cached = get("prompt_cache_hit_tokens")
    counts.cached_tokens = (
        0
        if cached is None
        else cached
        if type(cached) is int and 0 <= cached <= MAX_TOKEN_COUNT
        else read_count(counts, cached)
    )

    creation = prompt_details.get("cache_creation_tokens")
    if creation is None:
        creation = prompt_details.get("cache_write_tokens")
        if creation is None:
            creation = get("cache_creation_input_tokens")
    counts.cache_creation_tokens = (
        0
        if creation is None
        else creation
        if type(creation) is int and 0 <= creation <= MAX_TOKEN_COUNT
        else read_count(counts, creation)
    )

    details = prompt_details.get("cache_creation_token_details") or get("cache_creation")
    creation_details = _NO_FIELDS if details is None else fields_of(details)
    if creation_details:
        one_hour = read_count(counts, creation_details.get("ephemeral_1h_input_tokens"))
        five_min = read_count(counts, creation_details.get("ephemeral_5m_input_tokens"))
        if creation is None and (one_hour or five_min):
            counts.cache_creation_tokens = one_hour + five_min
        counts.cache_creation_1h_tokens = one_hour

    if use_input:
        counts.prompt_tokens = read_count(counts, input_raw)
        # Raw Anthropic keeps cache reads and writes out of input_tokens; OpenAI's Responses API
        # (input_tokens_details.cached_tokens) keeps them in.
        if any(get(k) is not None for k in _ANTHROPIC_CACHE_KEYS):
            counts.prompt_tokens += counts.cached_tokens + counts.cache_creation_tokens
    else:
        counts.prompt_tokens = (
            prompt_raw
            if type(prompt_raw) is int and 0 <= prompt_raw <= MAX_TOKEN_COUNT
            else read_count(counts, prompt_raw)
        )
    completion = output_raw if use_output else completion_raw
    counts.completion_tokens = (
        completion if type(completion) is int and 0 <= completion <= MAX_TOKEN_COUNT else read_count(counts, completion)
    )
    # An explicit null where a count belongs is malformed; an absent key (embeddings) is not.
    if (
        prompt_raw is None and input_raw is None and (_null(usage, "prompt_tokens") or _null(usage, "input_tokens"))
    ) or (
        completion_raw is None
        and output_raw is None
        and (_null(usage, "completion_tokens") or _null(usage, "output_tokens"))
    ):
        counts.flag(RecordFlag.MALFORMED_USAGE)

    if completion_details:
        value = completion_details.get("reasoning_tokens")
        counts.reasoning_tokens = (
            0
            if value is None
            else value
            if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT
            else read_count(counts, value)
        )
        value = completion_details.get("image_tokens")
        counts.image_output_tokens = (
            0
            if value is None
            else value
            if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT
            else read_count(counts, value)
        )
        value = completion_details.get("audio_tokens")
        counts.audio_output_tokens = (
            0
            if value is None
            else value
            if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT
            else read_count(counts, value)
        )
    if prompt_details:
        value = prompt_details.get("image_tokens")
        counts.image_input_tokens = (
            0
            if value is None
            else value
            if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT
            else read_count(counts, value)
        )
        value = prompt_details.get("audio_tokens")
        counts.audio_input_tokens = (
            0
            if value is None
            else value
            if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT
            else read_count(counts, value)
        )
        cached_details = prompt_details.get("cached_tokens_details")
        if cached_details is not None:
            cached_parts = fields_of(cached_details)
            counts.cached_audio_tokens = read_count(counts, cached_parts.get("audio_tokens"))
            counts.cached_image_tokens = read_count(counts, cached_parts.get("image_tokens"))


def _read_bedrock(counts: TokenCounts, usage: Mapping[str, Any]) -> None:
    counts.cached_tokens = read_count(counts, get_field(usage, "cacheReadInputTokens"))
    counts.cache_creation_tokens = read_count(counts, get_field(usage, "cacheWriteInputTokens"))
    fresh = read_count(counts, get_field(usage, "inputTokens"))
    counts.prompt_tokens = fresh + counts.cached_tokens + counts.cache_creation_tokens
    counts.completion_tokens = read_count(counts, get_field(usage, "outputTokens"))


def _read_gemini(counts: TokenCounts, usage: Mapping[str, Any]) -> None:
    counts.prompt_tokens = read_count(counts, get_field(usage, "promptTokenCount"))
    counts.cached_tokens = read_count(counts, get_field(usage, "cachedContentTokenCount"))
    counts.reasoning_tokens = read_count(counts, get_field(usage, "thoughtsTokenCount"))
    counts.completion_tokens = read_count(counts, get_field(usage, "candidatesTokenCount")) + counts.reasoning_tokens
    total = get_field(usage, "totalTokenCount")
    if total is not None:
        counts.total_tokens = read_count(counts, total)


def _check_invariants(counts: TokenCounts, total: Any) -> None:
    if total is not None:
        # read_count's usual case in place: a Python-level call less an event.
        counts.total_tokens = (
            total if type(total) is int and 0 <= total <= MAX_TOKEN_COUNT else read_count(counts, total)
        )
    if counts.cache_creation_1h_tokens > counts.cache_creation_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.cache_creation_tokens = counts.cache_creation_1h_tokens
    if counts.cached_tokens + counts.cache_creation_tokens > counts.prompt_tokens:
        # The parts cannot exceed the whole: keep every token, count it once, and say so.
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.prompt_tokens = counts.cached_tokens + counts.cache_creation_tokens
    if counts.image_input_tokens > counts.prompt_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.image_input_tokens = counts.prompt_tokens
    if counts.image_input_tokens + counts.audio_input_tokens > counts.prompt_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.audio_input_tokens = counts.prompt_tokens - counts.image_input_tokens
    if counts.cached_audio_tokens + counts.cached_image_tokens > counts.cached_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.cached_audio_tokens = min(counts.cached_audio_tokens, counts.cached_tokens)
        counts.cached_image_tokens = counts.cached_tokens - counts.cached_audio_tokens
    output_parts = counts.reasoning_tokens + counts.image_output_tokens + counts.audio_output_tokens
    if output_parts > counts.completion_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.completion_tokens = output_parts
    expected_total = counts.prompt_tokens + counts.completion_tokens
    if counts.total_tokens == 0 and total is None:
        counts.total_tokens = expected_total
    elif counts.total_tokens != expected_total:
        # A total below the parts is wrong; one above them may count tokens we cannot see
        # (server-side tool use), so it is kept, but both are worth a second look.
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.total_tokens = max(counts.total_tokens, expected_total)


# -- what a call returned (for estimating missing usage) ------------------------------------------


def response_text(response_obj: Any) -> str:
    """The text a chat, text or Responses API response returned (content and tool-call arguments), or ``""``.

    Used only to estimate tokens locally; it is never stored or logged.
    """
    choices = get_field(response_obj, "choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str | bytes):
        return _responses_output_text(get_field(response_obj, "output"))
    parts: list[str] = []
    for choice in choices:
        message = _first(choice, "message", "delta")
        text = get_field(message, "content") if message is not None else get_field(choice, "text")
        if isinstance(text, str):
            parts.append(text)
        tool_calls = get_field(message, "tool_calls")
        if isinstance(tool_calls, Sequence) and not isinstance(tool_calls, str | bytes):
            for call in tool_calls:
                function = get_field(call, "function")
                for piece in (get_field(function, "name"), get_field(function, "arguments")):
                    if isinstance(piece, str):
                        parts.append(piece)
    return "".join(parts)


def _responses_output_text(output: Any) -> str:
    """The text of a Responses API answer's ``output`` items (messages, function calls), or ``""``."""
    if not isinstance(output, Sequence) or isinstance(output, str | bytes):
        return ""
    parts: list[str] = []
    for item in output:
        content = get_field(item, "content")
        if isinstance(content, Sequence) and not isinstance(content, str | bytes):
            for part in content:
                text = get_field(part, "text")
                if isinstance(text, str):
                    parts.append(text)
        for name in ("name", "arguments"):  # a function call
            piece = get_field(item, name)
            if isinstance(piece, str):
                parts.append(piece)
    return "".join(parts)


def usage_missing(counts: TokenCounts, response_obj: Any) -> bool:
    """True when a call returned content yet reports no tokens at all.

    LiteLLM reports a stream to a custom ``api_base`` without ``stream_options.include_usage`` as
    0 tokens (measured on 1.106), which would otherwise read as a free call.
    """
    return not counts.used_tokens and bool(response_text(response_obj))


MAX_COUNTED_ITEMS = 4096
"""Chat messages, their content parts (in all) or embedding inputs an estimate tokenizes; past them, the
rest are estimated at the tokens per character of those counted. No provider takes a request this
large in one call (OpenAI's embeddings take 2,048 inputs), and tokenizing a million one by one held the
thread that reads the event, often the event loop, for 3 s (messages), 2 s (the parts of one message)
to 18 s (embedding inputs) (measured on litellm 1.106)."""


def _extrapolated(counted_tokens: int, counted_chars: int, rest_chars: int) -> int:
    """``counted_tokens`` plus the uncounted rest, at the same tokens per character (rounded up)."""
    if rest_chars <= 0 or counted_chars <= 0:
        return counted_tokens
    return counted_tokens + math.ceil(counted_tokens * rest_chars / counted_chars)


def _message_chars(message: object) -> int:
    content = get_field(message, "content")
    if isinstance(content, list):
        return 1 + sum(map(_part_chars, content))
    # One for the message itself: a message without content still has its framing tokens.
    return 1 + (len(content) if isinstance(content, str) else len(str(content)) if content is not None else 0)


def _part_chars(part: object) -> int:
    text = get_field(part, "text")
    return 1 + (len(text) if isinstance(text, str) else len(str(part)))


def _messages_head(messages: list[Any]) -> tuple[list[Any], bool]:
    """The messages an estimate tokenizes: at most :data:`MAX_COUNTED_ITEMS` messages holding at most as
    many content parts in all (the last one cut to its first parts), and whether any part was left out."""
    head: list[Any] = []
    parts_left = MAX_COUNTED_ITEMS
    for message in messages[:MAX_COUNTED_ITEMS]:
        content = get_field(message, "content")
        if isinstance(content, list):
            if len(content) > parts_left:
                if parts_left:
                    fields = message if isinstance(message, Mapping) else fields_of(message)
                    head.append({**fields, "content": content[:parts_left]})
                return head, True
            parts_left -= len(content)
        head.append(message)
    return head, len(messages) > MAX_COUNTED_ITEMS


def _count_messages(model: str, tokenizer: Any, messages: list[Any], tools: Any) -> int:
    import litellm

    head, cut = _messages_head(messages)
    count = functools.partial(
        litellm.token_counter,
        model=model,
        custom_tokenizer=tokenizer,
        messages=head,
        use_default_image_token_count=True,
    )
    counted = int(count())
    total = counted
    if cut:
        head_chars = sum(map(_message_chars, head))
        total = _extrapolated(counted, head_chars, sum(map(_message_chars, messages)) - head_chars)
    if isinstance(tools, Sequence) and not isinstance(tools, str | bytes) and tools:
        try:
            tool_tokens = int(count(tools=list(tools[:MAX_COUNTED_ITEMS]))) - counted
        except Exception:
            return total  # a tool definition the tokenizer cannot read: the messages are still worth counting
        # Tools past the bound at the counted tools' mean (no provider takes more than a few hundred).
        total += _extrapolated(tool_tokens, min(len(tools), MAX_COUNTED_ITEMS), len(tools) - MAX_COUNTED_ITEMS)
    return total


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def estimate_counts(
    model: str, messages: Any = None, input_texts: Any = None, completion_text: str = "", tools: Any = None
) -> TokenCounts:
    """Counts estimated with ``litellm.token_counter`` from the request and the returned text.

    ``tools``: the chat request's tool definitions, which the provider bills as input. Tools the
    tokenizer cannot read leave the estimate to the messages alone.
    Raises whatever the tokenizer raises; callers decide what an estimate failure means. Never
    waits for a tokenizer to be downloaded (see :mod:`turnledger.estimate_tokenizer`).
    """
    import litellm

    from turnledger.estimate_tokenizer import tokenizer_for

    tokenizer = tokenizer_for(model)
    counts = TokenCounts(present=False, estimated=True)
    counts.flag(RecordFlag.USAGE_ESTIMATED)
    if isinstance(messages, Sequence) and not isinstance(messages, str | bytes) and messages:
        # use_default_image_token_count: never fetch an image URL to measure it (no network here).
        counts.prompt_tokens = _count_messages(model, tokenizer, list(messages), tools)
    elif isinstance(input_texts, str) and input_texts:
        counts.prompt_tokens = int(litellm.token_counter(model=model, custom_tokenizer=tokenizer, text=input_texts))
    elif isinstance(input_texts, Sequence) and not isinstance(input_texts, bytes):
        # Embedding input: texts, or token ids already (one list of ints, or a list of such lists).
        if input_texts and all(_is_token_id(t) for t in input_texts):
            counts.prompt_tokens = len(input_texts)
        texts: list[str] = []
        for item in input_texts:
            if isinstance(item, str) and item:
                texts.append(item)
            elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and all(map(_is_token_id, item)):
                counts.prompt_tokens += len(item)
        text_tokens = sum(
            int(litellm.token_counter(model=model, custom_tokenizer=tokenizer, text=text))
            for text in texts[:MAX_COUNTED_ITEMS]
        )
        if len(texts) > MAX_COUNTED_ITEMS:
            head_chars = sum(map(len, texts[:MAX_COUNTED_ITEMS]))
            text_tokens = _extrapolated(text_tokens, head_chars, sum(map(len, texts[MAX_COUNTED_ITEMS:])))
        counts.prompt_tokens += text_tokens
    if completion_text:
        counts.completion_tokens = int(
            litellm.token_counter(model=model, custom_tokenizer=tokenizer, text=completion_text)
        )
    counts.total_tokens = counts.prompt_tokens + counts.completion_tokens
    return counts

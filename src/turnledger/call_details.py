"""What LiteLLM's live ``model_call_details`` tell of a call that has not reported its end (measured on 1.106).

LiteLLM writes the provider's answer into ``original_response`` before it returns a response, and
the same key holds ``str(exception)`` when the provider answered with an error: LiteLLM's completion
dispatch (``main.py``) writes it there before it raises. Normally the failure event follows before the
exception reaches the caller; a sync ``completion(num_retries=...)`` without ``tenacity`` raises
before it, and then the error is all turnledger ever sees of the call.

No key tells the two apart for every provider: ``response_headers`` is written on success by the
openai SDK handler but not by the Azure or Fireworks ones, ``additional_args`` differs from handler
to handler, ``exception`` is written only by the failure logging that never ran, and an answer is
not always text (OpenRouter's is a ``ModelResponse``). The error text itself is recognised, only in
the two forms LiteLLM writes for an HTTP error answer (checked against the bundled fake provider):

- through the openai SDK (OpenAI, any ``api_base`` in the OpenAI format, xAI...):
  ``Error code: 500 - {'error': {...}}``, the SDK's own message for a 4xx or 5xx status;
- through LiteLLM's own HTTP handler (DeepSeek, Together...): the provider's error body as sent, a
  JSON object whose ``error`` is set and that has none of the fields of an answer.

Anything else (an answer, a connection error or a timeout, where the provider may have billed work it
finished, an error body in another shape) is not read as an error answer.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping
from typing import Any

_SDK_STATUS_ERROR = re.compile(r"Error code: [45]\d\d(?: - |\Z)")
"""The openai SDK's message for an HTTP error status (``openai._base_client._make_status_error_from_response``)."""

_ERROR_KEY_WITHIN = 200
"""Characters of a body in which its ``"error"`` key must appear: an error body leads with it, and an
answer (which may be large, and is looked at on every wake-up of a closing scope) is never parsed."""

_MAX_ERROR_BODY = 64 * 1024

_ANSWER_FIELDS = frozenset(
    {"choices", "content", "candidates", "output", "data", "message", "results", "embeddings", "usage"}
)
"""Top-level fields of an answer (OpenAI, Anthropic, Gemini, Responses, embeddings, Ollama...): a body
with any of them is not read as an error, whatever else it carries. One with ``usage`` may be billed."""


def response_arrived(call_details: Mapping[str, Any] | None, stream: bool) -> bool:
    """Whether an end event is certainly coming, read from LiteLLM's call details.

    LiteLLM writes the provider's answer there before it returns a response. A stream gets it with
    its first chunk, so it tells nothing; a stream read to its end gets the assembled response when
    LiteLLM's logging of it begins, before any logger runs (a slow one ahead of turnledger delays the
    event by its own time), and a stream broken off never gets it. An error answer is no sign: its
    failure event is logged before the exception reaches the caller, or never.
    """
    if call_details is None:
        return False
    if stream:
        return "async_complete_streaming_response" in call_details or "complete_streaming_response" in call_details
    answer = call_details.get("original_response")
    # None: LiteLLM's failure logging sets the key to None when no answer came (1.106.12), and an
    # async call it retries itself stays pending with it after its first attempt's logged failure.
    # LiteLLM's atext_completion writes its request's coroutine there before it is awaited: no answer yet.
    # Text (the usual answer) first: inspect.isawaitable goes through the Awaitable ABC, two
    # Python-level calls, on every round of a closing scope's wait.
    if answer is None or (type(answer) is not str and inspect.isawaitable(answer)):
        return False
    # provider_refused's reading of the usual answer in place, one Python-level call fewer in every
    # round of a closing scope's wait: text that is neither the SDK's error message nor a body that
    # may be an error is an answer. Anything else is read by provider_refused itself.
    if type(answer) is str and not _SDK_STATUS_ERROR.match(answer):
        body = answer.lstrip()
        if not body.startswith("{") or len(body) > _MAX_ERROR_BODY or '"error"' not in body[:_ERROR_KEY_WITHIN]:
            return True
    return not provider_refused(call_details)


def provider_refused(call_details: Mapping[str, Any] | None) -> bool:
    """Whether LiteLLM's call details hold an HTTP error answer (4xx or 5xx) rather than an answer.

    Providers bill no error answer. Only the two forms in the module docstring count; anything else,
    including text that cannot be read, is not an error answer.
    """
    if call_details is None:
        return False
    text = call_details.get("original_response")
    if not isinstance(text, str):
        return False
    if _SDK_STATUS_ERROR.match(text):
        return True
    body = text.lstrip()
    if not body.startswith("{") or len(body) > _MAX_ERROR_BODY or '"error"' not in body[:_ERROR_KEY_WITHIN]:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    if not isinstance(parsed, dict) or not _ANSWER_FIELDS.isdisjoint(parsed):
        return False
    error = parsed.get("error")
    return isinstance(error, dict | str) and bool(error)


def provider_answered(call_details: Mapping[str, Any] | None) -> bool:
    """Whether the provider had answered the call with a success status before it failed.

    LiteLLM's own HTTP handler for Anthropic's ``/v1/messages`` passthrough (and Google's
    ``generate_content``) keeps the provider's HTTP response as ``httpx_response`` once it has it, before
    it reads or wraps the body. A call that fails after that (a streamed ``anthropic_messages`` without
    the LiteLLM proxy's optional packages, measured on 1.106.12: ``No module named 'fastapi'``) was
    answered, and the provider bills it, though no usage ever reaches a callback. So was a stream
    LiteLLM's own HTTP handler saw begin (:data:`STREAM_BEGAN`).
    """
    if call_details is None:
        return False
    answer = call_details.get("original_response")
    if type(answer) is str and answer == STREAM_BEGAN:
        return True
    status = getattr(call_details.get("httpx_response"), "status_code", None)
    return type(status) is int and 200 <= status < 300


STREAM_BEGAN = "first stream response received"
"""``original_response`` as LiteLLM's own HTTP handler (DeepSeek and the other OpenAI-compatible
providers it serves, 1.106.12) writes it once a stream's success status and headers arrived, before its
first chunk: a stream broken off after that was answered, as the headers the openai SDK path keeps
show (``response_headers``). Without it, a DeepSeek stream broken before its first chunk was recorded
not billed, the same stream through the openai SDK billed its input."""


def answer_in_details(call_details: Mapping[str, Any] | None) -> object | None:
    """The provider's answer as LiteLLM's call details hold it, when it carries a usage block: the
    parsed JSON object LiteLLM wrote into ``original_response`` (``json.dumps`` of the answer, openai
    SDK handler), or the answer object itself. ``None`` for anything else (no answer yet, an error
    answer, text that is not a JSON object, an answer without usage).
    """
    if call_details is None or not response_arrived(call_details, stream=False):
        return None
    answer = call_details["original_response"]
    if isinstance(answer, str):
        body = answer.lstrip()
        if not body.startswith("{"):
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            return None
    if isinstance(answer, Mapping):
        return answer if isinstance(answer.get("usage"), Mapping) else None
    return answer if getattr(answer, "usage", None) is not None else None


def failed_before_timeout(call_details: Mapping[str, Any] | None, duration_ms: object, *, raised: bool) -> bool:
    """Whether an attempt of a call LiteLLM retried itself failed before any timeout it was sent with
    could fire: the provider refused it (an HTTP error answer) or never had it (a connection error).

    LiteLLM (1.106.12) logs nothing of an async call's attempts after the first, and writes neither
    their error nor their answer status into the call details it shares between them. What it does
    write for each attempt is how long its request took (``llm_api_duration_ms``, written when the
    request ends, in the openai SDK handler and LiteLLM's own HTTP handler): ``duration_ms``, ``None``
    when none was written during the attempt. A read timeout fires only once the request has waited
    its timeout, so a shorter request did not time out waiting for its answer; providers bill no other
    failure without an answer (see :func:`~turnledger.pricing.answer_timed_out`).

    The duration is written on cancellation as well, so the attempt must be known to have failed:
    ``raised``, a later attempt started (LiteLLM retries on an exception only), or else LiteLLM's
    retries ran out (:func:`retries_exhausted`). A stream's timeout may be another (``stream_timeout``):
    the caller decides whether to ask.
    """
    if call_details is None or type(duration_ms) not in (float, int):
        return False
    if not (raised or retries_exhausted(call_details)):
        return False
    shortest = _shortest_timeout_s(call_details.get("litellm_params"))
    return shortest is not None and 0 <= float(duration_ms) < shortest * 1000  # type: ignore[arg-type]


def retries_exhausted(call_details: Mapping[str, Any]) -> bool:
    """Whether LiteLLM's own retries of an async call ran out, every attempt having raised.

    LiteLLM's ``client`` wrapper (``utils.py``, 1.106.12) keeps the first attempt's exception (the one
    its failure logging wrote into the call details as ``exception``) and, once the retries have all
    failed, sets its ``num_retries`` before raising it to the caller; not when one succeeded, nor when
    the retries were cancelled (a ``CancelledError`` is no ``Exception`` to it).
    """
    retries = getattr(call_details.get("exception"), "num_retries", None)
    return type(retries) is int and retries > 0


def _shortest_timeout_s(litellm_params: object) -> float | None:
    """The shortest timeout a request was sent with, in seconds (``litellm_params["timeout"]``, where
    LiteLLM keeps the one it sends: the caller's, or its 600 s default): a number, or an
    ``httpx.Timeout``'s shortest phase. ``None`` when there is none or it cannot be read."""
    if not isinstance(litellm_params, Mapping):
        return None
    timeout = litellm_params.get("timeout")
    if type(timeout) in (float, int):
        values: list[object] = [timeout]
    else:
        values = [getattr(timeout, phase, None) for phase in ("connect", "read", "write", "pool")]
    seconds = [float(v) for v in values if type(v) in (float, int)]  # type: ignore[arg-type]
    positive = [s for s in seconds if 0 < s < math.inf]
    return min(positive) if positive else None

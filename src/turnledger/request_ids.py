"""The provider's id for a request (``provider_request_id``), read from its request-id header.

OpenAI and most providers send it as ``x-request-id``, Anthropic as ``request-id``: what the
provider's request logs and its support know the request by. A success event carries the headers in
its response's hidden params; a failure event the error answer's in its exception
(:func:`exception_request_id`); a stream broken off after its answer began, and an attempt LiteLLM
never logged, leave them, if at all, in the call details (:func:`headers_request_id`). The answer
body's own ``id`` (``chatcmpl-...``) is another id, never taken for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnledger.usage import MODEL_CLASSES, private_field

REQUEST_ID_HEADERS = ("x-request-id", "request-id")
"""The provider's request-id headers as it sends them, the first one present taken."""

_HIDDEN_PARAMS_HEADERS = ("llm_provider-x-request-id", "llm_provider-request-id", "request-id", "x-request-id")
"""Their names in LiteLLM's hidden params, by preference: the provider's own headers as LiteLLM
prefixes them, then unprefixed."""


def response_request_id(response_obj: Any) -> str | None:
    """The request id in a LiteLLM response's ``_hidden_params["additional_headers"]``."""
    # Read on every success event. Exact type tests first: LiteLLM hands dicts, and isinstance against
    # an ABC costs 0.2 us each. A LiteLLM response's private attributes read in place, as private_field
    # reads them (a call less: 400 instructions), and no headers (a provider that sends none, a mocked
    # answer) not looked through name by name (2,000).
    private = response_obj.__pydantic_private__ if type(response_obj) in MODEL_CLASSES else None
    hidden = (
        private["_hidden_params"]
        if private and "_hidden_params" in private
        else private_field(response_obj, "_hidden_params")
    )
    if not (type(hidden) is dict or isinstance(hidden, Mapping)):
        return None
    headers = hidden.get("additional_headers")
    if type(headers) is dict:
        if not headers:
            return None
    elif not isinstance(headers, Mapping):
        return None
    for name in _HIDDEN_PARAMS_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def headers_request_id(headers: object) -> str | None:
    """The request id in a provider's response headers as it sent them (a dict or ``httpx.Headers``),
    in the order :func:`response_request_id` prefers them."""
    if not isinstance(headers, Mapping):
        return None
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


_EXCEPTION_HEADERS = ("headers", "response", "litellm_response_headers")
"""Where an exception keeps the headers of the error answer, in the order LiteLLM reads them for its
own ``error_provider_request_id`` (``_get_response_headers``, 1.106.12): the openai SDK's and
httpx's ``response.headers``, and LiteLLM's copy on the exception it maps them to."""


def exception_request_id(exc: object) -> str | None:
    """The request id of the error answer ``exc`` was raised for: ``None`` when it got none (a
    timeout, a connection lost) or carries none.

    The failure event's own exception, not the call details' ``response_headers`` nor their
    ``standard_logging_object``: LiteLLM's own retries share the details, where an earlier attempt's
    answer may have left its headers, and its exception is what LiteLLM derives the logging object's
    id from in turn (measured on 1.106.12: equal for a refused chat, embedding and stream, through the
    openai SDK and LiteLLM's own HTTP handler)."""
    if not isinstance(exc, BaseException):
        return None
    for name in _EXCEPTION_HEADERS:
        try:
            source = getattr(exc, name, None)
            headers = getattr(source, "headers", None) if name == "response" else source
            request_id = headers_request_id(headers)
        except Exception:  # an exception of any class may come: a property that raises reads as none
            continue
        if request_id is not None:
            return request_id
    return None

"""Reading the provider's request id off an exception: whatever came, never raising."""

from __future__ import annotations

import httpx

from turnledger.request_ids import exception_request_id


class _HeadersThatRaise(Exception):
    @property
    def headers(self) -> object:
        raise RuntimeError("not readable")


def test_the_error_answers_request_id_is_read_from_any_place_an_exception_keeps_it() -> None:
    response = httpx.Response(500, headers={"X-Request-Id": "req_from_response"})
    refused = Exception("refused")
    refused.response = response  # type: ignore[attr-defined]
    mapped = Exception("mapped")
    mapped.litellm_response_headers = httpx.Headers({"request-id": "req_anthropic"})  # type: ignore[attr-defined]
    assert exception_request_id(refused) == "req_from_response"
    assert exception_request_id(mapped) == "req_anthropic"


def test_an_exception_without_a_readable_request_id_has_none() -> None:
    unreadable = _HeadersThatRaise("boom")
    unreadable.litellm_response_headers = {"x-request-id": "req_still_found"}  # type: ignore[attr-defined]
    assert exception_request_id(unreadable) == "req_still_found"
    assert exception_request_id(TimeoutError("no answer")) is None
    assert exception_request_id({"x-request-id": "not an exception"}) is None
    empty = Exception("empty id")
    empty.headers = {"x-request-id": ""}  # type: ignore[attr-defined]
    assert exception_request_id(empty) is None

"""Reading the provider's request id off an exception: whatever came, never raising."""

from __future__ import annotations

from typing import Any

import httpx
import litellm

from turnledger.request_ids import exception_request_id, response_request_id


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


def _answer(hidden: object) -> Any:
    response = litellm.ModelResponse(model="gpt-4o-mini")
    if hidden is not _NO_HIDDEN:
        response._hidden_params = hidden
    else:
        response.__pydantic_private__.pop("_hidden_params", None)
    return response


_NO_HIDDEN = object()


class _Plain:
    def __init__(self, hidden: object) -> None:
        self._hidden_params = hidden


def test_a_responses_request_id_is_read_from_its_hidden_params_whatever_their_shape() -> None:
    both = {"llm_provider-request-id": "req_second", "llm_provider-x-request-id": "req_first", "x": "1"}
    headers = httpx.Headers({"request-id": "req_mapping"})
    for shape in (_answer, _Plain):
        assert response_request_id(shape({"additional_headers": both})) == "req_first"
        assert response_request_id(shape({"additional_headers": {"x-request-id": "req_plain"}})) == "req_plain"
        assert response_request_id(shape({"additional_headers": headers})) == "req_mapping"
        assert response_request_id(shape({"additional_headers": {}})) is None
        assert response_request_id(shape({"additional_headers": {"x-request-id": ""}})) is None
        assert response_request_id(shape({"additional_headers": "x-request-id"})) is None
        assert response_request_id(shape({})) is None
        assert response_request_id(shape(None)) is None
    assert response_request_id(_answer(_NO_HIDDEN)) is None
    assert response_request_id({"_hidden_params": {"additional_headers": {"x-request-id": "req_dict"}}}) is None
    assert response_request_id(None) is None

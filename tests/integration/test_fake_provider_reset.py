"""The fake provider's own bookkeeping, which every provider test reads as ground truth."""

from __future__ import annotations

import time

import httpx
import pytest

from turnledger.fake_provider import FakeProvider, Script


def test_an_answer_to_a_request_from_before_a_reset_is_not_counted_after_it(fake_provider: FakeProvider) -> None:
    # A client that gave up (a test of timeouts) leaves the server holding its request; answered
    # after the next test's reset, it showed up among that test's answers (a test expecting one
    # answer found two, now and then, by how long the tests in between took).
    fake_provider.plan("held", [Script(delay_s=0.5)])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi [[plan:held]]"}]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{fake_provider.base_url}/chat/completions", json=body, timeout=0.1)
    fake_provider.reset()
    time.sleep(1.0)  # past the held request's answer
    assert list(fake_provider.answers) == []
    # A request after the reset is counted as before.
    fake_provider.script("gpt-4o-mini", content="ok")
    reply = httpx.post(f"{fake_provider.base_url}/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200
    (answer,) = fake_provider.answers
    assert answer.request_id == reply.headers["x-request-id"]

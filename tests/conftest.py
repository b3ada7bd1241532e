"""Shared fixtures: the fake provider server, a clean turn context and an installed tracker."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator
from typing import Any

import litellm
import pytest

import turnledger
from turnledger._logging import reset_warnings
from turnledger.accumulator import _current_turn
from turnledger.fake_provider import FakeProvider


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> Iterator[FakeProvider]:
    """The session's fake provider with no scripts and no recorded requests."""
    fake_provider_server.reset()
    yield fake_provider_server
    fake_provider_server.reset()


@pytest.fixture
def provider_kwargs(fake_provider: FakeProvider) -> dict[str, Any]:
    """What a LiteLLM call needs to reach the fake provider in the OpenAI format."""
    return {"api_base": fake_provider.base_url, "api_key": "sk-fake-not-a-real-key"}


@pytest.fixture(autouse=True)
def _clean_turn_context() -> Iterator[None]:
    """Every test starts outside any turn and with fresh once-per-cause warnings."""
    token = _current_turn.set(None)
    reset_warnings()
    yield
    _current_turn.reset(token)


@pytest.fixture
def tracker() -> Iterator[turnledger.TokenTrackingCallback]:
    """The default tracker, installed for the test and really uninstalled after it."""
    cb = turnledger.install()
    cb.stats.clear()
    yield cb
    turnledger.uninstall()
    assert not turnledger.is_installed()


@pytest.fixture(autouse=True)
def _no_stray_litellm_callbacks() -> Iterator[None]:
    yield
    # A test that installed extra instances must not leak them into the next test.
    for cb in list(litellm.callbacks):
        if isinstance(cb, turnledger.TokenTrackingCallback):
            turnledger.uninstall(cb)

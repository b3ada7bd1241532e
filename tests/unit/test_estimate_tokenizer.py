"""An estimate never waits for a tokenizer download: LiteLLM fetches the Llama and Command R ones
from the Hugging Face Hub on first use, retrying for about 23 s when there is no network."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import litellm.utils
import pytest

from turnledger import estimate_tokenizer
from turnledger.usage import estimate_counts

LLAMA = "groq/llama-3.1-8b-instant"
MESSAGES = [{"role": "user", "content": "hello there"}]
COMPLETION = "General Kenobi"


class _CharTokenizer:
    """A stand-in Hugging Face tokenizer: one token per character, so its counts are told apart."""

    def encode_batch_fast(self, texts: list[str]) -> list[list[int]]:
        return [list(range(len(text))) for text in texts]


class _Hub:
    """Stands in for LiteLLM's Hugging Face tokenizer loader and notes which threads called it."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self.callers: list[int] = []

    def __call__(self, kind: str, backend: object) -> Any:
        self.callers.append(threading.get_ident())
        if self.tokenizer is None:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return self.tokenizer


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(estimate_tokenizer, "_loaded", {})
    monkeypatch.setattr(estimate_tokenizer, "_started", set())
    yield
    _join_loaders()


def _join_loaders() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("turnledger-tokenizer-") and thread is not threading.current_thread():
            thread.join(timeout=10)


def _hub(monkeypatch: pytest.MonkeyPatch, tokenizer: Any | None) -> _Hub:
    hub = _Hub(tokenizer)
    monkeypatch.setattr(litellm.utils, "_load_huggingface_tokenizer", hub)
    return hub


def test_an_estimate_never_loads_a_hub_tokenizer_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _hub(monkeypatch, None)

    counts = estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)
    _join_loaders()

    assert threading.get_ident() not in hub.callers
    # Counted with LiteLLM's default tokenizer meanwhile: as a model that needs no download is.
    tiktoken = estimate_counts("gpt-4o-mini", messages=MESSAGES, completion_text=COMPLETION)
    assert (counts.prompt_tokens, counts.completion_tokens) == (tiktoken.prompt_tokens, tiktoken.completion_tokens)
    assert counts.estimated


def test_a_failed_load_is_tried_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _hub(monkeypatch, None)

    for _ in range(3):
        estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)
        _join_loaders()

    assert len(hub.callers) == 1


def test_the_models_own_tokenizer_counts_once_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = _hub(monkeypatch, _CharTokenizer())

    estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)
    _join_loaders()
    counts = estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)

    assert counts.completion_tokens == len(COMPLETION)
    assert hub.callers and threading.get_ident() not in hub.callers


def test_a_model_that_needs_no_download_is_left_to_litellm() -> None:
    assert estimate_tokenizer.tokenizer_for("gpt-4o-mini") is None
    assert estimate_tokenizer.tokenizer_for("claude-3-5-sonnet-20240620") is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_while_a_load_is_under_way_loads_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the forking thread survives a fork: the parent's loader is gone in the child (gunicorn
    # --preload, a prefork pool), which must not then count with tiktoken for the rest of its life.
    release = threading.Event()
    hub = _Hub(_CharTokenizer())

    def slow_hub(kind: str, backend: object) -> Any:
        release.wait(10)
        return hub(kind, backend)

    monkeypatch.setattr(litellm.utils, "_load_huggingface_tokenizer", slow_hub)
    estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)  # the parent's load starts, and waits
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 3
        try:
            release.set()
            estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)
            _join_loaders()
            counts = estimate_counts(LLAMA, messages=MESSAGES, completion_text=COMPLETION)
            code = 0 if counts.completion_tokens == len(COMPLETION) else 1
        finally:
            os._exit(code)
    release.set()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

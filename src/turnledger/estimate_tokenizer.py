"""The tokenizer an estimate counts with: never one that must be downloaded first.

LiteLLM's ``token_counter`` counts Llama and Cohere Command R models with a Hugging Face tokenizer,
which it fetches from the Hugging Face Hub on first use. Without a network it retries for about
23 s before it falls back to tiktoken, and it does so again on every call: it caches the tokenizer,
not the failure (measured on 1.106.12: 23.3 s per call, three calls in a row). turnledger estimates
on the thread that reads the event, often the event loop (a turn's deferred reads, an abandoned call
at scope exit), so one estimate would stall every request of the process for that long, and an
estimate would make a billing library reach out to the network.

So an estimate for such a model counts with LiteLLM's default tokenizer (tiktoken, bundled with
LiteLLM) until the model's own is loaded, which one background thread per tokenizer tries once per
process. Either way the record is flagged ``usage_estimated``: an estimate is never exact.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

logger = logging.getLogger("turnledger")

_DOWNLOADED_KINDS = frozenset({"llama2", "llama3", "cohere"})
"""LiteLLM's Hugging Face tokenizer kinds that come from the Hub (its ``anthropic`` one is bundled)."""

_DEFAULT_TOKENIZER_MODEL = "gpt-4o-mini"
"""A model LiteLLM counts with its default tokenizer (tiktoken, bundled): asking for its tokenizer
is how to get that one through LiteLLM's public functions."""

_lock = threading.Lock()
_loaded: dict[str, Any] = {}
"""Tokenizer kind -> LiteLLM's tokenizer for it, once a background load has succeeded."""
_started: set[str] = set()
"""Tokenizer kinds whose background load this process has started (loaded, failed or under way)."""


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork (gunicorn --preload, a prefork pool): a load under way
    # in the parent is gone here, and would otherwise never be tried again in this process. The lock
    # may have been held by a thread that no longer exists.
    global _lock
    _lock = threading.Lock()
    _started.intersection_update(_loaded)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def tokenizer_for(model: str) -> Any | None:
    """What to pass as ``token_counter(custom_tokenizer=...)`` for ``model``: ``None`` lets LiteLLM
    choose, which it does without a download for every model but those this module is about."""
    from litellm import utils

    kind = utils.huggingface_tokenizer_kind(model)
    if kind not in _DOWNLOADED_KINDS:
        return None
    loaded = _loaded.get(kind)
    if loaded is not None:
        return loaded
    with _lock:
        start = kind not in _started
        _started.add(kind)
    if start:
        threading.Thread(target=_load, args=(kind, model), name=f"turnledger-tokenizer-{kind}", daemon=True).start()
    return utils.select_tokenizer(_DEFAULT_TOKENIZER_MODEL)


def _load(kind: str, model: str) -> None:
    from litellm import utils

    try:
        # LiteLLM falls back to tiktoken itself when the download fails (or is disabled): only a
        # Hugging Face tokenizer is worth keeping.
        selected = utils.select_tokenizer(model)
    except Exception:
        logger.info("turnledger: LiteLLM's %s tokenizer could not be loaded; estimates use tiktoken", kind)
        return
    if isinstance(selected, dict) and selected.get("type") == "huggingface_tokenizer":
        _loaded[kind] = selected

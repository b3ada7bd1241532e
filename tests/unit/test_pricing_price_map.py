"""The optional price-map refresh: fresh cache, source, stale cache, bundled map; never raising."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.litellm_core_utils.get_model_cost_map import adopt_model_cost_map

from turnledger import PriceMapOrigin, load_price_map, refresh_price_map
from turnledger.money import to_decimal
from turnledger.price_map import (
    PRICE_MAP_CACHE_ENV,
    PRICE_MAP_MAX_AGE_ENV,
    PRICE_MAP_SOURCE_ENV,
    bundled_price_map,
    default_cache_path,
)

SENTINEL = "turnledger-test-model-9f3c"
UNREACHABLE = "http://127.0.0.1:9/model_prices.json"  # the discard port: connection refused


@pytest.fixture(scope="module")
def bundled() -> dict[str, Any]:
    return bundled_price_map()


@pytest.fixture
def newer_map(bundled: dict[str, Any], tmp_path: Path) -> Path:
    """A map as a newer LiteLLM release would publish it: the bundled one plus one model."""
    data = dict(bundled)
    data[SENTINEL] = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "openai"}
    path = tmp_path / "source" / "model_prices.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def served(newer_map: Path) -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(newer_map.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{newer_map.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_bundled_map_is_litellms(bundled: dict[str, Any]) -> None:
    assert len(bundled) > 1000 and "gpt-4o-mini" in bundled


def test_source_file_is_read_and_cached(newer_map: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "prices.json"
    loaded = load_price_map(newer_map, cache_path=cache)
    assert loaded.origin is PriceMapOrigin.SOURCE and SENTINEL in loaded.prices
    assert loaded.location == str(newer_map)
    assert SENTINEL in json.loads(cache.read_text())
    # Within max age the cache answers and the source is not read (it is gone).
    newer_map.unlink()
    again = load_price_map(newer_map, cache_path=cache, max_age_s=3600)
    assert again.origin is PriceMapOrigin.CACHE and SENTINEL in again.prices


def test_source_url_is_fetched(served: str, tmp_path: Path) -> None:
    loaded = load_price_map(served, cache_path=tmp_path / "prices.json")
    assert loaded.origin is PriceMapOrigin.SOURCE and SENTINEL in loaded.prices


def test_an_old_cache_is_refreshed_from_the_source(served: str, tmp_path: Path) -> None:
    cache = tmp_path / "prices.json"
    cache.write_text(json.dumps(bundled_price_map()))
    age(cache, 7200)
    loaded = load_price_map(served, cache_path=cache, max_age_s=3600)
    assert loaded.origin is PriceMapOrigin.SOURCE
    assert SENTINEL in json.loads(cache.read_text())


def test_stale_cache_when_the_source_fails(newer_map: Path, tmp_path: Path) -> None:
    cache = tmp_path / "prices.json"
    cache.write_text(newer_map.read_text())
    age(cache, 10 * 86400)
    loaded = load_price_map(UNREACHABLE, cache_path=cache, max_age_s=60, timeout_s=2)
    assert loaded.origin is PriceMapOrigin.STALE_CACHE and SENTINEL in loaded.prices


def test_bundled_when_there_is_nothing_else(tmp_path: Path) -> None:
    loaded = load_price_map(UNREACHABLE, cache_path=tmp_path / "none.json", timeout_s=2)
    assert loaded.origin is PriceMapOrigin.BUNDLED and loaded.location is None
    assert "gpt-4o-mini" in loaded.prices and SENTINEL not in loaded.prices
    assert load_price_map(None, cache_path=tmp_path / "none.json").origin is PriceMapOrigin.BUNDLED


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        "{}",
        json.dumps({"gpt-4o-mini": {"input_cost_per_token": 1}}),  # far smaller than the bundled map
        json.dumps({"a": 1, "b": "x"}),
    ],
)
def test_a_bad_source_is_rejected_like_a_failed_download(content: str, tmp_path: Path) -> None:
    source = tmp_path / "bad.json"
    source.write_text(content)
    cache = tmp_path / "prices.json"
    loaded = load_price_map(source, cache_path=cache)
    assert loaded.origin is PriceMapOrigin.BUNDLED
    assert not cache.exists()


def test_a_corrupt_fresh_cache_falls_through_to_the_source(newer_map: Path, tmp_path: Path) -> None:
    cache = tmp_path / "prices.json"
    cache.write_text("{truncated")
    loaded = load_price_map(newer_map, cache_path=cache, max_age_s=3600)
    assert loaded.origin is PriceMapOrigin.SOURCE
    assert SENTINEL in json.loads(cache.read_text())


def test_an_unwritable_cache_does_not_stop_the_refresh(newer_map: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    loaded = load_price_map(newer_map, cache_path=blocker / "prices.json")
    assert loaded.origin is PriceMapOrigin.SOURCE and SENTINEL in loaded.prices


def test_configured_through_the_environment(newer_map: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "env-cache.json"
    monkeypatch.setenv(PRICE_MAP_SOURCE_ENV, str(newer_map))
    monkeypatch.setenv(PRICE_MAP_CACHE_ENV, str(cache))
    monkeypatch.setenv(PRICE_MAP_MAX_AGE_ENV, "0")
    assert load_price_map().origin is PriceMapOrigin.SOURCE and cache.exists()
    # max age 0: the cache is never fresh enough, the source is asked again.
    assert load_price_map().origin is PriceMapOrigin.SOURCE
    monkeypatch.setenv(PRICE_MAP_MAX_AGE_ENV, "one day")
    assert load_price_map().origin is PriceMapOrigin.CACHE


def test_the_default_cache_is_under_xdg_cache_home_else_the_home_cache(
    newer_map: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PRICE_MAP_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_price_map(newer_map).origin is PriceMapOrigin.SOURCE
    assert (tmp_path / "xdg" / "turnledger" / "model_prices.json").is_file()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "turnledger" / "model_prices.json"


def test_refresh_makes_litellm_price_with_the_new_map(newer_map: Path, tmp_path: Path) -> None:
    original = litellm.model_cost
    try:
        loaded = refresh_price_map(newer_map, cache_path=tmp_path / "prices.json")
        assert loaded.origin is PriceMapOrigin.SOURCE
        assert SENTINEL in litellm.model_cost
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=SENTINEL, custom_llm_provider="openai", prompt_tokens=10, completion_tokens=1
        )
        # LiteLLM's float (9.999999999999999e-06) read the way the cost chain reads it.
        assert (to_decimal(prompt_cost), to_decimal(completion_cost)) == (Decimal("0.00001"), Decimal("0.000002"))
    finally:
        adopt_model_cost_map(original)
    assert SENTINEL not in litellm.model_cost


def test_refresh_with_nothing_better_leaves_litellm_alone(tmp_path: Path) -> None:
    current = litellm.model_cost
    loaded = refresh_price_map(UNREACHABLE, cache_path=tmp_path / "none.json", timeout_s=2)
    assert loaded.origin is PriceMapOrigin.BUNDLED
    assert litellm.model_cost is current

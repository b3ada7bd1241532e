"""An optional refresh of LiteLLM's price map, from a URL or a file, cached on disk; never crashing.

turnledger imports offline: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (set by ``import turnledger``
unless the caller set it) makes LiteLLM use the map bundled with it. A deployment that wants newer
prices calls :func:`refresh_price_map` (or sets ``TURNLEDGER_PRICE_MAP_SOURCE`` and calls it with no
arguments). The fallbacks, in order:

1. the cache file, if younger than ``max_age_s``;
2. the source (``https://...`` or a file path), written to the cache atomically on success;
3. the cache file however old ("stale");
4. LiteLLM's bundled map.

A map that is not a JSON object of model entries, or that is far smaller than the bundled one
(LiteLLM's own integrity check), is rejected like a failed download. Nothing here raises: a
problem is logged once per cause and the next fallback is used.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from turnledger._logging import warn_once

PRICE_MAP_SOURCE_ENV = "TURNLEDGER_PRICE_MAP_SOURCE"
"""A URL (``https://...``) or file path to read LiteLLM's price map from."""
PRICE_MAP_CACHE_ENV = "TURNLEDGER_PRICE_MAP_CACHE"
"""The cache file (default ``~/.cache/turnledger/model_prices.json``)."""
PRICE_MAP_MAX_AGE_ENV = "TURNLEDGER_PRICE_MAP_MAX_AGE"
"""Seconds a cached map is used without asking the source again (default one day)."""

DEFAULT_MAX_AGE_S = 24 * 3600.0
DEFAULT_TIMEOUT_S = 5.0

_apply_lock = threading.Lock()


class PriceMapOrigin(StrEnum):
    """Where the map in use came from."""

    CACHE = "cache"
    SOURCE = "source"
    STALE_CACHE = "stale_cache"
    BUNDLED = "bundled"


@dataclass(frozen=True, slots=True)
class PriceMap:
    """A loaded price map (LiteLLM's ``model_cost`` schema) and where it came from."""

    prices: Mapping[str, Any]
    origin: PriceMapOrigin
    location: str | None = None
    """The source URL/path or cache path it was read from; ``None`` for the bundled map."""

    def __len__(self) -> int:
        return len(self.prices)


def default_cache_path() -> Path:
    configured = os.environ.get(PRICE_MAP_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "turnledger" / "model_prices.json"


def _max_age_from_env() -> float:
    raw = os.environ.get(PRICE_MAP_MAX_AGE_ENV)
    if not raw:
        return DEFAULT_MAX_AGE_S
    try:
        value = float(raw)
    except ValueError:
        warn_once("price_map:max_age", "%s is not a number of seconds; using one day", PRICE_MAP_MAX_AGE_ENV)
        return DEFAULT_MAX_AGE_S
    return max(0.0, value)


def load_price_map(
    source: str | os.PathLike[str] | None = None,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    max_age_s: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PriceMap:
    """The freshest usable price map, by the fallbacks in the module docstring. Never raises."""
    try:
        src = str(source) if source is not None else os.environ.get(PRICE_MAP_SOURCE_ENV) or None
        cache = Path(cache_path).expanduser() if cache_path is not None else default_cache_path()
        max_age = _max_age_from_env() if max_age_s is None else max(0.0, max_age_s)

        cached_age = _age_s(cache)
        if cached_age is not None and cached_age <= max_age:
            data = _read_map(cache, "cache")
            if data is not None:
                return PriceMap(data, PriceMapOrigin.CACHE, str(cache))
        if src:
            data = _fetch(src, timeout_s)
            if data is not None:
                _write_cache(cache, data)
                return PriceMap(data, PriceMapOrigin.SOURCE, src)
        if cached_age is not None:
            data = _read_map(cache, "stale_cache")
            if data is not None:
                return PriceMap(data, PriceMapOrigin.STALE_CACHE, str(cache))
    except Exception as exc:  # the promise is "never crashing": any surprise falls to the bundled map
        warn_once(f"price_map:unexpected:{type(exc).__name__}", "price map refresh failed", exc_info=True)
    return PriceMap(bundled_price_map(), PriceMapOrigin.BUNDLED, None)


def refresh_price_map(
    source: str | os.PathLike[str] | None = None,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    max_age_s: float | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> PriceMap:
    """Load the freshest map (:func:`load_price_map`) and make LiteLLM price with it.

    Uses LiteLLM's own ``adopt_model_cost_map`` (what its proxy does on a reload), which swaps
    ``litellm.model_cost`` and re-applies models registered at runtime. A bundled result leaves
    LiteLLM's current map alone. Never raises.
    """
    loaded = load_price_map(source, cache_path=cache_path, max_age_s=max_age_s, timeout_s=timeout_s)
    if loaded.origin is PriceMapOrigin.BUNDLED:
        return loaded
    try:
        from litellm.litellm_core_utils.get_model_cost_map import adopt_model_cost_map

        with _apply_lock:
            adopt_model_cost_map(dict(loaded.prices))
    except Exception as exc:
        warn_once(f"price_map:apply:{type(exc).__name__}", "could not apply the price map to LiteLLM", exc_info=True)
    return loaded


def bundled_price_map() -> dict[str, Any]:
    """The map shipped inside the installed LiteLLM (read from its package data, no network)."""
    try:
        from litellm.litellm_core_utils.get_model_cost_map import GetModelCostMap

        data = json.loads(GetModelCostMap.read_local_model_cost_map_bytes())
        return data if isinstance(data, dict) else {}
    except Exception as exc:
        warn_once(f"price_map:bundled:{type(exc).__name__}", "could not read LiteLLM's bundled price map")
        return {}


# -- helpers -----------------------------------------------------------------------------------------


def _age_s(path: Path) -> float | None:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


def _read_map(path: Path, what: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        warn_once(f"price_map:{what}:{type(exc).__name__}", "price map %s at %s is unreadable", what, path)
        return None
    return data if _valid(data, what) else None


def _fetch(source: str, timeout_s: float) -> dict[str, Any] | None:
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout_s) as response:
                body = response.read()
        else:
            body = Path(source).expanduser().read_bytes()
        data = json.loads(body)
    except Exception as exc:
        warn_once(
            f"price_map:source:{type(exc).__name__}", "could not read the price map source (%s)", type(exc).__name__
        )
        return None
    return data if _valid(data, "source") else None


def _valid(data: object, what: str) -> bool:
    if not isinstance(data, dict) or not data or not any(isinstance(v, Mapping) for v in data.values()):
        warn_once(f"price_map:{what}:invalid", "price map %s is not a mapping of model entries; ignored", what)
        return False
    try:
        from litellm.litellm_core_utils.get_model_cost_map import GetModelCostMap

        ok = GetModelCostMap.validate_model_cost_map(
            fetched_map=data, backup_model_count=GetModelCostMap.get_backup_model_count()
        )
    except Exception:
        ok = True  # LiteLLM's integrity check is a guard, not a dependency
    if not ok:
        warn_once(f"price_map:{what}:shrunk", "price map %s failed LiteLLM's integrity check; ignored", what)
    return bool(ok)


def _write_cache(path: Path, data: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".model_prices.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warn_once(f"price_map:cache_write:{type(exc).__name__}", "could not write the price map cache %s", path)

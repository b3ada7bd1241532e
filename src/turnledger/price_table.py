"""The user's own prices: :class:`PriceTable`, in LiteLLM's ``model_cost`` schema, never in LiteLLM's globals.

LiteLLM's way to price an unknown model (``input_cost_per_token`` on a call, ``register_model``)
writes into the process-wide ``litellm.model_cost`` (measured: a per-call rate leaks into it and
prices every later call of that name). A :class:`PriceTable` is an immutable value held by the
callback that uses it; loading or using one changes nothing global.

Lookup of a model name: exact first (the name, then ``provider/name``, each as a price key and as an
alias), then the longest prefix that ends on a ``-``, ``:``, ``/``, ``@`` or ``.`` boundary, so
``claude-sonnet-4-5-20250929`` finds ``claude-sonnet-4-5`` while ``gpt-4o-mini`` never falls to
``gpt-4``. An alias maps a name (an OpenRouter slug, an Azure deployment, a fine-tune id) to a
priced model, which is then looked up the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, localcontext
from pathlib import Path
from types import MappingProxyType
from typing import Any

from turnledger.errors import ConfigurationError
from turnledger.money import MONEY_CONTEXT, to_decimal
from turnledger.usage import TokenCounts

BOUNDARY_CHARS = frozenset("-:/@.")
"""Where a model name may be cut for a prefix match."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's rates in USD, exact. ``None`` means the rate is not given (not that it is free).

    Field names are LiteLLM's ``model_cost`` keys, so an entry copied from its price map just works.
    """

    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    cache_read_input_token_cost: Decimal | None = None
    """Falls back to ``input_cost_per_token`` when not given."""
    cache_creation_input_token_cost: Decimal | None = None
    """5-minute cache writes. Falls back to ``input_cost_per_token`` when not given."""
    cache_creation_input_token_cost_above_1hr: Decimal | None = None
    """1-hour cache writes. Falls back to ``cache_creation_input_token_cost``."""
    output_cost_per_reasoning_token: Decimal | None = None
    """Falls back to ``output_cost_per_token``."""
    input_cost_per_image_token: Decimal | None = None
    """Image input tokens. Falls back to ``input_cost_per_token``."""
    output_cost_per_image_token: Decimal | None = None
    """Image output tokens. Falls back to ``output_cost_per_token``."""
    input_cost_per_audio_token: Decimal | None = None
    """Audio input tokens. Falls back to ``input_cost_per_token``."""
    output_cost_per_audio_token: Decimal | None = None
    """Audio output tokens. Falls back to ``output_cost_per_token``."""
    cache_read_input_audio_token_cost: Decimal | None = None
    """Audio input tokens read from the cache. Falls back to ``cache_read_input_token_cost``."""
    input_cost_per_image: Decimal | None = None
    """Per image sent (image edits)."""
    output_cost_per_image: Decimal | None = None
    """Per image generated."""
    above_tokens: tuple[tuple[int, tuple[tuple[str, Decimal], ...]], ...] = ()
    """Long-context tiers, highest threshold first: ``(threshold, ((rate name, rate), ...))`` from keys
    such as ``input_cost_per_token_above_200k_tokens``. A call whose prompt has more tokens than a
    threshold (xAI: at least as many) is priced at that tier's rates (as LiteLLM does, every token of
    the call, not only those past it); a rate the tier does not name keeps its value below it (the
    lower crossed tier's, else the base one), as LiteLLM keeps it."""
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    """The rates of each service tier the entry prices (``input_cost_per_token_flex``,
    ``output_cost_per_token_above_200k_tokens_priority``...), by LiteLLM's key suffix (``flex``,
    ``balanced``, ``priority``, ``ultrafast``), each already resolved as LiteLLM resolves it: a rate
    the tier does not name is the standard one. See :meth:`for_service_tier`."""

    @classmethod
    def from_mapping(cls, model: str, entry: Mapping[str, Any]) -> ModelPrice:
        """Read the known rate keys of a ``model_cost`` entry, long-context and service tiers included;
        other keys (batch rates among them) are ignored."""
        price = cls._from_rates(model, entry)
        tiers: list[tuple[str, ModelPrice]] = []
        for suffix in _SERVICE_TIER_SUFFIXES:
            keys = _service_tier_keys(entry, suffix)
            if keys:
                for key in keys:  # checked under their own name, not the standard one they stand in for
                    _rate(model, key, entry[key])
                tiers.append((suffix, cls._from_rates(model, _service_tier_entry(entry, suffix))))
        return replace(price, service_tiers=tuple(tiers)) if tiers else price

    @classmethod
    def _from_rates(cls, model: str, entry: Mapping[str, Any]) -> ModelPrice:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _NOT_RATES or f.name not in entry or entry[f.name] is None:
                continue
            values[f.name] = _rate(model, f.name, entry[f.name])
        tiers: dict[int, dict[str, Decimal]] = {}
        for key, value in entry.items():
            found = _TIER_KEY.fullmatch(key) if isinstance(key, str) else None
            if found is None or value is None:
                continue
            threshold = int(found["count"]) * (1000 if found["k"] else 1)
            tiers.setdefault(threshold, {})[found["rate"]] = _rate(model, key, value)
        if tiers:
            values["above_tokens"] = tuple(
                (threshold, tuple(sorted(rates.items()))) for threshold, rates in sorted(tiers.items(), reverse=True)
            )
        return cls(**values)

    def for_prompt(self, prompt_tokens: int, *, inclusive: bool = False) -> ModelPrice:
        """These rates as they apply to a call with ``prompt_tokens`` of input (its long-context tier).

        ``inclusive``: the tier starts at its threshold itself (xAI's, as LiteLLM bills it), not past it.
        """
        rates: dict[str, Any] = {}
        # Lowest threshold first, each crossed tier over the one below: LiteLLM's order.
        for threshold, tier in reversed(self.above_tokens):
            if prompt_tokens < threshold or (prompt_tokens == threshold and not inclusive):
                break
            rates.update(tier)
        return replace(self, above_tokens=(), **rates) if rates else self

    def for_service_tier(self, service_tier: str | None) -> ModelPrice | None:
        """These rates at the service tier a call was billed at (see
        :func:`~turnledger.pricing.billed_service_tier`); ``None`` when the tier is not the standard one
        and this entry names no rate for it (its cost is then unknown: the caller bills the standard
        rates and flags the record ``service_tier_unpriced``). ``fast`` is priced at the ``priority``
        rates, as LiteLLM prices it."""
        if service_tier is None or service_tier.lower() in STANDARD_SERVICE_TIERS:
            return self
        suffix = _SERVICE_TIER_SUFFIX_OF.get(service_tier.lower())
        for name, price in self.service_tiers:
            if name == suffix:
                return price
        return None

    def cost(
        self,
        counts: TokenCounts,
        *,
        images_in: int = 0,
        images_out: int = 0,
        service_tier: str | None = None,
        provider: str | None = None,
    ) -> Decimal | None:
        """The exact cost of ``counts``, or ``None`` when a count that was used has no rate.

        Each token is priced once: fresh input, cache reads, 5-minute and 1-hour cache writes, text,
        image and audio input; text output, reasoning, image and audio output. The rates are those of
        the billed ``service_tier`` (the standard ones when the entry names none for it, see
        :meth:`for_service_tier`), and a long prompt is priced at its tier's rates (see
        :attr:`above_tokens`; ``provider`` says where the tier starts).
        """
        price = self
        if service_tier is not None and self.service_tiers:
            price = self.for_service_tier(service_tier) or self
        if price.above_tokens:
            price = price.for_prompt(counts.prompt_tokens, inclusive=provider in INCLUSIVE_THRESHOLD_PROVIDERS)
        return price._cost(counts, images_in, images_out)

    def _cost(self, counts: TokenCounts, images_in: int, images_out: int) -> Decimal | None:
        total = Decimal(0)
        # Audio and image read from the cache are cache reads (as LiteLLM bills them), not fresh audio.
        image_in = min(max(0, counts.image_input_tokens - counts.cached_image_tokens), counts.fresh_prompt_tokens)
        audio_in = min(
            max(0, counts.audio_input_tokens - counts.cached_audio_tokens), counts.fresh_prompt_tokens - image_in
        )
        cached_audio = min(counts.cached_audio_tokens, counts.cached_tokens)
        cache_read = _or(self.cache_read_input_token_cost, self.input_cost_per_token)
        image_out = min(counts.image_output_tokens, max(0, counts.completion_tokens - counts.reasoning_tokens))
        audio_out = min(
            counts.audio_output_tokens, max(0, counts.completion_tokens - counts.reasoning_tokens - image_out)
        )
        cache_write = _or(self.cache_creation_input_token_cost, self.input_cost_per_token)
        parts: tuple[tuple[int, Decimal | None], ...] = (
            (counts.fresh_prompt_tokens - image_in - audio_in, self.input_cost_per_token),
            (image_in, _or(self.input_cost_per_image_token, self.input_cost_per_token)),
            (audio_in, _or(self.input_cost_per_audio_token, self.input_cost_per_token)),
            (counts.cached_tokens - cached_audio, cache_read),
            (cached_audio, _or(self.cache_read_input_audio_token_cost, cache_read)),
            (counts.cache_creation_5m_tokens, cache_write),
            (counts.cache_creation_1h_tokens, _or(self.cache_creation_input_token_cost_above_1hr, cache_write)),
            (
                counts.completion_tokens - counts.reasoning_tokens - image_out - audio_out,
                self.output_cost_per_token,
            ),
            (counts.reasoning_tokens, _or(self.output_cost_per_reasoning_token, self.output_cost_per_token)),
            (image_out, _or(self.output_cost_per_image_token, self.output_cost_per_token)),
            (audio_out, _or(self.output_cost_per_audio_token, self.output_cost_per_token)),
            (images_in, self.input_cost_per_image),
            (images_out, self.output_cost_per_image),
        )
        with localcontext(MONEY_CONTEXT):
            for quantity, rate in parts:
                if quantity <= 0:
                    continue
                if rate is None:
                    return None
                try:
                    total += rate * quantity
                except ArithmeticError:
                    return None  # a rate built past the table's bound (ModelPrice(...) directly): no figure
        return total


_TIERED_RATES = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "cache_creation_input_token_cost",
)
_TIER_KEY = re.compile(rf"(?P<rate>{'|'.join(map(re.escape, _TIERED_RATES))})_above_(?P<count>[0-9]+)(?P<k>k?)_tokens")
"""A long-context rate, as LiteLLM's map names it; variants for a service tier or batches
(``..._above_200k_tokens_priority``) do not match."""

_NOT_RATES = frozenset({"above_tokens", "service_tiers"})

INCLUSIVE_THRESHOLD_PROVIDERS = frozenset({"xai"})
"""Providers whose long-context tier starts at its threshold itself, as LiteLLM 1.106 bills them
(``_INCLUSIVE_THRESHOLD_PROVIDERS``); every other provider's starts one token past it."""

STANDARD_SERVICE_TIERS = frozenset({"auto", "default", "standard"})
"""Tier names billed at the standard rates without a flag."""

_SERVICE_TIER_SUFFIX_OF = MappingProxyType(
    {"flex": "flex", "balanced": "balanced", "priority": "priority", "fast": "priority", "ultrafast": "ultrafast"}
)
"""A billed tier -> the suffix of its rates' keys, as LiteLLM 1.106 maps them (``fast`` is billed at
``priority`` rates); a tier not here has no rates in LiteLLM's schema."""
_SERVICE_TIER_SUFFIXES = tuple(dict.fromkeys(_SERVICE_TIER_SUFFIX_OF.values()))

_SERVICE_TIER_RATES = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "input_cost_per_image_token",
    "input_cost_per_audio_token",
    "cache_read_input_audio_token_cost",
)
"""Rates LiteLLM reads at the billed tier's key (``input_cost_per_token_flex``), each falling back to its
standard key. The 1-hour cache write, audio and image output are read at their standard key only;
reasoning has a rule of its own (:func:`_service_tier_entry`)."""
_REASONING = "output_cost_per_reasoning_token"


def _service_tier_keys(entry: Mapping[str, Any], suffix: str) -> list[str]:
    """The keys of ``entry`` that LiteLLM reads for the tier whose keys end with ``_suffix``."""
    end = f"_{suffix}"
    keys = []
    for key, value in entry.items():
        if value is None or not isinstance(key, str) or not key.endswith(end):
            continue
        base = key[: -len(end)]
        if base in _SERVICE_TIER_RATES or base == _REASONING or _TIER_KEY.fullmatch(base):
            keys.append(key)
    return keys


def _service_tier_entry(entry: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    """``entry`` as LiteLLM 1.106 prices it at the tier whose keys end with ``_suffix``
    (``_get_token_base_cost``, ``_resolve_reasoning_token_cost``): each tier rate in place of its
    standard one, which stays where the tier names none, long-context tiers included
    (``input_cost_per_token_above_200k_tokens_priority`` over ``input_cost_per_token_above_200k_tokens``)."""
    tiered = dict(entry)
    end = f"_{suffix}"
    for rate in _SERVICE_TIER_RATES:
        value = entry.get(f"{rate}{end}")
        if value is not None:
            tiered[rate] = value
    for key, value in entry.items():
        if value is not None and isinstance(key, str) and key.endswith(end) and _TIER_KEY.fullmatch(key[: -len(end)]):
            tiered[key[: -len(end)]] = value
    # Reasoning: the tier's own reasoning rate, else the tier's output rate when it names one (not the
    # standard reasoning rate), else the standard reasoning rate.
    if entry.get(f"{_REASONING}{end}") is not None:
        tiered[_REASONING] = entry[f"{_REASONING}{end}"]
    elif entry.get(f"output_cost_per_token{end}") is not None:
        tiered.pop(_REASONING, None)
    return tiered


MAX_RATE_USD = Decimal(1_000_000)
"""The largest rate a table takes (per token, per image): far past any real one. A larger one is a
typo (``1e999999``) that would overflow the cost of the first call it priced."""


def _rate(model: str, name: str, value: object) -> Decimal:
    rate = to_decimal(value)
    if rate is None or rate < 0:
        raise ConfigurationError(f"price of {model!r}: {name} must be a non-negative number")
    if rate > MAX_RATE_USD:
        raise ConfigurationError(f"price of {model!r}: {name} must be at most {MAX_RATE_USD} USD, not {value!r}")
    return rate


def _or(first: Decimal | None, second: Decimal | None) -> Decimal | None:
    return first if first is not None else second


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """Which entry of a table priced a model name, and how it was found."""

    key: str
    """The price key that matched."""
    price: ModelPrice
    via_alias: str | None = None
    """The alias the name went through, if any."""


class PriceTable(Mapping[str, ModelPrice]):
    """An immutable table of per-model prices and aliases. Safe to share between threads.

    ``PriceTable({"my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
    aliases={"my-deployment": "my-model"})``. Rates go through ``str`` (``Decimal(str(1e-6))``)
    so they are exact.
    """

    def __init__(
        self, prices: Mapping[str, Mapping[str, Any]] | None = None, *, aliases: Mapping[str, str] | None = None
    ) -> None:
        table: dict[str, ModelPrice] = {}
        for model, entry in (prices or {}).items():
            if not isinstance(model, str) or not model:
                raise ConfigurationError(f"price table keys must be model names, not {model!r}")
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"price of {model!r} must be a mapping of rates")
            table[model] = ModelPrice.from_mapping(model, entry)
        self._prices: Mapping[str, ModelPrice] = MappingProxyType(table)
        alias_map: dict[str, str] = {}
        for alias, target in (aliases or {}).items():
            if not isinstance(alias, str) or not isinstance(target, str) or not alias or not target:
                raise ConfigurationError(f"alias {alias!r} -> {target!r} must map a name to a name")
            if self._find_price(target) is None:
                raise ConfigurationError(f"alias {alias!r} points at {target!r}, which has no price")
            alias_map[alias] = target
        self._aliases: Mapping[str, str] = MappingProxyType(alias_map)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        """A table from ``{"models": {...}, "aliases": {...}}`` or a bare ``model_cost``-style mapping.

        In a bare mapping, LiteLLM's ``sample_spec`` entry and non-mapping values are skipped.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError("a price table must be a mapping")
        if "models" in data or "aliases" in data:
            models = data.get("models") or {}
            aliases = data.get("aliases") or {}
            if not isinstance(models, Mapping) or not isinstance(aliases, Mapping):
                raise ConfigurationError("'models' and 'aliases' must be mappings")
            return cls(models, aliases=aliases)
        return cls({k: v for k, v in data.items() if k != "sample_spec" and isinstance(v, Mapping)})

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """A table from a JSON or YAML file (by extension: ``.yaml``/``.yml`` is YAML, else JSON)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read price table {p}: {exc.strerror or exc}") from exc
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's parse errors
            raise ConfigurationError(f"price table {p} is not valid: {exc}") from exc
        except Exception as exc:
            raise ConfigurationError(f"price table {p} is not valid: {_yaml_error_place(exc)}") from exc
        return cls.from_dict(data if data is not None else {})

    # -- lookup ----------------------------------------------------------------------------------
    @property
    def aliases(self) -> Mapping[str, str]:
        return self._aliases

    def match(self, model: str, provider: str | None = None) -> PriceMatch | None:
        """The entry that prices ``model`` (as LiteLLM reports it, with its provider), or ``None``."""
        if not model:
            return None
        names = [model]
        if provider and not model.startswith(provider + "/"):
            # The provider's own entry first: a table that tells providers apart means it.
            names.insert(0, f"{provider}/{model}")
        for name in names:
            found = self._exact(name)
            if found is not None:
                return found
        for name in names:
            found = self._prefix(name)
            if found is not None:
                return found
        return None

    def lookup(self, model: str, provider: str | None = None) -> ModelPrice | None:
        found = self.match(model, provider)
        return found.price if found is not None else None

    def cost(
        self,
        model: str,
        counts: TokenCounts,
        *,
        provider: str | None = None,
        images_in: int = 0,
        images_out: int = 0,
        service_tier: str | None = None,
    ) -> Decimal | None:
        """The exact cost of one call, or ``None`` when the model or a needed rate is not in the table.

        ``service_tier``: the tier the call was billed at (see :meth:`ModelPrice.for_service_tier`).
        """
        price = self.lookup(model, provider)
        if price is None:
            return None
        return price.cost(
            counts,
            images_in=images_in,
            images_out=images_out,
            service_tier=service_tier,
            provider=billing_provider(model, provider),
        )

    def _exact(self, name: str) -> PriceMatch | None:
        price = self._prices.get(name)
        if price is not None:
            return PriceMatch(name, price)
        target = self._aliases.get(name)
        if target is not None:
            return self._via(name, target)
        return None

    def _prefix(self, name: str) -> PriceMatch | None:
        for prefix in _boundary_prefixes(name):
            found = self._exact(prefix)
            if found is not None:
                return found
        return None

    def _via(self, alias: str, target: str) -> PriceMatch | None:
        found = self._find_price(target)
        if found is None:
            return None
        return PriceMatch(found[0], found[1], via_alias=alias)

    def _find_price(self, name: str) -> tuple[str, ModelPrice] | None:
        """A price by key, exact then boundary prefix (aliases are not followed: one hop only)."""
        for candidate in (name, *_boundary_prefixes(name)):
            price = self._prices.get(candidate)
            if price is not None:
                return candidate, price
        return None

    # -- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, model: str) -> ModelPrice:
        return self._prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable(models={len(self._prices)}, aliases={len(self._aliases)})"


def billing_provider(model: str, provider: str | None) -> str | None:
    """The provider a call is billed as: the one given, else the one its model name starts with
    (``xai/grok-4``), as LiteLLM's ``cost_per_token`` reads it."""
    return provider or (model.split("/", 1)[0] if "/" in model else None)


def _boundary_prefixes(name: str) -> Iterator[str]:
    """Prefixes of ``name`` that end right before a boundary character, longest first."""
    for i in range(len(name) - 1, 0, -1):
        if name[i] in BOUNDARY_CHARS:
            yield name[:i]


def _yaml_error_place(exc: Exception) -> str:
    """Where a YAML parse error is and what the parser expected (PyYAML's marks count from 0): a
    person fixing the file needs the line, not just ``ParserError``."""
    mark = getattr(exc, "problem_mark", None)
    line, column = getattr(mark, "line", None), getattr(mark, "column", None)
    if not isinstance(line, int) or not isinstance(column, int):
        return type(exc).__name__
    problem = getattr(exc, "problem", None)
    what = f": {problem}" if isinstance(problem, str) and problem else ""
    return f"{type(exc).__name__} at line {line + 1}, column {column + 1}{what}"

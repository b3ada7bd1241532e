"""``turnledger prices MODEL...``: the per-token rates turnledger would use, where they come from, and
what a sample call would cost at them.

LiteLLM's rates are read from the map an application gets from :func:`turnledger.refresh_price_map`
(``$TURNLEDGER_PRICE_MAP_SOURCE``, its cache, the stale cache, else the map bundled with LiteLLM), not
from the bundled map this process imported: a user checks here what they will bill at.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from turnledger.cli.app import EXIT_BAD_INPUT, EXIT_FAILED, app, console, err_console, fail
from turnledger.cli.library_warnings import library_warnings
from turnledger.cli.output import FormatOption, OutputFormat, as_cell, as_format, emit, per_million, usd
from turnledger.errors import ConfigurationError
from turnledger.price_map import PRICE_MAP_SOURCE_ENV, PriceMap, PriceMapOrigin, bundled_price_map, load_price_map
from turnledger.price_table import ModelPrice, PriceTable
from turnledger.usage import TokenCounts

# The rates shown, in LiteLLM's model_cost field names (the schema price tables use too).
RATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("input_cost_per_token", "in"),
    ("output_cost_per_token", "out"),
    ("cache_read_input_token_cost", "cached"),
    ("cache_creation_input_token_cost", "cache\nwrite"),
)


@dataclass(frozen=True, slots=True)
class Quote:
    """What turnledger knows about one model's price, and from where."""

    model: str
    source: str | None
    """``litellm`` (LiteLLM's price map), ``price_table`` (yours), or ``None``: unpriced."""
    matched: str | None = None
    """The key the model was found under (``openai/gpt-4o-mini`` is found under ``gpt-4o-mini``)."""
    price: ModelPrice | None = None
    via_alias: str | None = None
    """The price-table alias the name went through, if any."""

    def rate(self, name: str) -> Decimal | None:
        return None if self.price is None else getattr(self.price, name)

    def sample_cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
        """Exact, by the same :meth:`ModelPrice.cost` the price-table stage of the cost chain uses."""
        if self.price is None:
            return None
        counts = TokenCounts(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        return self.price.cost(counts)


def litellm_candidates(model: str) -> list[str]:
    """Keys to try in LiteLLM's map: the name as given, then without each ``provider/`` prefix."""
    out = [model]
    rest = model
    while "/" in rest:
        rest = rest.split("/", 1)[1]
        out.append(rest)
    return out


def quote_from_litellm(model: str, model_cost: Mapping[str, Any]) -> Quote | None:
    """A read-only lookup in LiteLLM's map (never written to: per-call prices leak into it globally)."""
    for key in litellm_candidates(model):
        entry = model_cost.get(key)
        if not isinstance(entry, Mapping):
            continue
        if entry.get("input_cost_per_token") is None and entry.get("output_cost_per_token") is None:
            continue
        return Quote(model, "litellm", key, ModelPrice.from_mapping(key, entry))
    return None


def quote(model: str, table: PriceTable | None = None, model_cost: Mapping[str, Any] | None = None) -> Quote:
    """The chain's order: LiteLLM prices a model it knows (in ``model_cost``, default LiteLLM's map in
    this process); the user's table prices the rest."""
    if model_cost is None:
        import litellm

        model_cost = litellm.model_cost
    found = quote_from_litellm(model, model_cost)
    if found is not None:
        return found
    if table is not None:
        candidates = litellm_candidates(model)
        match = next((m for name in candidates if (m := table.match(name)) is not None), None)
        if match is not None:
            return Quote(model, "price_table", match.key, match.price, match.via_alias)
    return Quote(model, None)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  turnledger prices gpt-4o-mini claude-sonnet-4-5\n\n"
        "  turnledger prices openai/gpt-4o --prompt-tokens 12000 --completion-tokens 800\n\n"
        "  turnledger prices text-embedding-3-small --format json\n\n"
        "  turnledger prices my-finetune --price-table prices.yaml\n\n"
        "  turnledger prices gpt-4o-mini --bundled\n\n"
        "LiteLLM's rates come from the map turnledger.refresh_price_map() would give an app:"
        f" ${PRICE_MAP_SOURCE_ENV}, its cache, else the map bundled with LiteLLM (--bundled: that one).\n\n"
        "Exit code 1 when any model has no price: turnledger would record its calls as unpriced."
    )
)
def prices(
    models: Annotated[list[str], typer.Argument(help="Model names as you pass them to LiteLLM.", show_default=False)],
    prompt_tokens: Annotated[int, typer.Option(help="Input tokens of the sample call.", min=0)] = 1000,
    completion_tokens: Annotated[int, typer.Option(help="Output tokens of the sample call.", min=0)] = 500,
    price_table: Annotated[
        Path | None,
        typer.Option(
            "--price-table",
            help="Your prices (JSON/YAML, LiteLLM's model_cost schema, optional aliases): used where LiteLLM has none.",
            dir_okay=False,
        ),
    ] = None,
    bundled: Annotated[
        bool,
        typer.Option(
            "--bundled",
            help=f"LiteLLM's bundled map, not ${PRICE_MAP_SOURCE_ENV}'s: what an app that never calls "
            "refresh_price_map bills at.",
        ),
    ] = False,
    output_format: FormatOption = "table",
) -> None:
    """The rates turnledger would price MODEL at, where they come from, and a sample call's cost."""
    fmt = as_format(output_format)
    names = [m.strip() for m in models]
    if any(not m for m in names):
        fail("prices: a model name is empty", EXIT_BAD_INPUT)
    try:
        table = PriceTable.from_file(price_table) if price_table is not None else None
    except ConfigurationError as exc:
        fail(f"--price-table: {exc}", EXIT_BAD_INPUT)
    with library_warnings() as heard:
        price_map = PriceMap(bundled_price_map(), PriceMapOrigin.BUNDLED) if bundled else load_price_map()
    if (trouble := map_trouble(price_map, bundled, heard)) is not None:
        err_console.print(f"warning: {trouble}", markup=False, highlight=False, soft_wrap=True)
    quotes = [quote(m, table, price_map.prices) for m in names]
    rows = [
        {
            "model": q.model,
            "source": q.source,
            "matched": q.matched,
            "via_alias": q.via_alias,
            "price_map": price_map.origin,
            **{name: q.rate(name) for name, _ in RATE_FIELDS},
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "sample_cost_usd": q.sample_cost(prompt_tokens, completion_tokens),
        }
        for q in quotes
    ]
    if fmt is OutputFormat.TABLE:
        for row in rows:
            alias = "" if row["matched"] == row["model"] else f" as {row['matched']}"
            source = {"litellm": "litellm", "price_table": "your table"}.get(str(row["source"]))
            row["from"] = None if source is None else f"{source}{alias}"
        columns = [
            ("model", "model"),
            ("from", "from"),
            # A rate no model has (cache writes, for most) is a column of dashes: leave it out.
            *[(name, f"{label}\n$/1M") for name, label in RATE_FIELDS if any(q.rate(name) is not None for q in quotes)],
            ("sample_cost_usd", f"{prompt_tokens:,} in\n{completion_tokens:,} out"),
        ]
        emit(rows, fmt, columns=columns, title="Rates per million tokens, and one sample call", cell=_cell)
        console.print(
            f"LiteLLM's map: {describe_map(price_map, bundled)}", markup=False, highlight=False, soft_wrap=True
        )
    else:
        emit(rows, fmt, columns=[(key, key) for key in rows[0]])
    unpriced = [q.model for q in quotes if q.source is None]
    if unpriced:
        fail(
            f"no price for {', '.join(unpriced)}: its calls would be recorded as unpriced (cost unknown, not $0); "
            "add it to a price table",
            EXIT_FAILED,
        )


def describe_map(price_map: PriceMap, asked_for_bundled: bool = False) -> str:
    """Which map the rates are from, in words; never the source's address, which may hold a token."""
    match price_map.origin:
        case PriceMapOrigin.SOURCE:
            return f"read now from ${PRICE_MAP_SOURCE_ENV}"
        case PriceMapOrigin.CACHE:
            return f"the cached copy {price_map.location}"
        case PriceMapOrigin.STALE_CACHE:
            return f"the cached copy {price_map.location}, past its max age"
    from importlib.metadata import version

    return f"bundled with LiteLLM {version('litellm')}"


def map_trouble(price_map: PriceMap, asked_for_bundled: bool, heard: list[str]) -> str | None:
    """What went wrong reading the price map, said once (stderr), or ``None``.

    ``heard`` is what the library logged on the way (its causes, never the source's address); it may
    be empty for a cause already logged in this process, so a failed source is known by the map used.
    """
    source_failed = (
        not asked_for_bundled
        and bool(os.environ.get(PRICE_MAP_SOURCE_ENV))
        and price_map.origin in (PriceMapOrigin.BUNDLED, PriceMapOrigin.STALE_CACHE)
    )
    causes = "; ".join(heard)
    if source_failed:
        used = describe_map(price_map, asked_for_bundled)
        where = f"the map {used}" if price_map.origin is PriceMapOrigin.BUNDLED else used
        return f"${PRICE_MAP_SOURCE_ENV} not used, the rates are from {where}: {causes or 'it could not be read'}"
    return causes or None


def _cell(key: str, value: Any) -> str:
    if key == "from":
        return "[yellow]no price[/]" if value is None else as_cell(value)
    if key == "sample_cost_usd":
        return "[yellow]unpriced[/]" if value is None else usd(value)
    if key.endswith(("_per_token", "_token_cost")):
        return per_million(value)
    return "-" if value is None else as_cell(value)

"""``turnledger prices MODEL...``: the per-token rates turnledger would use, where they come from, and
what a sample call would cost at them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any

import typer

from turnledger.cli.app import EXIT_BAD_INPUT, EXIT_FAILED, app, fail
from turnledger.cli.output import FormatOption, OutputFormat, emit, per_million, usd
from turnledger.money import to_decimal

# The rates shown, in LiteLLM's model_cost field names (the schema price tables use too).
RATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("input_cost_per_token", "in"),
    ("output_cost_per_token", "out"),
    ("cache_read_input_token_cost", "cached"),
    ("cache_creation_input_token_cost", "cache\nwrite"),
)


@dataclass(frozen=True, slots=True)
class Quote:
    """What turnledger knows about one model's price."""

    model: str
    source: str | None
    """``litellm`` (LiteLLM's bundled map), or ``None`` when unpriced."""
    matched: str | None
    """The key the model was found under (``openai/gpt-4o-mini`` is found under ``gpt-4o-mini``)."""
    rates: dict[str, Decimal] = field(default_factory=dict)
    mode: str | None = None

    def sample_cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
        if self.source is None:
            return None
        input_rate = self.rates.get("input_cost_per_token", Decimal(0))
        output_rate = self.rates.get("output_cost_per_token", Decimal(0))
        return prompt_tokens * input_rate + completion_tokens * output_rate


def litellm_candidates(model: str) -> list[str]:
    """Keys to try in LiteLLM's map: the name as given, then without each ``provider/`` prefix."""
    out = [model]
    rest = model
    while "/" in rest:
        rest = rest.split("/", 1)[1]
        out.append(rest)
    return out


def quote_from_litellm(model: str, model_cost: Mapping[str, Any]) -> Quote:
    """A read-only lookup in LiteLLM's map (never written to: per-call prices leak into it globally)."""
    for key in litellm_candidates(model):
        entry = model_cost.get(key)
        if not isinstance(entry, Mapping):
            continue
        rates = {name: rate for name, _ in RATE_FIELDS if (rate := to_decimal(entry.get(name))) is not None}
        if "input_cost_per_token" not in rates and "output_cost_per_token" not in rates:
            continue
        mode = entry.get("mode")
        return Quote(model, "litellm", key, rates, mode if isinstance(mode, str) else None)
    return Quote(model, None, None)


def quote(model: str) -> Quote:
    import litellm

    return quote_from_litellm(model, litellm.model_cost)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  turnledger prices gpt-4o-mini claude-sonnet-4-5\n\n"
        "  turnledger prices openai/gpt-4o --prompt-tokens 12000 --completion-tokens 800\n\n"
        "  turnledger prices text-embedding-3-small --format json\n\n"
        "Exit code 1 when any model has no price: turnledger would record its calls as unpriced."
    )
)
def prices(
    models: Annotated[list[str], typer.Argument(help="Model names as you pass them to LiteLLM.", show_default=False)],
    prompt_tokens: Annotated[int, typer.Option(help="Input tokens of the sample call.", min=0)] = 1000,
    completion_tokens: Annotated[int, typer.Option(help="Output tokens of the sample call.", min=0)] = 500,
    fmt: FormatOption = OutputFormat.TABLE,
) -> None:
    """The rates turnledger would price MODEL at, where they come from, and a sample call's cost."""
    names = [m.strip() for m in models]
    if any(not m for m in names):
        fail("prices: a model name is empty", EXIT_BAD_INPUT)
    quotes = [quote(m) for m in names]
    rows = [
        {
            "model": q.model,
            "source": q.source,
            "matched": q.matched,
            "mode": q.mode,
            **{name: q.rates.get(name) for name, _ in RATE_FIELDS},
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "sample_cost_usd": q.sample_cost(prompt_tokens, completion_tokens),
        }
        for q in quotes
    ]
    if fmt is OutputFormat.TABLE:
        for row in rows:
            alias = "" if row["matched"] == row["model"] else f" as {row['matched']}"
            row["from"] = None if row["source"] is None else f"{row['source']}{alias}"
        columns = [
            ("model", "model"),
            ("from", "from"),
            # A rate no model has (cache writes, for most) is a column of dashes: leave it out.
            *[(name, f"{label}\n$/1M") for name, label in RATE_FIELDS if any(q.rates.get(name) for q in quotes)],
            ("sample_cost_usd", f"{prompt_tokens:,} in\n{completion_tokens:,} out"),
        ]
        emit(rows, fmt, columns=columns, title="Rates per million tokens, and one sample call", cell=_cell)
    else:
        emit(rows, fmt, columns=[(key, key) for key in rows[0]])
    unpriced = [q.model for q in quotes if q.source is None]
    if unpriced:
        fail(
            f"no price for {', '.join(unpriced)}: its calls would be recorded as unpriced (cost unknown, not $0); "
            "add it to a price table",
            EXIT_FAILED,
        )


def _cell(key: str, value: Any) -> str:
    if key == "from":
        return "[yellow]no price[/]" if value is None else str(value)
    if key == "sample_cost_usd":
        return "[yellow]unpriced[/]" if value is None else usd(value)
    if key.endswith(("_per_token", "_token_cost")):
        return per_million(value)
    return "-" if value is None else str(value)

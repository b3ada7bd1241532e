"""PriceTable: loading, exact-then-boundary-aware lookup, aliases, exact costs, LiteLLM's globals untouched."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import litellm
import pytest
from litellm.litellm_core_utils.llm_cost_calc.utils import generic_cost_per_token
from litellm.types.utils import ModelInfo, Usage

from turnledger import ConfigurationError, ModelPrice, PriceTable
from turnledger.money import to_decimal
from turnledger.usage import TokenCounts

D = Decimal
RATES = {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}


def table(*names: str, aliases: dict[str, str] | None = None) -> PriceTable:
    return PriceTable(dict.fromkeys(names, RATES), aliases=aliases)


# -- lookup --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "model", "expected"),
    [
        (("gpt-4",), "gpt-4o-mini", None),  # never falls to a shorter name inside a word
        (("gpt-4o",), "gpt-4omni", None),
        (("gpt-4", "gpt-4o", "gpt-4o-mini"), "gpt-4o-mini", "gpt-4o-mini"),  # exact first
        (("gpt-4o", "gpt-4o-mini"), "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # longest prefix
        (("gpt-4o",), "gpt-4o-2024-08-06", "gpt-4o"),
        (("claude-sonnet-4-5", "claude-sonnet-4"), "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        (("claude-3-5-sonnet",), "claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),  # Vertex '@'
        (("ft:gpt-4o-mini-2024-07-18",), "ft:gpt-4o-mini-2024-07-18:acme::8xYz", "ft:gpt-4o-mini-2024-07-18"),
        (("anthropic",), "anthropic.claude-3-5-sonnet", "anthropic"),  # '.' is a boundary
        (("acme",), "acme/llama-3-70b", "acme"),  # '/' is a boundary
        (("gpt-4o-mini",), "gpt-4o-mini-", "gpt-4o-mini"),
        (("gpt-4o-mini",), "gpt-4o", None),  # a longer key never matches a shorter name
        ((), "gpt-4o", None),
    ],
)
def test_exact_then_boundary_aware_longest_prefix(keys: tuple[str, ...], model: str, expected: str | None) -> None:
    found = table(*keys).match(model)
    assert (found.key if found else None) == expected


def test_the_colon_boundary_needs_the_whole_prefix() -> None:
    # "...-v1" is a prefix of "...-v1:0" on the ':' boundary, so it matches.
    found = table("anthropic.claude-3-5-sonnet-20240620-v1").match("anthropic.claude-3-5-sonnet-20240620-v1:0")
    assert found is not None and found.key == "anthropic.claude-3-5-sonnet-20240620-v1"


def test_provider_prefixed_keys() -> None:
    t = table("gpt-4o", "azure/gpt-4o")
    # The provider's own entry is tried first, then the bare name.
    assert t.match("gpt-4o", "azure").key == "azure/gpt-4o"  # type: ignore[union-attr]
    assert t.match("gpt-4o", "openai").key == "gpt-4o"  # type: ignore[union-attr]
    t2 = table("azure/gpt-4o")
    assert t2.match("gpt-4o", "azure").key == "azure/gpt-4o"  # type: ignore[union-attr]
    assert t2.match("gpt-4o-2024-08-06", "azure").key == "azure/gpt-4o"  # type: ignore[union-attr]
    assert t2.match("gpt-4o", "openai") is None
    assert t2.match("azure/gpt-4o", "azure").key == "azure/gpt-4o"  # type: ignore[union-attr]


def test_exact_matches_on_any_name_beat_prefixes() -> None:
    t = table("gpt-4o", "openai/gpt-4o-mini")
    assert t.match("gpt-4o-mini", "openai").key == "openai/gpt-4o-mini"  # type: ignore[union-attr]


def test_aliases() -> None:
    t = PriceTable(
        {"claude-sonnet-4-5": RATES, "gpt-4o-mini": RATES},
        aliases={
            "anthropic/claude-sonnet-4.5": "claude-sonnet-4-5",  # an OpenRouter slug
            "prod-eastus-chat": "gpt-4o-mini-2024-07-18",  # an Azure deployment; target found by prefix
            "ft:gpt-4o-mini:acme": "gpt-4o-mini",  # a fine-tune family
        },
    )
    slug = t.match("anthropic/claude-sonnet-4.5", "openrouter")
    assert slug is not None and (slug.key, slug.via_alias) == ("claude-sonnet-4-5", "anthropic/claude-sonnet-4.5")
    deployment = t.match("prod-eastus-chat", "azure")
    assert deployment is not None and deployment.key == "gpt-4o-mini"
    # Alias keys take part in the boundary-aware prefix search too.
    tuned = t.match("ft:gpt-4o-mini:acme:run-7")
    assert tuned is not None and (tuned.key, tuned.via_alias) == ("gpt-4o-mini", "ft:gpt-4o-mini:acme")
    assert t.aliases["prod-eastus-chat"] == "gpt-4o-mini-2024-07-18"


def test_an_alias_to_nothing_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no price"):
        PriceTable({"gpt-4o": RATES}, aliases={"x": "gpt-4"})


# -- cost ----------------------------------------------------------------------------------------------


def test_every_token_kind_is_priced_once_at_its_rate() -> None:
    price = ModelPrice.from_mapping(
        "m",
        {
            "input_cost_per_token": 3e-06,
            "output_cost_per_token": 1.5e-05,
            "cache_read_input_token_cost": 3e-07,
            "cache_creation_input_token_cost": 3.75e-06,
            "cache_creation_input_token_cost_above_1hr": 6e-06,
            "output_cost_per_reasoning_token": 2e-05,
            "input_cost_per_image_token": 1e-05,
            "output_cost_per_image_token": 4e-05,
        },
    )
    counts = TokenCounts(
        prompt_tokens=2000,  # 300 fresh text + 200 fresh image + 1000 read + 300 5m + 200 1h
        cached_tokens=1000,
        cache_creation_tokens=500,
        cache_creation_1h_tokens=200,
        image_input_tokens=200,
        completion_tokens=700,  # 400 text + 100 reasoning + 200 image
        reasoning_tokens=100,
        image_output_tokens=200,
    )
    expected = (
        300 * D("0.000003")
        + 200 * D("0.00001")
        + 1000 * D("0.0000003")
        + 300 * D("0.00000375")
        + 200 * D("0.000006")
        + 400 * D("0.000015")
        + 100 * D("0.00002")
        + 200 * D("0.00004")
    )
    assert price.cost(counts) == expected == D("0.021525")


def test_audio_tokens_are_priced_at_their_own_rates() -> None:
    # gpt-audio's entry as LiteLLM's map has it: a table copied from the map must bill audio as audio.
    gpt_audio = {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "input_cost_per_audio_token": 3.2e-05,
        "output_cost_per_audio_token": 6.4e-05,
    }
    counts = TokenCounts(
        prompt_tokens=1300,  # 200 fresh text + 800 fresh audio + 300 read
        cached_tokens=300,
        audio_input_tokens=800,
        completion_tokens=500,  # 100 text + 400 audio
        audio_output_tokens=400,
    )
    expected = (
        200 * D("0.0000025") + 800 * D("0.000032") + 300 * D("0.0000025") + 100 * D("0.00001") + 400 * D("0.000064")
    )
    assert ModelPrice.from_mapping("gpt-audio", gpt_audio).cost(counts) == expected == D("0.05345")
    # Without audio rates, audio tokens cost what text tokens cost.
    text_only = ModelPrice.from_mapping("m", {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"})
    assert text_only.cost(counts) == 1300 * D("0.000002") + 500 * D("0.000008")


def test_a_long_prompt_is_priced_at_its_long_context_tier() -> None:
    # gemini-2.5-pro's entry as LiteLLM's map has it (its batch and priority variants left out).
    entry = {
        "input_cost_per_token": 1.25e-06,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "input_cost_per_token_above_200k_tokens_priority": 4.5e-06,
        "cache_read_input_token_cost": 1.25e-07,
        "cache_read_input_token_cost_above_200k_tokens": 2.5e-07,
        "output_cost_per_token": 1e-05,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
    }
    price = ModelPrice.from_mapping("gemini-2.5-pro", entry)
    at_threshold = TokenCounts(prompt_tokens=200_000, cached_tokens=50_000, completion_tokens=1000)
    assert price.cost(at_threshold) == 150_000 * D("0.00000125") + 50_000 * D("0.000000125") + 1000 * D("0.00001")
    # One token more: every token of the call at the tier's rates.
    above = TokenCounts(prompt_tokens=200_001, cached_tokens=50_000, completion_tokens=1000)
    assert price.cost(above) == 150_001 * D("0.0000025") + 50_000 * D("0.00000025") + 1000 * D("0.000015")
    assert price.cost(above) == D("0.4025025")


def test_a_long_context_tier_keeps_the_rates_it_does_not_name_and_the_highest_crossed_tier_wins() -> None:
    price = ModelPrice.from_mapping(
        "m",
        {
            "input_cost_per_token": "0.000001",
            "output_cost_per_token": "0.000002",
            "input_cost_per_token_above_128k_tokens": "0.000003",
            "input_cost_per_token_above_256000_tokens": "0.000005",
            "cache_creation_input_token_cost_above_1hr": "0.000004",
        },
    )
    counts = TokenCounts(prompt_tokens=130_000, cache_creation_tokens=10_000, cache_creation_1h_tokens=10_000)
    # The 1-hour write keeps its own rate; the fresh input is at the 128k tier's.
    assert price.cost(counts) == 120_000 * D("0.000003") + 10_000 * D("0.000004")
    assert price.cost(TokenCounts(prompt_tokens=300_000, completion_tokens=1)) == 300_000 * D("0.000005") + D(
        "0.000002"
    )
    with pytest.raises(ConfigurationError, match="input_cost_per_token_above_128k_tokens"):
        ModelPrice.from_mapping("m", {"input_cost_per_token_above_128k_tokens": -1})


def test_missing_rates_fall_back_to_the_base_rates() -> None:
    price = ModelPrice.from_mapping("m", {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"})
    counts = TokenCounts(
        prompt_tokens=100,
        cached_tokens=50,
        cache_creation_tokens=20,
        cache_creation_1h_tokens=10,
        completion_tokens=10,
        reasoning_tokens=5,
    )
    assert price.cost(counts) == 100 * D("0.000002") + 10 * D("0.000008")
    # A 1-hour write without its own rate costs what a 5-minute write costs.
    price_5m = ModelPrice.from_mapping("m", {"input_cost_per_token": 1, "cache_creation_input_token_cost": 2})
    assert price_5m.cost(TokenCounts(prompt_tokens=10, cache_creation_tokens=10, cache_creation_1h_tokens=4)) == D(20)


def test_a_used_count_without_a_rate_is_unpriced_not_free() -> None:
    price = ModelPrice.from_mapping("m", {"input_cost_per_token": "0.000001"})
    assert price.cost(TokenCounts(prompt_tokens=10)) == D("0.00001")
    assert price.cost(TokenCounts(prompt_tokens=10, completion_tokens=1)) is None
    per_image = ModelPrice.from_mapping("img", {"output_cost_per_image": "0.04"})
    assert per_image.cost(TokenCounts(), images_out=3) == D("0.12")
    assert per_image.cost(TokenCounts(), images_in=1) is None


def test_zero_rates_are_free() -> None:
    t = PriceTable({"free-model": {"input_cost_per_token": 0, "output_cost_per_token": 0.0}})
    cost = t.cost("free-model", TokenCounts(prompt_tokens=1000, completion_tokens=100))
    assert cost == D(0) and cost is not None


def test_float_rates_are_read_exactly() -> None:
    t = PriceTable({"m": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07}})
    assert t["m"].input_cost_per_token == D("0.00000015")
    assert t.cost("m", TokenCounts(prompt_tokens=3, completion_tokens=7)) == D("0.00000465")
    assert t.cost("other", TokenCounts(prompt_tokens=3)) is None


# -- loading ---------------------------------------------------------------------------------------------


def test_from_dict_with_models_and_aliases_or_a_bare_model_cost_map() -> None:
    wrapped = PriceTable.from_dict({"models": {"a": RATES}, "aliases": {"b": "a"}})
    assert list(wrapped) == ["a"] and wrapped.aliases == {"b": "a"}
    bare = PriceTable.from_dict({"sample_spec": {"input_cost_per_token": 0}, "a": RATES, "note": "ignored"})
    assert list(bare) == ["a"] and len(bare) == 1


def test_a_copy_of_litellms_own_entries_loads() -> None:
    subset = {k: litellm.model_cost[k] for k in ("gpt-4o-mini", "claude-sonnet-4-5-20250929", "text-embedding-3-small")}
    t = PriceTable.from_dict(subset)
    assert t["claude-sonnet-4-5-20250929"].cache_creation_input_token_cost_above_1hr == D("0.000006")
    assert t["gpt-4o-mini"].output_cost_per_token == D("0.0000006")


def test_from_json_and_yaml_files(tmp_path: Path) -> None:
    data: dict[str, Any] = {"models": {"acme-7b": RATES}, "aliases": {"acme/acme-7b-chat": "acme-7b"}}
    json_path = tmp_path / "prices.json"
    json_path.write_text(json.dumps(data))
    yaml_path = tmp_path / "prices.yaml"
    # PyYAML reads 2e-06 as a string (YAML 1.1 floats need a dot): read exactly all the same.
    yaml_path.write_text(
        "models:\n  acme-7b:\n    input_cost_per_token: 1e-06\n    output_cost_per_token: 0.000002\n"
        "aliases:\n  acme/acme-7b-chat: acme-7b\n"
    )
    for path in (json_path, yaml_path):
        t = PriceTable.from_file(path)
        assert t.lookup("acme/acme-7b-chat") == ModelPrice(
            input_cost_per_token=D("0.000001"), output_cost_per_token=D("0.000002")
        )
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert len(PriceTable.from_file(empty)) == 0


@pytest.mark.parametrize(
    "data",
    [
        {"m": {"input_cost_per_token": -1}},
        {"m": {"input_cost_per_token": "cheap"}},
        {"m": {"input_cost_per_token": float("nan")}},
        {"models": {"m": "not a mapping"}},
        {"models": ["m"]},
        {"models": {"": RATES}},
        {"models": {"m": RATES}, "aliases": {"x": 3}},
    ],
)
def test_bad_tables_are_configuration_errors(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PriceTable.from_dict(data)


def test_bad_files_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        PriceTable.from_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid"):
        PriceTable.from_file(broken)
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("models: [unclosed")
    with pytest.raises(ConfigurationError, match="not valid"):
        PriceTable.from_file(broken_yaml)
    with pytest.raises(ConfigurationError, match="mapping"):
        PriceTable.from_dict(["a"])  # type: ignore[arg-type]


def test_a_yaml_error_names_its_line_and_column(tmp_path: Path) -> None:
    # The bad indent of 'output' is on line 4: a person fixing a long table needs the place, not the
    # parser's class name alone.
    broken = tmp_path / "prices.yml"
    broken.write_text("models:\n  gpt-x:\n    input_cost_per_token: 0.1\n   output: [1,\n")
    with pytest.raises(ConfigurationError, match=r"not valid: ParserError at line 4, column 4: expected <block end>"):
        PriceTable.from_file(broken)


# -- immutability and LiteLLM's globals --------------------------------------------------------------------


def test_the_table_is_immutable_and_owns_its_data() -> None:
    source: dict[str, Any] = {"m": dict(RATES)}
    t = PriceTable(source)
    source["m"]["input_cost_per_token"] = "9"
    source["n"] = RATES
    assert t["m"].input_cost_per_token == D("0.000001") and "n" not in t
    with pytest.raises(TypeError):
        t["x"] = ModelPrice()  # type: ignore[index]


def test_loading_and_using_a_table_leaves_litellm_model_cost_unchanged(tmp_path: Path) -> None:
    before = copy.deepcopy(litellm.model_cost)
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "acme-7b": RATES,
                    # Shadowing a model LiteLLM knows must not change LiteLLM's entry.
                    "gpt-4o-mini": {"input_cost_per_token": 1, "output_cost_per_token": 1},
                },
                "aliases": {"acme-deploy": "acme-7b"},
            }
        )
    )
    t = PriceTable.from_file(path)
    assert t.cost("acme-deploy", TokenCounts(prompt_tokens=5, completion_tokens=5)) == D("0.000015")
    assert t.cost("gpt-4o-mini", TokenCounts(prompt_tokens=1)) == D(1)
    assert litellm.model_cost == before
    assert "acme-7b" not in litellm.model_cost and "acme-deploy" not in litellm.model_cost


# -- service tiers and long-context tiers, against LiteLLM's own figures ------------------------------


def exact_sum(prompt: float, completion: float) -> Decimal:
    """LiteLLM's two halves, each read as turnledger reads LiteLLM's floats, summed exactly."""
    prompt_cost, completion_cost = to_decimal(prompt), to_decimal(completion)
    assert prompt_cost is not None and completion_cost is not None
    return prompt_cost + completion_cost


def litellm_cost(model: str, provider: str, counts: TokenCounts, tier: str | None = None) -> Decimal:
    """LiteLLM's ``cost_per_token`` for the same counts (its own map entry for ``model``)."""
    usage = Usage(
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.prompt_tokens + counts.completion_tokens,
        prompt_tokens_details={"cached_tokens": counts.cached_tokens},
        completion_tokens_details={"reasoning_tokens": counts.reasoning_tokens},
    )
    prompt, completion = litellm.cost_per_token(
        model=model, custom_llm_provider=provider, usage_object=usage, service_tier=tier
    )
    return exact_sum(prompt, completion)


def generic_cost(entry: dict[str, Any], provider: str, counts: TokenCounts, tier: str | None = None) -> Decimal:
    """LiteLLM's ``generic_cost_per_token`` (what ``cost_per_token`` runs for most providers) on ``entry``."""
    usage = Usage(
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.prompt_tokens + counts.completion_tokens,
        prompt_tokens_details={"cached_tokens": counts.cached_tokens},
        completion_tokens_details={"reasoning_tokens": counts.reasoning_tokens},
    )
    prompt, completion = generic_cost_per_token(
        model="m",
        usage=usage,
        custom_llm_provider=provider,
        service_tier=tier,
        model_info=cast(ModelInfo, {"key": "m", **entry}),
    )
    return exact_sum(prompt, completion)


@pytest.mark.parametrize(
    ("model", "provider", "tier", "counts", "expected"),
    [
        # gpt-5: flex at half the standard rates, priority (and "fast", billed as priority) at twice.
        ("gpt-5", "openai", "flex", TokenCounts(prompt_tokens=1000, completion_tokens=1000), D("0.005625")),
        ("gpt-5", "openai", "priority", TokenCounts(prompt_tokens=1000, completion_tokens=1000), D("0.0225")),
        ("gpt-5", "openai", "fast", TokenCounts(prompt_tokens=1000, completion_tokens=1000), D("0.0225")),
        ("gpt-5", "openai", "default", TokenCounts(prompt_tokens=1000, completion_tokens=1000), D("0.01125")),
        ("gpt-5", "openai", "Flex", TokenCounts(prompt_tokens=1000, completion_tokens=1000), D("0.005625")),
        # Cache reads and reasoning at the tier's rates too.
        (
            "gpt-5",
            "openai",
            "flex",
            TokenCounts(prompt_tokens=1000, cached_tokens=400, completion_tokens=100, reasoning_tokens=60),
            600 * D("0.000000625") + 400 * D("0.0000000625") + 100 * D("0.000005"),
        ),
        # gemini-2.5-pro above 200k: the priority tier's long-context rates...
        (
            "gemini-2.5-pro",
            "gemini",
            "priority",
            TokenCounts(prompt_tokens=250_000, completion_tokens=1000),
            D("1.152"),
        ),
        (
            "gemini-2.5-pro",
            "gemini",
            "priority",
            TokenCounts(prompt_tokens=250_000, cached_tokens=50_000, completion_tokens=1000),
            200_000 * D("0.0000045") + 50_000 * D("0.00000045") + 1000 * D("0.000027"),
        ),
        # ...flex has none above 200k: the standard long-context rates, as LiteLLM bills it; below, flex's.
        ("gemini-2.5-pro", "gemini", "flex", TokenCounts(prompt_tokens=250_000, completion_tokens=1000), D("0.64")),
        ("gemini-2.5-pro", "gemini", "flex", TokenCounts(prompt_tokens=100_000, completion_tokens=1000), D("0.0675")),
    ],
)
def test_a_service_tier_is_priced_at_its_rates_as_litellm_prices_it(
    model: str, provider: str, tier: str, counts: TokenCounts, expected: Decimal
) -> None:
    price = ModelPrice.from_mapping(model, litellm.model_cost[model])
    assert price.cost(counts, service_tier=tier, provider=provider) == expected
    assert litellm_cost(model, provider, counts, tier) == expected
    by_table = PriceTable({f"acme-{model}": litellm.model_cost[model]})
    assert by_table.cost(f"acme-{model}", counts, provider=provider, service_tier=tier) == expected


@pytest.mark.parametrize(
    ("tier_rates", "expected"),
    [
        # Only the tier's input is named: output and reasoning keep their standard rates.
        ({"input_cost_per_token_flex": 5e-07}, 1000 * D("0.0000005") + 40 * D("0.000002") + 60 * D("0.000003")),
        # The tier names an output rate: reasoning is billed at it, not at the standard reasoning rate.
        (
            {"input_cost_per_token_flex": 5e-07, "output_cost_per_token_flex": 1e-06},
            1000 * D("0.0000005") + 100 * D("0.000001"),
        ),
        (
            {"output_cost_per_token_flex": 1e-06, "output_cost_per_reasoning_token_flex": 1.5e-06},
            1000 * D("0.000001") + 40 * D("0.000001") + 60 * D("0.0000015"),
        ),
    ],
)
def test_a_rate_the_service_tier_does_not_name_is_the_standard_one(
    tier_rates: dict[str, float], expected: Decimal
) -> None:
    entry: dict[str, Any] = {
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "output_cost_per_reasoning_token": 3e-06,
        **tier_rates,
    }
    counts = TokenCounts(prompt_tokens=1000, completion_tokens=100, reasoning_tokens=60)
    assert ModelPrice.from_mapping("m", entry).cost(counts, service_tier="flex") == expected
    assert generic_cost(entry, "openai", counts, "flex") == expected


def test_a_service_tier_the_entry_has_no_rates_for_is_unpriced_and_billed_at_the_standard_rates() -> None:
    price = ModelPrice.from_mapping("m", {**RATES, "input_cost_per_token_flex": "0.0000005"})
    assert price.for_service_tier("flex") is not None
    assert price.for_service_tier("priority") is None
    assert price.for_service_tier("scale") is None  # a tier LiteLLM's schema has no rates for
    for standard in (None, "default", "standard", "auto", "DEFAULT"):
        assert price.for_service_tier(standard) is price
    counts = TokenCounts(prompt_tokens=1000, completion_tokens=10)
    assert price.cost(counts, service_tier="priority") == 1000 * D("0.000001") + 10 * D("0.000002")
    with pytest.raises(ConfigurationError, match="input_cost_per_token_priority"):
        ModelPrice.from_mapping("m", {**RATES, "input_cost_per_token_priority": -1})


def test_xai_bills_its_long_context_tier_from_the_threshold_itself() -> None:
    entry = litellm.model_cost["xai/grok-4.3"]
    at_threshold = TokenCounts(prompt_tokens=200_000, completion_tokens=1000)
    expected = 200_000 * D("0.0000025") + 1000 * D("0.000005")
    assert ModelPrice.from_mapping("grok-4.3", entry).cost(at_threshold, provider="xai") == expected
    assert litellm_cost("grok-4.3", "xai", at_threshold) == expected == D("0.505")
    assert PriceTable({"xai/grok-4.3": entry}).cost("xai/grok-4.3", at_threshold) == expected
    # Any other provider's tier starts one token past it.
    below = 200_000 * D("0.00000125") + 1000 * D("0.0000025")
    assert ModelPrice.from_mapping("grok-4.3", entry).cost(at_threshold, provider="openai") == below
    assert generic_cost(entry, "openai", at_threshold) == below


def test_a_higher_long_context_tier_keeps_the_lower_tiers_rates_it_does_not_name() -> None:
    entry: dict[str, Any] = {
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "input_cost_per_token_above_128k_tokens": 3e-06,
        "output_cost_per_token_above_128k_tokens": 6e-06,
        "input_cost_per_token_above_256k_tokens": 5e-06,
    }
    counts = TokenCounts(prompt_tokens=300_000, completion_tokens=1000)
    # Output at the 128k tier's rate, which the 256k tier does not name (not back at the base rate).
    expected = 300_000 * D("0.000005") + 1000 * D("0.000006")
    assert ModelPrice.from_mapping("m", entry).cost(counts) == expected
    assert generic_cost(entry, "openai", counts) == expected == D("1.506")

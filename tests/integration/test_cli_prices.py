"""``turnledger prices``: the rates and a sample call's exact cost, through the real entry point."""

from __future__ import annotations

import json

from tests.integration.cli_run import one_line_error, run_cli


def test_prices_json_gives_exact_rates_and_sample_cost() -> None:
    result = run_cli("prices", "gpt-4o-mini", "openai/text-embedding-3-small", "--format", "json")
    assert result.returncode == 0, result.stderr
    mini, embedding = json.loads(result.stdout)
    assert (mini["model"], mini["source"], mini["matched"]) == ("gpt-4o-mini", "litellm", "gpt-4o-mini")
    assert mini["input_cost_per_token"] == "0.00000015"
    assert mini["output_cost_per_token"] == "0.0000006"
    # 1,000 x $0.15/1M + 500 x $0.60/1M, exact.
    assert mini["sample_cost_usd"] == "0.00045000"
    # A provider prefix is looked through, and says so.
    assert (embedding["source"], embedding["matched"]) == ("litellm", "text-embedding-3-small")
    assert embedding["sample_cost_usd"] == "0.00002000"


def test_prices_table_shows_rates_per_million_and_a_custom_sample() -> None:
    result = run_cli("prices", "gpt-4o-mini", "--prompt-tokens", "12000", "--completion-tokens", "800")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("gpt-4o-mini"))
    # 12,000 x 0.15/1M + 800 x 0.60/1M = 0.0018 + 0.00048
    assert row.split() == ["gpt-4o-mini", "litellm", "$0.15", "$0.60", "$0.075", "$0.00228"]
    assert "12,000 in" in result.stdout


def test_unknown_model_is_unpriced_not_free_and_exits_1() -> None:
    result = run_cli("prices", "gpt-4o-mini", "acme-llm-7b", "--format", "csv")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model,source,matched,")
    unknown = lines[2].split(",")
    assert unknown[0] == "acme-llm-7b"
    assert unknown[1] == "" and unknown[-1] == ""  # no source, no cost: unknown, not $0
    assert "no price for acme-llm-7b" in one_line_error(result)


def test_bad_format_and_negative_tokens_are_usage_errors() -> None:
    bad_format = run_cli("prices", "gpt-4o-mini", "--format", "yaml")
    assert bad_format.returncode == 2
    assert "Traceback" not in bad_format.stderr and "yaml" in bad_format.stderr
    negative = run_cli("prices", "gpt-4o-mini", "--prompt-tokens", "-5")
    assert negative.returncode == 2
    assert "Traceback" not in negative.stderr

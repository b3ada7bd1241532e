"""``turnledger prices``: the rates turnledger would use, where they come from, and a sample call's exact cost."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

import turnledger
from turnledger.price_map import PRICE_MAP_CACHE_ENV, PRICE_MAP_SOURCE_ENV, bundled_price_map

from .cli_run import invoke, one_line_error, run_cli
from .readme_blocks import readme_block, readme_python


@pytest.fixture(autouse=True)
def no_price_map_of_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prices`` reads the map ``refresh_price_map`` would: never this machine's own source or cache here."""
    monkeypatch.delenv(PRICE_MAP_SOURCE_ENV, raising=False)
    monkeypatch.setenv(PRICE_MAP_CACHE_ENV, str(tmp_path / "price-map-cache" / "model_prices.json"))


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "models:\n"
        "  acme-llm-7b:\n"
        "    input_cost_per_token: 0.0000002\n"
        "    output_cost_per_token: 0.0000008\n"
        "  gpt-4o-mini:\n"  # LiteLLM knows this one, and LiteLLM's price comes first in the chain
        "    input_cost_per_token: 1\n"
        "aliases:\n"
        "  my-deployment: acme-llm-7b\n"
    )
    return path


def test_prices_through_the_entry_point_exact_from_litellm_and_the_users_table(price_file: Path) -> None:
    result = run_cli(
        "prices", "gpt-4o-mini", "openai/text-embedding-3-small", "azure/my-deployment",
        "--price-table", str(price_file), "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    mini, embedding, deployment = json.loads(result.stdout)
    assert (mini["source"], mini["matched"]) == ("litellm", "gpt-4o-mini")
    assert (mini["input_cost_per_token"], mini["output_cost_per_token"]) == ("0.00000015", "0.0000006")
    # 1,000 x $0.15/1M + 500 x $0.60/1M, exact.
    assert mini["sample_cost_usd"] == "0.00045000"
    # A provider prefix is looked through, and says so.
    assert (embedding["source"], embedding["matched"]) == ("litellm", "text-embedding-3-small")
    assert embedding["sample_cost_usd"] == "0.00002000"
    assert deployment["source"] == "price_table"
    assert (deployment["matched"], deployment["via_alias"]) == ("acme-llm-7b", "my-deployment")
    # 1,000 x $0.20/1M + 500 x $0.80/1M
    assert deployment["sample_cost_usd"] == "0.0006000"


def test_unknown_model_is_unpriced_not_free_and_exits_1() -> None:
    result = invoke("prices", "gpt-4o-mini", "acme-llm-7b", "--format", "csv")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model,source,matched,")
    unknown = lines[2].split(",")
    assert unknown[0] == "acme-llm-7b"
    assert unknown[1] == "" and unknown[-1] == ""  # no source, no cost: unknown, not $0
    assert "no price for acme-llm-7b" in one_line_error(result)


def test_prices_table_shows_rates_per_million_and_a_custom_sample(price_file: Path) -> None:
    result = invoke(
        "prices", "gpt-4o-mini", "acme-llm-7b", "--prompt-tokens", "12000", "--completion-tokens", "800",
        "--price-table", str(price_file),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    # 12,000 x 0.15/1M + 800 x 0.60/1M = 0.0018 + 0.00048
    assert rows["gpt-4o-mini"] == ["gpt-4o-mini", "litellm", "$0.15", "$0.60", "$0.075", "$0.00228"]
    assert rows["acme-llm-7b"] == ["acme-llm-7b", "your", "table", "$0.20", "$0.80", "-", "$0.00304"]
    assert "12,000 in" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


def test_a_bad_price_table_is_a_one_line_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {"m": {"input_cost_per_token": -1}}}')
    for path, message in ((bad, "must be a non-negative number"), (tmp_path / "none.json", "cannot read")):
        result = invoke("prices", "m", "--price-table", str(path))
        assert result.exit_code == 2
        assert message in one_line_error(result)


def test_the_readme_price_table_and_its_code_price_the_model_and_its_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heading = "**Price tables.**"
    (tmp_path / "prices.yaml").write_text(readme_block(heading, "yaml"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"turnledger": turnledger}
    installed: list[turnledger.TokenTrackingCallback] = []
    monkeypatch.setattr(turnledger, "install", installed.append)  # the example's install, kept for a look
    exec(readme_python(heading), namespace)
    [callback] = installed
    assert isinstance(callback, turnledger.TokenTrackingCallback)
    assert isinstance(namespace["table"], turnledger.PriceTable)

    result = invoke("prices", "acme-llm-7b", "my-deployment", "--price-table", "prices.yaml", "--format", "json")
    assert result.exit_code == 0, result.output
    model, alias = json.loads(result.stdout)
    assert (model["source"], alias["source"], alias["matched"]) == ("price_table", "price_table", "acme-llm-7b")
    for row in (model, alias):
        assert (row["input_cost_per_token"], row["output_cost_per_token"]) == ("0.0000002", "0.0000008")
        assert row["sample_cost_usd"] == "0.0006000"  # 1,000 x $0.20/1M + 500 x $0.80/1M


def test_prices_shows_the_rates_of_the_map_an_app_refreshes_to_and_bundled_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = bundled_price_map()
    newer["gpt-4o-mini"] = {**newer["gpt-4o-mini"], "input_cost_per_token": 1e-5}
    source = tmp_path / "newer.json"
    source.write_text(json.dumps(newer), encoding="utf-8")
    monkeypatch.setenv(PRICE_MAP_SOURCE_ENV, str(source))

    refreshed = invoke("prices", "gpt-4o-mini", "--format", "json")
    assert refreshed.exit_code == 0, refreshed.output
    [row] = json.loads(refreshed.stdout)
    # What refresh_price_map() makes LiteLLM bill at, not the $0.15/1M bundled with it.
    assert (row["source"], row["input_cost_per_token"]) == ("litellm", "0.00001")
    assert row["sample_cost_usd"] == "0.0103000"  # 1,000 x $10/1M + 500 x $0.60/1M
    assert row["price_map"] == "source"
    # Read again within the cache's max age: from the cache the first read wrote, as an app would.
    cached = invoke("prices", "gpt-4o-mini")
    assert cached.exit_code == 0, cached.output
    assert "$10.00" in cached.stdout
    assert f"LiteLLM's map: the cached copy {tmp_path / 'price-map-cache' / 'model_prices.json'}" in cached.stdout

    bundled = invoke("prices", "gpt-4o-mini", "--bundled", "--format", "json")
    assert bundled.exit_code == 0, bundled.output
    [row] = json.loads(bundled.stdout)
    assert (row["price_map"], row["input_cost_per_token"], row["sample_cost_usd"]) == (
        "bundled",
        "0.00000015",
        "0.00045000",
    )
    source.unlink()
    (tmp_path / "price-map-cache" / "model_prices.json").unlink()
    unreadable = invoke("prices", "gpt-4o-mini")
    assert f"LiteLLM's map: bundled with LiteLLM {version('litellm')}\n" in unreadable.stdout
    assert f"${PRICE_MAP_SOURCE_ENV} not used" in unreadable.stderr


def test_an_unreadable_source_is_said_once_on_stderr_in_the_commands_words(tmp_path: Path) -> None:
    # Before: the library's log line ("could not read the price map source (FileNotFoundError) (logged
    # once per cause)") went raw to stderr, and the note that the source failed sat in stdout's last line.
    env = {
        PRICE_MAP_SOURCE_ENV: str(tmp_path / "no-such-map.json"),
        PRICE_MAP_CACHE_ENV: str(tmp_path / "cache" / "model_prices.json"),
    }
    table = run_cli("prices", "gpt-4o-mini", env=env)
    assert table.returncode == 0, table.stderr
    assert table.stderr.splitlines() == [
        f"warning: ${PRICE_MAP_SOURCE_ENV} not used, the rates are from the map bundled with LiteLLM "
        f"{version('litellm')}: could not read the price map source (FileNotFoundError)"
    ]
    assert table.stdout.splitlines()[-1] == f"LiteLLM's map: bundled with LiteLLM {version('litellm')}"


def test_an_unreadable_source_warns_once_beside_json_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from turnledger._logging import reset_warnings

    (tmp_path / "not-a-map.json").write_text("[1, 2]", encoding="utf-8")
    monkeypatch.setenv(PRICE_MAP_SOURCE_ENV, str(tmp_path / "not-a-map.json"))
    reset_warnings()  # the library logs a cause once per process: this one must be heard now
    result = invoke("prices", "gpt-4o-mini", "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["price_map"] == "bundled"
    assert result.stderr.splitlines() == [
        f"warning: ${PRICE_MAP_SOURCE_ENV} not used, the rates are from the map bundled with LiteLLM "
        f"{version('litellm')}: price map source is not a mapping of model entries; ignored"
    ]

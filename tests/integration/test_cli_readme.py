"""The README's integration example runs as written, against the fake provider instead of OpenAI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import litellm
import pytest
import yaml

import turnledger
from turnledger import subscribers
from turnledger.fake_provider import FakeProvider

from .cli_run import invoke, run_cli
from .readme_blocks import readme_block, readme_python

URL_DEADLINE_S = 60


def test_the_fake_provider_command_prints_its_url_even_to_a_pipe_and_answers(tmp_path: Path) -> None:
    # The README's "run `python -m turnledger.fake_provider` ... with the URL it prints": piped or
    # redirected (a supervisor, `> url.txt &`), stdout is block-buffered and the URL never came out.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    server = subprocess.Popen(
        [sys.executable, "-m", "turnledger.fake_provider"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        # A deadline only so that a URL that never comes fails the test instead of hanging it.
        readable, _, _ = select.select([server.stdout], [], [], URL_DEADLINE_S)
        assert readable, "the fake provider printed no URL"
        base_url = server.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url), base_url
        answer = litellm.completion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], api_base=base_url, api_key="sk-fake"
        )
        assert answer.choices[0].message.content == "Hello from the fake provider."
    finally:
        server.terminate()
        server.wait(timeout=30)
    helped = subprocess.run(
        [sys.executable, "-m", "turnledger.fake_provider", "--help"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert helped.returncode == 0 and "usage:" in helped.stdout  # not a server that never returns


def test_the_readme_example_records_a_turn_the_report_then_shows(fake_provider: FakeProvider, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    migrated = run_cli("migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr

    script = tmp_path / "app.py"
    script.write_text(readme_python("## Use it in your app"), encoding="utf-8")
    env = {
        "TURNLEDGER_DATABASE_URL": url,
        # LiteLLM's own settings for the OpenAI endpoint: the example's code is untouched.
        "OPENAI_BASE_URL": fake_provider.base_url,
        "OPENAI_API_KEY": "sk-fake-not-a-real-key",
        "PATH": "/usr/bin:/bin",
    }
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    # The fake provider's default usage: 9 + 5 tokens for the chat, 4 for the embedding; priced from
    # LiteLLM's bundled map: 9 x $0.15/1M + 5 x $0.60/1M + 4 x $0.02/1M.
    assert run.stdout.split() == ["2", "18", "0.00000443", "0"]

    report = invoke("report", "--by", "user", "--since", "7d", "--format", "json", "--database-url", url)
    assert report.exit_code == 0, report.output
    [row] = json.loads(report.stdout)
    assert (row["key"], row["calls"], row["total_tokens"], row["cost_usd"]) == ("u-42", 2, 18, "0.00000443")


async def test_the_readme_proxy_module_loads_as_the_proxy_loads_it_and_logs_each_call(
    fake_provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything short of the proxy server: LiteLLM's own loader for `callbacks:` entries, then a call."""
    from litellm.proxy.types_utils.utils import get_instance_fn

    monkeypatch.setattr(subscribers, "_global_subscribers", ())  # the module subscribes globally
    ledger = tmp_path / "calls.jsonl"
    module = readme_python("## With the LiteLLM proxy")
    assert '"/var/log/turnledger/calls.jsonl"' in module
    (tmp_path / "custom_callbacks.py").write_text(module.replace("/var/log/turnledger/calls.jsonl", str(ledger)))
    config = readme_block("## With the LiteLLM proxy", "yaml")
    assert yaml.safe_load(config)["litellm_settings"]["callbacks"] == "custom_callbacks.proxy_handler_instance"
    (tmp_path / "config.yaml").write_text(config)

    handler = get_instance_fn("custom_callbacks.proxy_handler_instance", config_file_path=str(tmp_path / "config.yaml"))
    assert isinstance(handler, turnledger.TokenTrackingCallback)
    turnledger.install(handler)  # what the proxy does with the instances it loads: litellm.callbacks
    await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "What is a token?"}],
        api_base=fake_provider.base_url,
        api_key="sk-fake-not-a-real-key",
    )
    for _ in range(200):  # the success callback runs just after the call returns
        if ledger.exists() and ledger.read_text():
            break
        await asyncio.sleep(0.01)
    [line] = [json.loads(raw) for raw in ledger.read_text().splitlines()]
    assert "turn" not in line  # no scoped_turn in a proxy: one line per call, no turn labels
    call = line["call"]
    assert (call["model"], call["prompt_tokens"], call["completion_tokens"]) == ("gpt-4o-mini", 9, 5)
    assert (call["cost_usd"], call["cost_source"]) == ("0.00000435", "response_cost")
    assert "sk-fake" not in ledger.read_text() and "What is a token" not in ledger.read_text()

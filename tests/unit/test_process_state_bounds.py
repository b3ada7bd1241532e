"""Process-wide state stays bounded however many calls a long-running process makes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import litellm
import pytest

import turnledger
from turnledger import PriceTable, RecordFlag, _logging, fake_provider
from turnledger._logging import problem_counts
from turnledger.pricing import price_call
from turnledger.usage import normalize_usage


def test_warn_once_remembers_a_bounded_number_of_models_and_loses_no_count() -> None:
    # A proxy passing its clients' model strings sees a new model per call: an implausible cost for
    # each one must not leave a warn-once key per call behind.
    bound = getattr(_logging, "MAX_DETAILED_CAUSES", 1000)
    models = [f"ft:my-model-{i}" for i in range(bound + 200)]
    table = PriceTable({m: {"input_cost_per_token": "1000000", "output_cost_per_token": 0} for m in models})
    counts = normalize_usage({"usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    for model in [*models, models[0], models[-1]]:
        cost, _source, flags = price_call({}, None, counts, model=model, price_table=table)
        assert cost is None and RecordFlag.IMPLAUSIBLE_COST in flags

    # Each model also failed LiteLLM's cost_per_token stage: another cause, the same bound for both.
    families = {key.split(":", 2)[1] for key in problem_counts}
    assert families == {"implausible", "cost_per_token"}
    assert len(_logging._seen) <= bound + len(families)
    assert len(problem_counts) <= bound + len(families)
    # Every hit is counted: under its own model while the bound allows, else under "*", never another model's.
    implausible = {k: n for k, n in problem_counts.items() if k.startswith("pricing:implausible:")}
    assert sum(implausible.values()) == len(models) + 2
    assert problem_counts[f"pricing:implausible:{models[0]}"] == 2
    # The last model came past the bound: counted with the others past it, not under a key of its own.
    assert f"pricing:implausible:{models[-1]}" not in problem_counts
    assert problem_counts["pricing:implausible:*"] >= 200


def test_the_fake_provider_keeps_a_bounded_number_of_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # Run as a server until Ctrl-C (python -m turnledger.fake_provider), it must not keep every request.
    bound = 20
    monkeypatch.setattr(fake_provider, "MAX_KEPT_REQUESTS", bound, raising=False)
    provider = fake_provider.FakeProvider()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    with provider, httpx.Client() as client:
        for i in range(bound + 5):
            if i == bound + 4:
                body = {**body, "model": "the-last-one"}
            client.post(f"{provider.base_url}/chat/completions", json=body).raise_for_status()
        assert len(provider.requests) == bound
        assert provider.requests[-1].body["model"] == "the-last-one"


def test_calls_made_in_turns_leave_no_process_wide_binding_behind() -> None:
    # Each call carries its turn in LiteLLM's details of it: nothing per call is kept process-wide, so
    # nothing there needs evicting (an evicted binding let a late event land in another user's turn).
    from turnledger.accumulator import call_bindings

    cb = turnledger.TokenTrackingCallback(name="bounds")
    before = len(call_bindings)
    response = litellm.ModelResponse(
        model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
    for _ in range(50):
        with turnledger.scoped_turn() as turn:
            for _ in range(20):
                kwargs: dict[str, Any] = {
                    "litellm_call_id": uuid.uuid4().hex,
                    "model": "gpt-4o-mini",
                    "custom_llm_provider": "openai",
                    "call_type": "acompletion",
                    "response_cost": 0.000015,
                }
                cb.log_pre_api_call("gpt-4o-mini", None, kwargs)
                cb.log_success_event(kwargs, response, datetime.now(), datetime.now())
        assert len(turn.calls) == 20
    assert len(call_bindings) == before

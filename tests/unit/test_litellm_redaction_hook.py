"""The callback's short-cut of LiteLLM's per-event redaction hook
(``redact_standard_logging_payload_from_model_call_details``): it skips LiteLLM's version only where
that version has nothing to do, and gives what LiteLLM's gives everywhere else."""

from __future__ import annotations

import copy
from typing import Any

import litellm
import pytest
from litellm.integrations.custom_logger import CustomLogger

import turnledger


def _details() -> dict[str, Any]:
    return {
        "litellm_call_id": "c1",
        "model": "gpt-4o-mini",
        "litellm_params": {"model": "openai/gpt-4o-mini", "metadata": {}},
        "standard_logging_object": {
            "messages": [{"role": "user", "content": "Say hello."}],
            "response": {"choices": [{"message": {"role": "assistant", "content": "Hello!"}}]},
            "model": "gpt-4o-mini",
        },
    }


def test_with_nothing_to_redact_litellms_own_version_is_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[dict[str, Any]] = []

    def litellms(self: CustomLogger, model_call_details: dict[str, Any]) -> dict[str, Any]:
        ran.append(model_call_details)
        return model_call_details

    monkeypatch.setattr(CustomLogger, "redact_standard_logging_payload_from_model_call_details", litellms)
    cb = turnledger.TokenTrackingCallback(name="redaction-skip")
    details = _details()
    assert cb.redact_standard_logging_payload_from_model_call_details(model_call_details=details) is details
    assert ran == []


def _without_fresh_ids(details: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM redacts a response into a new one, with an id and creation time of its own each time."""
    out = copy.deepcopy(details)
    response = out.get("standard_logging_object", {}).get("response")
    if isinstance(response, dict):
        response.pop("id", None)
        response.pop("created", None)
    return out


@pytest.mark.parametrize(
    ("turn_off_message_logging", "excluded_fields"),
    [(False, None), (False, []), (True, None), (False, ["messages"]), (True, ["response", "model"]), (None, None)],
)
def test_it_gives_what_litellms_own_version_gives(
    monkeypatch: pytest.MonkeyPatch, turn_off_message_logging: Any, excluded_fields: list[str] | None
) -> None:
    monkeypatch.setattr(litellm, "standard_logging_payload_excluded_fields", excluded_fields, raising=False)
    cb = turnledger.TokenTrackingCallback(name="redaction-same")
    plain = CustomLogger()
    cb.turn_off_message_logging = plain.turn_off_message_logging = turn_off_message_logging
    ours = cb.redact_standard_logging_payload_from_model_call_details(model_call_details=_details())
    litellms = plain.redact_standard_logging_payload_from_model_call_details(model_call_details=_details())
    assert _without_fresh_ids(ours) == _without_fresh_ids(litellms)
    untouched = _details()
    given = copy.deepcopy(untouched)
    cb.redact_standard_logging_payload_from_model_call_details(model_call_details=given)
    assert given == untouched, "the details LiteLLM passes are never changed in place"


@pytest.mark.parametrize("instance_has_it", [True, False])
@pytest.mark.parametrize("litellm_has_it", [True, False])
def test_a_setting_that_is_missing_reads_as_its_default(
    monkeypatch: pytest.MonkeyPatch, instance_has_it: bool, litellm_has_it: bool
) -> None:
    # The settings are read as attributes, a missing one as getattr's default: nothing to redact.
    if litellm_has_it:
        monkeypatch.setattr(litellm, "standard_logging_payload_excluded_fields", None, raising=False)
    else:
        monkeypatch.delattr(litellm, "standard_logging_payload_excluded_fields", raising=False)
    ran: list[dict[str, Any]] = []

    def litellms(self: CustomLogger, model_call_details: dict[str, Any]) -> dict[str, Any]:
        ran.append(model_call_details)
        return model_call_details

    monkeypatch.setattr(CustomLogger, "redact_standard_logging_payload_from_model_call_details", litellms)
    cb = turnledger.TokenTrackingCallback(name="redaction-missing")
    if not instance_has_it:
        del cb.turn_off_message_logging
    details = _details()
    assert cb.redact_standard_logging_payload_from_model_call_details(model_call_details=details) is details
    assert ran == []

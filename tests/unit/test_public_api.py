"""The public API is a promise: these names, re-exported from ``turnledger``, and one exception root."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import turnledger

PUBLIC_API = [
    "BatchWriter",
    "CallKind",
    "CallStatus",
    "ConfigurationError",
    "CostSource",
    "CreditError",
    "CreditLedger",
    "InsufficientCredits",
    "JsonlLedger",
    "ModelMetadata",
    "ModelPrice",
    "PendingCall",
    "PriceMap",
    "PriceMapOrigin",
    "PriceTable",
    "RecordFlag",
    "ReplayReport",
    "ReportBy",
    "ReportRow",
    "Reservation",
    "ReservationClosed",
    "SchemaMissingError",
    "StorageError",
    "TABLE_NAMES",
    "TokenCallRecord",
    "TokenTrackingCallback",
    "TurnCharge",
    "TurnIdReused",
    "TurnKeyReused",
    "TurnRows",
    "TurnTokenAccumulator",
    "TurnledgerError",
    "UnpricedCallsError",
    "__version__",
    "credit_scope",
    "get_current_accumulator",
    "insert_turn_rows",
    "install",
    "is_installed",
    "load_price_map",
    "make_engine",
    "record_token_usage",
    "record_turn",
    "refresh_price_map",
    "register_model_usage_metadata",
    "replay_outbox",
    "reports",
    "scoped_turn",
    "session_factory",
    "start_turn",
    "subscribe",
    "token_tracker",
    "turn_rows",
    "uninstall",
    "usage_report",
]

SEED_NAMES = {
    # Applications written against the seed import these; they must never move or be renamed.
    "TokenTrackingCallback",
    "token_tracker",
    "install",
    "uninstall",
    "TurnTokenAccumulator",
    "TokenCallRecord",
    "scoped_turn",
    "start_turn",
    "get_current_accumulator",
    "register_model_usage_metadata",
    "record_token_usage",
}


def test_all_is_pinned_and_sorted() -> None:
    assert turnledger.__all__ == PUBLIC_API
    assert sorted(turnledger.__all__) == turnledger.__all__


def test_every_public_name_resolves() -> None:
    for name in turnledger.__all__:
        assert getattr(turnledger, name) is not None, name


def test_seed_names_are_kept() -> None:
    assert set(turnledger.__all__) >= SEED_NAMES


def test_every_exception_has_one_root() -> None:
    errors = [
        obj
        for name in turnledger.__all__
        if inspect.isclass(obj := getattr(turnledger, name)) and issubclass(obj, BaseException)
    ]
    assert errors
    assert all(issubclass(e, turnledger.TurnledgerError) for e in errors)


def test_the_callback_names_are_the_callback_modules_own() -> None:
    from turnledger import callback

    for name in ("TokenTrackingCallback", "install", "is_installed", "token_tracker", "uninstall"):
        assert getattr(turnledger, name) is getattr(callback, name), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        # The ignore is also a check: with warn_unused_ignores, mypy fails here if it ever stops
        # reporting a misspelled name (as it would if it could see the lazy __getattr__).
        turnledger.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_dir_lists_the_lazy_names_before_their_first_use() -> None:
    probe = (
        "import sys, turnledger; "
        "print(sorted(set(turnledger.__all__) - set(dir(turnledger))), 'litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[] False", out.stdout


def test_the_package_and_the_cli_import_without_litellm() -> None:
    """LiteLLM takes about 2 s to import: `turnledger report`, `migrate` and `replay` must not pay for it,
    and a process that only reads or writes the ledger need not load it."""
    probe = (
        "import sys, turnledger, turnledger.cli, turnledger.store.writer; "
        "print(sorted(m for m in sys.modules if m == 'litellm' or m.startswith('litellm.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
    # The callback names still load it, on first use.
    probe = "import sys, turnledger; turnledger.install; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "True", out.stdout

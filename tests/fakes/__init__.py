"""Test doubles. The fake provider lives in the package so that `turnledger demo` can use it too."""

from turnledger.fake_provider import FakeProvider, Script

__all__ = ["FakeProvider", "Script"]

"""The callback's reading of LiteLLM's timestamps (naive local ``datetime.now()`` values)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from turnledger.callback import _utc


@pytest.fixture(params=["Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_naive_local_times_read_as_astimezone_reads_them(local_zone: str) -> None:
    # A year of local times 53 minutes apart, both folds, crossing both DST changes (where there are
    # any); times in the spring-forward gap are left out: datetime.now() never returns one.
    start = datetime(2026, 1, 1, 0, 0, 0, 123457)
    checked = 0
    for step in range(0, 365 * 24 * 60, 53):
        for fold in (0, 1):
            local = (start + timedelta(minutes=step)).replace(fold=fold)
            if local.astimezone(UTC).astimezone().replace(tzinfo=None) != local:
                continue  # in the gap
            assert _utc(local) == local.astimezone(UTC), local
            assert _utc(local).tzinfo is UTC  # type: ignore[union-attr]
            checked += 1
    assert checked > 19_000


def test_aware_times_and_epoch_seconds() -> None:
    aware = datetime(2026, 11, 25, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert _utc(aware) == datetime(2026, 11, 25, 10, 0, 0, 5, tzinfo=UTC)
    assert _utc(aware).tzinfo is UTC  # type: ignore[union-attr]
    utc = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert _utc(utc) == utc
    assert _utc(1795624083.166761) == datetime(2026, 11, 25, 16, 28, 3, 166761, tzinfo=UTC)
    assert _utc(None) is None
    assert _utc(True) is None
    assert _utc("2026-11-25") is None

"""The callback's reading of LiteLLM's timestamps (naive local ``datetime.now()`` values)."""

from __future__ import annotations

import random
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


@pytest.fixture(params=["UTC", "Etc/UTC", "Africa/Abidjan", "Africa/Sao_Tome", "America/New_York"])
def any_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def _round_trip(local: datetime) -> datetime | None:
    """The plain statement of the rule: the naive time read as local time, through its timestamp."""
    try:
        return datetime.fromtimestamp(local.timestamp(), UTC)
    except (OverflowError, ValueError, OSError):
        return None


def test_naive_times_read_as_their_timestamp_reads_them_in_any_zone(any_zone: str) -> None:
    # A UTC zone takes naive times as UTC without the round trip: the same datetime, microseconds, fold
    # and all; zones with an offset of 0 today that had another once (Abidjan before 1912, Sao Tome in
    # 2018) and a zone with DST do not.
    rnd = random.Random(20261126)
    values = [datetime(2018, 6, 1, 12), datetime(1905, 6, 1, 12), datetime(2026, 11, 26, 15, 0, 0, 999999)]
    values += [datetime(2026, 1, 1, fold=1), datetime(1901, 1, 1), datetime(2199, 12, 31, 23, 59, 59, 999999)]
    values += [datetime.min, datetime.max, datetime(1, 1, 1, 0, 0, 0, 1), datetime(2300, 1, 1, 0, 0, 0, 123457)]
    values += [datetime.min + timedelta(microseconds=rnd.randrange(315_537_897_600_000_000)) for _ in range(3000)]
    values += [datetime(1890, 1, 1) + timedelta(microseconds=rnd.randrange(10**16)) for _ in range(3000)]
    for local in values:
        got, want = _utc(local), _round_trip(local)
        assert got == want, local
        if got is not None and want is not None:
            assert (got.tzinfo, got.fold) == (want.tzinfo, want.fold), local


def test_a_zone_set_after_utc_is_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    local = datetime(2026, 7, 1, 12, 0)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert _utc(local) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        assert _utc(local) == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()
        assert _utc(local) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    finally:
        monkeypatch.undo()
        time.tzset()

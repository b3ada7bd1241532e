"""Random turns for the report differential test, and the breakdowns computed from them in plain Python.

The oracle reads only what the test generated (never the database) and follows the documented rules:
a key is the id as the writers store it (NULs removed, lone surrogates as ``?``, an id too long for
its column shortened to end in ``~`` and a hash of the whole); a day is the UTC calendar day of the
turn's ``created_at``; ``since`` is inclusive and ``until`` exclusive; a cost is the exact sum of the
priced calls, ``None`` when no call of the group was priced; per model, spend without call rows is
the ``None`` key, left out when it is all zero.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Context, Decimal
from typing import Any, TypedDict

from turnledger import CallStatus, CostSource, ReportBy, ReportRow, TokenCallRecord, TurnTokenAccumulator
from turnledger.store.reports import ReportFilters

EXACT = Context(prec=1000)
"""Sums in plain Python, never rounded (the default context keeps only 28 digits)."""
ID_LENGTH = 255
USAGE_TYPE_LENGTH = 64
COUNTERS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_creation_tokens",
            "reasoning_tokens", "unpriced_calls", "failed_calls", "abandoned_calls")  # fmt: skip

USERS = (
    "alice",
    "bob",
    "Zoë ünïcödé",
    "用户-七",
    "emoji 🎉🧾",
    "trailing space ",
    "",
    "u" * ID_LENGTH,  # fits exactly
    "ü" * 300,  # stored shortened
    "ü" * 299,  # a distinct long id: shortened to a distinct key
    "nul\x00inside",
    "lone \ud800 surrogate",
    None,
)
THREADS = ("t-1", "t-2", "ß-thread", "t" * 400, "", None)
TENANTS = ("acme", "globex", "Ωmega", None)
USAGE_TYPES = ("chat", "embedding", "agent-" + "x" * 70)  # the last one is longer than its column
MODELS = ("gpt-4o", "gpt-4o-mini", "local-llm", "anthropic/claude-3-5-sonnet", "模型/长名字", "m" * 300)
COSTS = (
    None,
    None,
    "0",
    "0E-9",
    "0.000405",
    "0.0000045",
    "0.000000000000000001",
    "0.123456789012345678901234567",
    "1.5E-7",
    "12345.6789",
    "98765432109.87654321",
)
STATUSES = (CallStatus.SUCCESS, CallStatus.SUCCESS, CallStatus.SUCCESS, CallStatus.FAILURE, CallStatus.ABANDONED)

# Instants at the edges the breakdowns care about: midnight UTC, month and year ends, a leap day.
EDGES = (
    datetime(2026, 11, 2, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 3, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 12, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2028, 2, 29, 12, 0, tzinfo=UTC),
    datetime(2028, 3, 1, 0, 0, 0, 1, tzinfo=UTC),
)
# Non-UTC offsets: the turn's UTC day is not its local day.
ZONES = (UTC, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-9, minutes=-30)))


def stored(value: str | None, length: int) -> str | None:
    """The documented stored form of an id (see the module docstring)."""
    if value is None:
        return None
    value = value.replace("\x00", "").encode("utf-8", "replace").decode()
    if len(value) > length:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        value = f"{value[: length - 17]}~{digest}"
    return value


@dataclass
class Fact:
    """A turn as the oracle sees it: its stored attribution, UTC instant, and calls (or hand-recorded totals)."""

    user_id: str | None
    thread_id: str | None
    tenant_id: str | None
    usage_type: str
    created_at: datetime
    calls: list[TokenCallRecord] = field(default_factory=list)
    by_hand: dict[str, object] | None = None
    """``record_token_usage`` keyword arguments: a turn row with no call rows."""


@dataclass
class Generated:
    turns: list[tuple[TurnTokenAccumulator, str, datetime]]
    """Each turn, its usage type and when it happened."""
    by_hand: list[dict[str, object]]
    facts: list[Fact]


def _when(rng: random.Random) -> datetime:
    if rng.random() < 0.4:
        base = rng.choice(EDGES)
        instant = base + timedelta(microseconds=rng.choice((0, 0, -1, 1, -1_000_000, 1_000_000)))
    else:
        instant = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 75 * 86400))
        instant += timedelta(microseconds=rng.randrange(1_000_000))
    return instant.astimezone(rng.choice(ZONES))


class Tokens(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int


def _tokens(rng: random.Random) -> Tokens:
    scale = rng.choice((0, 10, 10_000, 10**9, 10**12))
    prompt, completion = rng.randrange(scale + 1), rng.randrange(scale + 1)
    return Tokens(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=rng.randrange(prompt + 1),
        cache_creation_tokens=rng.choice((0, rng.randrange(scale + 1))),
        reasoning_tokens=rng.choice((0, rng.randrange(completion + 1))),
    )


def generate(seed: int, n_turns: int, n_by_hand: int) -> Generated:
    rng = random.Random(seed)
    turns: list[tuple[TurnTokenAccumulator, str, datetime]] = []
    facts: list[Fact] = []
    for t in range(n_turns):
        user, thread, tenant = rng.choice(USERS), rng.choice(THREADS), rng.choice(TENANTS)
        usage_type, when = rng.choice(USAGE_TYPES), _when(rng)
        turn = TurnTokenAccumulator(turn_id=f"turn-{seed}-{t}", user_id=user, thread_id=thread, tenant_id=tenant)
        records = []
        for c in range(rng.choice((0, 1, 1, 2, 3, 6))):
            cost = rng.choice(COSTS)
            record = TokenCallRecord(
                call_id=f"call-{t}-{c}",
                model=rng.choice(MODELS),
                status=rng.choice(STATUSES),
                cost_usd=None if cost is None else Decimal(cost),
                cost_source=CostSource.NONE if cost is None else CostSource.RESPONSE_COST,
                **_tokens(rng),
            )
            turn.add(record)
            records.append(record)
        turn.close(timeout=0)
        turns.append((turn, usage_type, when))
        facts.append(
            Fact(
                stored(user, ID_LENGTH),
                stored(thread, ID_LENGTH),
                stored(tenant, ID_LENGTH),
                stored(usage_type, USAGE_TYPE_LENGTH) or "",
                when.astimezone(UTC),
                records,
            )
        )
    by_hand: list[dict[str, object]] = []
    for h in range(n_by_hand):
        user, thread, tenant = rng.choice(USERS), rng.choice(THREADS), rng.choice(TENANTS)
        when, cost = _when(rng), rng.choice(COSTS)
        kwargs: dict[str, object] = {
            "turn_id": f"hand-{seed}-{h}",
            "usage_type": rng.choice(USAGE_TYPES),
            "user_id": user,
            "thread_id": thread,
            "tenant_id": tenant,
            "calls": rng.choice((0, 1, 3)),
            "cost_usd": None if cost is None else Decimal(cost),
            "created_at": when,
            **{k: v for k, v in _tokens(rng).items() if k != "total_tokens"},
        }
        by_hand.append(kwargs)
        facts.append(
            Fact(
                stored(user, ID_LENGTH),
                stored(thread, ID_LENGTH),
                stored(tenant, ID_LENGTH),
                stored(str(kwargs["usage_type"]), USAGE_TYPE_LENGTH) or "",
                when.astimezone(UTC),
                by_hand=kwargs,
            )
        )
    return Generated(turns, by_hand, facts)


def _matches(fact: Fact, f: ReportFilters) -> bool:
    if f.since is not None and fact.created_at < f.since:
        return False
    if f.until is not None and fact.created_at >= f.until:
        return False
    for name, length in (("user_id", ID_LENGTH), ("thread_id", ID_LENGTH), ("tenant_id", ID_LENGTH),
                         ("usage_type", USAGE_TYPE_LENGTH)):  # fmt: skip
        wanted = getattr(f, name)
        if wanted is not None and getattr(fact, name) != stored(wanted, length):
            return False
    return True


@dataclass
class _Group:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    cost: Decimal | None = None
    empty_turn: bool = False
    """Holds a turn with no call: its row's cost is an exact 0 (no priced call, none unpriced)."""

    def add_cost(self, cost: Decimal | None) -> None:
        if cost is not None:
            self.cost = cost if self.cost is None else EXACT.add(self.cost, cost)


def _add_call(group: _Group, r: TokenCallRecord) -> None:
    c = group.counters
    c["calls"] += 1
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_creation_tokens",
                 "reasoning_tokens"):  # fmt: skip
        c[name] += getattr(r, name)
    c["unpriced_calls"] += r.cost_usd is None
    c["failed_calls"] += r.status is CallStatus.FAILURE
    c["abandoned_calls"] += r.status is CallStatus.ABANDONED
    group.add_cost(r.cost_usd)


def _add_by_hand(group: _Group, kw: dict[str, object]) -> None:
    c = group.counters
    calls = int(str(kw["calls"]))
    c["calls"] += calls
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens", "reasoning_tokens"):
        c[name] += int(str(kw[name]))
    c["total_tokens"] += int(str(kw["prompt_tokens"])) + int(str(kw["completion_tokens"]))
    cost = kw["cost_usd"]
    if cost is None:
        c["unpriced_calls"] += calls
    else:
        assert isinstance(cost, Decimal)
        group.add_cost(cost)


def _cost(group: _Group) -> Decimal | None:
    # No priced call: unknown, unless the group has no call at all and an empty turn says "nothing spent".
    if group.cost is None and group.empty_turn and not group.counters["calls"]:
        return Decimal(0)
    return group.cost


def _key(fact: Fact, by: ReportBy) -> str | None:
    if by is ReportBy.DAY:
        return fact.created_at.date().isoformat()
    return {ReportBy.USER: fact.user_id, ReportBy.THREAD: fact.thread_id, ReportBy.TENANT: fact.tenant_id}[by]


def expected_report(facts: Iterable[Fact], by: ReportBy, filters: ReportFilters) -> list[ReportRow]:
    groups: dict[tuple[str | None, str | None], _Group] = {}
    for fact in facts:
        if not _matches(fact, filters):
            continue
        if by is ReportBy.MODEL:
            for r in fact.calls:
                _add_call(groups.setdefault((stored(r.model, ID_LENGTH), None), _Group()), r)
            if fact.by_hand is not None:
                _add_by_hand(groups.setdefault((None, None), _Group()), fact.by_hand)
            elif not fact.calls:
                groups.setdefault((None, None), _Group()).empty_turn = True
            continue
        # Per thread, a user's thread: two users' threads of one id are two groups.
        user = fact.user_id if by is ReportBy.THREAD else None
        group = groups.setdefault((_key(fact, by), user), _Group())
        group.empty_turn |= fact.by_hand is None and not fact.calls
        for r in fact.calls:
            _add_call(group, r)
        if fact.by_hand is not None:
            _add_by_hand(group, fact.by_hand)
    rows = [ReportRow(key=key, user_id=user, cost_usd=_cost(g), **_figures(g)) for (key, user), g in groups.items()]
    if by is ReportBy.MODEL:
        rows = [r for r in rows if r.key is not None or r.cost_usd or any(getattr(r, n) for n in COUNTERS)]
    if by is ReportBy.DAY:
        return sorted(rows, key=lambda r: r.key or "")
    return sorted(
        rows,
        key=lambda r: (
            r.cost_usd is None,
            -(r.cost_usd or Decimal(0)),
            r.key is None,
            r.key or "",
            r.user_id is None,
            r.user_id or "",
        ),
    )


def _figures(group: _Group) -> dict[str, Any]:
    return dict(group.counters)


def boundaries(facts: Sequence[Fact], rng: random.Random, n: int) -> list[datetime]:
    """Instants to filter at: the edges, some turns' own instants (since must include them), and one past."""
    picks = [f.created_at for f in rng.sample(list(facts), min(n, len(facts)))]
    return sorted({*EDGES, *picks, *(p + timedelta(microseconds=1) for p in picks[:3])})

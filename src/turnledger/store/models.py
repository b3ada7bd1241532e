"""The tables turns are billed from: ``token_usage`` (one row per turn) and ``token_usage_calls`` (one per call).

Attribution (user, thread, tenant, usage type) and the turn's ``created_at`` are copied onto every call
row so that a per-model breakdown of one user over a time range is one index range scan, with no join.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from turnledger.accumulator import TOKEN_FIELDS
from turnledger.store.base import Base, JSONDocument, UTCDateTime

ID = BigInteger().with_variant(Integer(), "sqlite")
"""BIGINT on PostgreSQL; SQLite autoincrements only a column declared exactly ``INTEGER``."""

ATTRIBUTION_LENGTH = 255


class ExactDecimal(TypeDecorator[Decimal]):
    """Exact money on every backend: unconstrained ``NUMERIC`` on PostgreSQL, decimal text on SQLite.

    SQLite's NUMERIC affinity turns ``'0.000405'`` into a binary float; text keeps every digit, and
    reports sum it exactly in Python (see :mod:`turnledger.store.reports`).
    """

    impl = Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"cost must be a finite Decimal, not {value!r}")
        # Fixed point ("0.00000015", never "1.5E-7"), so the stored text reads as money.
        return f"{value:f}" if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


REPORT_FIGURES = ("calls", *TOKEN_FIELDS, "cost_usd", "unpriced_calls", "failed_calls", "abandoned_calls")
"""The turn-row columns a breakdown sums (the token kinds: those a turn's totals add up)."""

CALL_REPORT_FIGURES = ("model", "status", *TOKEN_FIELDS, "cost_usd")
"""The call-row columns a per-model breakdown reads."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TokenUsage(Base):
    """One recorded turn (or one billable operation recorded by hand), with its exact totals."""

    __tablename__ = "token_usage"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    turn_id: Mapped[str] = mapped_column(String(ATTRIBUTION_LENGTH), unique=True)
    """The idempotency key: a turn recorded twice is stored once."""
    usage_type: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    thread_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    message_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    tenant_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    tags: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    """Exact sum of the priced calls; NULL only when every call was unpriced (unknown, not free)."""
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    unpriced_calls: Mapped[int] = mapped_column(Integer, default=0)
    failed_calls: Mapped[int] = mapped_column(Integer, default=0)
    abandoned_calls: Mapped[int] = mapped_column(Integer, default=0)
    model_breakdown: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    call_details: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)
    """When the turn happened (it opened); what reports filter and bucket by."""
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_utcnow)

    __table_args__ = (
        # Per-day breakdowns of everyone over a time range (bench: 30 days of 1M turns). A turn row is
        # wide (its JSON documents), so on PostgreSQL the index also carries every figure a breakdown
        # sums: the report is an index-only scan and never reads the table (bench/report_bench.py). The
        # id too: the per-model report's anti-join finds the turns without call rows by it (reports.py).
        Index("ix_token_usage_created_at", "created_at", postgresql_include=["id", *REPORT_FIGURES]),
        # One user's / tenant's / thread's history over a time range: equality prefix, then range.
        Index("ix_token_usage_user_id_created_at", "user_id", "created_at"),
        Index("ix_token_usage_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_token_usage_thread_id_created_at", "thread_id", "created_at"),
    )


class TokenUsageCall(Base):
    """One LiteLLM call (one attempt) of a recorded turn.

    Not unique on ``call_id``: the attempts of a retried call share one ``litellm_call_id``.
    """

    __tablename__ = "token_usage_calls"

    usage_id: Mapped[int] = mapped_column(
        ID, ForeignKey("token_usage.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """The call's position in its turn, from 0."""
    call_id: Mapped[str] = mapped_column(String(ATTRIBUTION_LENGTH))
    model: Mapped[str] = mapped_column(String(ATTRIBUTION_LENGTH))
    provider: Mapped[str | None] = mapped_column(String(64))
    call_kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    image_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    image_output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # A server default as well: migration 0004 added these to tables that already held calls.
    audio_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    audio_output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    cost_usd: Mapped[Decimal | None] = mapped_column(ExactDecimal())
    cost_micros: Mapped[int | None] = mapped_column(BigInteger)
    cost_source: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    error_type: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    provider_request_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    model_ref: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    model_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    display_name: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    flags: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    # Copied from the turn (see the module docstring).
    usage_type: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    thread_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    tenant_id: Mapped[str | None] = mapped_column(String(ATTRIBUTION_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # Per-model breakdown of one user over a time range (bench), and of a tenant.
        Index("ix_token_usage_calls_user_id_created_at", "user_id", "created_at"),
        Index("ix_token_usage_calls_tenant_id_created_at", "tenant_id", "created_at"),
        # Per-model breakdown of everyone over a time range (the CLI's default report). A plain index
        # here was ignored for a parallel seq scan of 3M rows (~1 s); carrying the summed figures
        # makes it an index-only scan on PostgreSQL (bench/report_bench.py).
        Index("ix_token_usage_calls_created_at", "created_at", postgresql_include=list(CALL_REPORT_FIGURES)),
    )


__all__ = ["ExactDecimal", "TokenUsage", "TokenUsageCall"]

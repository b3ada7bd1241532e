"""token_usage (one row per turn) and token_usage_calls (one row per call)

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (models may change later).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MONEY = sa.Numeric().with_variant(sa.Text(), "sqlite")  # SQLite: decimal text, never a binary float
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_TS = sa.DateTime(timezone=True)
ATTR = sa.String(255)


def _tokens(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "token_usage",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("turn_id", ATTR, nullable=False),
        sa.Column("usage_type", sa.String(64), nullable=False),
        sa.Column("user_id", ATTR, nullable=True),
        sa.Column("thread_id", ATTR, nullable=True),
        sa.Column("message_id", ATTR, nullable=True),
        sa.Column("tenant_id", ATTR, nullable=True),
        sa.Column("tags", JSON_DOC, nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        *_tokens(
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cache_creation_tokens",
            "reasoning_tokens",
        ),
        sa.Column("cost_usd", MONEY, nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), nullable=True),
        sa.Column("unpriced_calls", sa.Integer(), nullable=False),
        sa.Column("failed_calls", sa.Integer(), nullable=False),
        sa.Column("abandoned_calls", sa.Integer(), nullable=False),
        sa.Column("model_breakdown", JSON_DOC, nullable=True),
        sa.Column("call_details", JSON_DOC, nullable=True),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("recorded_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_usage")),
        sa.UniqueConstraint("turn_id", name=op.f("uq_token_usage_turn_id")),
    )
    # Covering on PostgreSQL: a per-day report is an index-only scan (see models.TokenUsage).
    op.create_index(
        "ix_token_usage_created_at",
        "token_usage",
        ["created_at"],
        postgresql_include=[
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cache_creation_tokens",
            "reasoning_tokens",
            "cost_usd",
            "unpriced_calls",
            "failed_calls",
            "abandoned_calls",
        ],
    )
    if op.get_context().dialect.name == "postgresql":
        # Without statistics on the UTC day expression the planner guesses one group per row and
        # sorts (spilling to disk) instead of hashing ~30 groups: measured 443 ms -> see bench.
        op.execute(
            "CREATE STATISTICS st_token_usage_created_day ON ((timezone('UTC', created_at))::date) FROM token_usage"
        )
    op.create_index("ix_token_usage_user_id_created_at", "token_usage", ["user_id", "created_at"])
    op.create_index("ix_token_usage_tenant_id_created_at", "token_usage", ["tenant_id", "created_at"])
    op.create_index("ix_token_usage_thread_id_created_at", "token_usage", ["thread_id", "created_at"])

    op.create_table(
        "token_usage_calls",
        sa.Column("usage_id", ID, autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("call_id", ATTR, nullable=False),
        sa.Column("model", ATTR, nullable=False),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("call_kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *_tokens(
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cache_creation_tokens",
            "cache_creation_1h_tokens",
            "reasoning_tokens",
            "image_input_tokens",
            "image_output_tokens",
        ),
        sa.Column("cost_usd", MONEY, nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), nullable=True),
        sa.Column("cost_source", sa.String(32), nullable=False),
        sa.Column("started_at", UTC_TS, nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("error_type", ATTR, nullable=True),
        sa.Column("provider_request_id", ATTR, nullable=True),
        sa.Column("model_ref", ATTR, nullable=True),
        sa.Column("model_id", ATTR, nullable=True),
        sa.Column("display_name", ATTR, nullable=True),
        sa.Column("flags", JSON_DOC, nullable=False),
        sa.Column("usage_type", sa.String(64), nullable=False),
        sa.Column("user_id", ATTR, nullable=True),
        sa.Column("thread_id", ATTR, nullable=True),
        sa.Column("tenant_id", ATTR, nullable=True),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["usage_id"],
            ["token_usage.id"],
            name=op.f("fk_token_usage_calls_usage_id_token_usage"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("usage_id", "seq", name=op.f("pk_token_usage_calls")),
    )
    op.create_index("ix_token_usage_calls_user_id_created_at", "token_usage_calls", ["user_id", "created_at"])
    op.create_index("ix_token_usage_calls_tenant_id_created_at", "token_usage_calls", ["tenant_id", "created_at"])
    op.create_index(
        "ix_token_usage_calls_created_at",
        "token_usage_calls",
        ["created_at"],
        postgresql_include=[
            "model",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
            "cache_creation_tokens",
            "reasoning_tokens",
            "cost_usd",
        ],
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP STATISTICS IF EXISTS st_token_usage_created_day")
    op.drop_table("token_usage_calls")
    op.drop_table("token_usage")

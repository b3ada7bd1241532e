"""token_usage's covering created_at index also carries the row id (PostgreSQL)

The per-model report counts turn rows that have no call rows (written by record_token_usage)
under "(no model)": an anti-join on token_usage_calls' primary key needs each turn's id, and
without it in the index the report of everyone over a range read the whole (wide) table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the figures the index carried at 0001.
FIGURES = [
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
]


def _rebuild(include: list[str]) -> None:
    # INCLUDE exists only on PostgreSQL; SQLite's index already holds the rowid, which is the id.
    # The rebuild blocks writes to token_usage while it runs (seconds per million turns).
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index("ix_token_usage_created_at", table_name="token_usage")
    op.create_index("ix_token_usage_created_at", "token_usage", ["created_at"], postgresql_include=include)


def upgrade() -> None:
    _rebuild(["id", *FIGURES])


def downgrade() -> None:
    _rebuild(FIGURES)

"""token_usage_calls gets audio_input_tokens and audio_output_tokens

Audio tokens are billed at their own rates (gpt-4o-audio-preview's audio input at 16 times its
text input), so a call's row keeps them, as it keeps its image tokens, for the bill to be audited.

NOT NULL with a server default of 0: calls recorded before this revision used no audio tokens that
turnledger counted. On PostgreSQL 11+ adding such a column is a catalog change only (no table
rewrite, no long lock); SQLite adds it in place too.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("audio_input_tokens", "audio_output_tokens")


def upgrade() -> None:
    # Batch mode: a plain ALTER on PostgreSQL, and on SQLite too unless it would need the table rebuilt.
    with op.batch_alter_table("token_usage_calls") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column; PostgreSQL drops it in place.
    with op.batch_alter_table("token_usage_calls") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)

"""credit_accounts, credit_journal (append-only) and credit_holds

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (models may change later).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AMOUNT = sa.Numeric(38, 18).with_variant(sa.String(40), "sqlite")  # SQLite: fixed-point text, never a float
UTC_TS = sa.DateTime(timezone=True)

_KINDS = "kind IN ('grant', 'reserve', 'settle', 'release', 'debit', 'refund', 'adjust')"

# The journal is the audit trail a bill is argued from: the database itself refuses to edit an entry.
# Deletes stay possible (data retention, emptying a test database) and cannot go unnoticed:
# `turnledger credits verify` replays every account's journal against its running balance.
# One statement per execute: asyncpg prepares each statement and refuses several in one.
_PG_APPEND_ONLY = (
    """CREATE FUNCTION credit_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'credit_journal is append-only: entries are never updated';
    END;
    $$""",
    """CREATE TRIGGER credit_journal_append_only BEFORE UPDATE ON credit_journal
    FOR EACH ROW EXECUTE FUNCTION credit_journal_append_only()""",
)
_SQLITE_APPEND_ONLY = (
    """CREATE TRIGGER credit_journal_append_only BEFORE UPDATE ON credit_journal
    BEGIN SELECT RAISE(ABORT, 'credit_journal is append-only: entries are never updated'); END""",
)


def upgrade() -> None:
    op.create_table(
        "credit_accounts",
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("balance", AMOUNT, nullable=False),
        sa.Column("held", AMOUNT, nullable=False),
        sa.Column("overdraft_limit", AMOUNT, nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_credit_accounts")),
    )
    op.create_table(
        "credit_journal",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(240), nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("hold_amount", AMOUNT, nullable=False),
        sa.Column("balance_after", AMOUNT, nullable=False),
        sa.Column("held_after", AMOUNT, nullable=False),
        sa.Column("turn_id", sa.String(200), nullable=True),
        sa.Column("reservation_id", ID, nullable=True),
        sa.Column("expires_at", UTC_TS, nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.CheckConstraint(_KINDS, name=op.f("ck_credit_journal_kind")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_accounts.account_id"],
            name=op.f("fk_credit_journal_account_id_credit_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["credit_journal.id"],
            name=op.f("fk_credit_journal_reservation_id_credit_journal"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_journal")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_credit_journal_idempotency_key")),
    )
    op.create_index("ix_credit_journal_account_id_id", "credit_journal", ["account_id", "id"])
    op.create_index(op.f("ix_credit_journal_turn_id"), "credit_journal", ["turn_id"])
    op.create_index(op.f("ix_credit_journal_reservation_id"), "credit_journal", ["reservation_id"])
    op.create_table(
        "credit_holds",
        sa.Column("reservation_id", ID, nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["credit_accounts.account_id"],
            name=op.f("fk_credit_holds_account_id_credit_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["reservation_id"],
            ["credit_journal.id"],
            name=op.f("fk_credit_holds_reservation_id_credit_journal"),
        ),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_credit_holds")),
    )
    op.create_index("ix_credit_holds_account_id_expires_at", "credit_holds", ["account_id", "expires_at"])

    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_APPEND_ONLY if postgres else _SQLITE_APPEND_ONLY:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS credit_journal_append_only ON credit_journal")
        op.execute("DROP FUNCTION IF EXISTS credit_journal_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS credit_journal_append_only")
    op.drop_index("ix_credit_holds_account_id_expires_at", table_name="credit_holds")
    op.drop_table("credit_holds")
    op.drop_index(op.f("ix_credit_journal_reservation_id"), table_name="credit_journal")
    op.drop_index(op.f("ix_credit_journal_turn_id"), table_name="credit_journal")
    op.drop_index("ix_credit_journal_account_id_id", table_name="credit_journal")
    op.drop_table("credit_journal")
    op.drop_table("credit_accounts")

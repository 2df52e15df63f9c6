"""Account drifts: what the account reconciliation found the broker and the ledger disagree on.

* account_drifts: one row per episode of unexplained drift (a holding the ledger does not know,
  a ledger position the broker does not have, or cash off by more than the tolerance); open
  (cleared_at NULL) until a later reconciliation finds the subject consistent again. An open
  holding drift stops new BUYs on its symbol (`ledger.drift`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_drifts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("broker_qty", sa.Integer(), nullable=True),
        sa.Column("ledger_qty", sa.Integer(), nullable=True),
        sa.Column("broker_avg_price", sa.Numeric(18, 4), nullable=True),
        sa.Column("ledger_avg_price", sa.Numeric(18, 4), nullable=True),
        sa.Column("broker_cash", sa.Numeric(), nullable=True),
        sa.Column("expected_cash", sa.Numeric(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("recorded_by", sa.Text(), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_by", sa.Text(), nullable=True),
        sa.Column("clear_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_account_drifts"),
        sa.CheckConstraint(
            "kind IN ('holding', 'cash')", name=op.f("ck_account_drifts_kind_known")
        ),
        sa.CheckConstraint(
            "(kind = 'cash') = (symbol = '')", name=op.f("ck_account_drifts_symbol_of_kind")
        ),
        sa.CheckConstraint(
            "(cleared_at IS NULL) = (cleared_by IS NULL)",
            name=op.f("ck_account_drifts_cleared_by_whom"),
        ),
    )
    op.create_index(
        "uq_account_drifts_open",
        "account_drifts",
        ["kind", "symbol"],
        unique=True,
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    op.create_index("ix_account_drifts_trading_day", "account_drifts", ["trading_day"])


def downgrade() -> None:
    op.drop_table("account_drifts")

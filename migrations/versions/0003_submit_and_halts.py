"""Orders claimed for sending and withdrawn; the day's loss-limit halt; one spelling per broker
order id.

* orders.status gains SUBMITTING (claimed by a fenced compare-and-set just before the broker
  call) and WITHDRAWN (never sent, withdrawn while NEW by the symbol's current owner).
* risk_halts: one row per trading day once the daily loss limit was reached (Invariant 5).
* orders.broker_order_id: all-digit ids zero-padded to ten digits, as
  `market.orders.canonical_broker_order_id` writes them from now on.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD_STATES = (
    "'NEW', 'SENT', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED', 'UNKNOWN'"
)
_NEW_STATES = (
    "'NEW', 'SUBMITTING', 'SENT', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', "
    "'EXPIRED', 'UNKNOWN', 'WITHDRAWN'"
)
_CK = "ck_orders_status_known"
# 0001 passed full names through the naming convention, which prefixed them again: the
# constraint it created is called this.
_CK_0001 = "ck_orders_ck_orders_status_known"


def upgrade() -> None:
    op.execute(f"ALTER TABLE orders DROP CONSTRAINT IF EXISTS {_CK_0001}")
    op.execute(f"ALTER TABLE orders DROP CONSTRAINT IF EXISTS {_CK}")
    op.create_check_constraint(op.f(_CK), "orders", f"status IN ({_NEW_STATES})")
    op.create_table(
        "risk_halts",
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("realized_pnl", sa.Numeric(), nullable=False),
        sa.Column("loss_limit", sa.Numeric(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("trading_day", name="pk_risk_halts"),
        sa.CheckConstraint("loss_limit > 0", name=op.f("ck_risk_halts_loss_limit_positive")),
    )
    # Same rule as canonical_broker_order_id: digits only -> leading zeros dropped, then padded
    # to ten (never truncated: lpad would cut a longer id).
    op.execute(
        """
        UPDATE orders SET broker_order_id = CASE
            WHEN length(ltrim(btrim(broker_order_id), '0')) >= 10
                THEN ltrim(btrim(broker_order_id), '0')
            ELSE lpad(ltrim(btrim(broker_order_id), '0'), 10, '0') END
        WHERE btrim(broker_order_id) ~ '^[0-9]+$'
        """
    )


def downgrade() -> None:
    op.drop_table("risk_halts")
    # The old machine has no such states: a claimed order's outcome is unknown to it, and a
    # withdrawn one is what it called canceled before sending.
    op.execute("UPDATE orders SET status = 'UNKNOWN' WHERE status = 'SUBMITTING'")
    op.execute("UPDATE orders SET status = 'CANCELED' WHERE status = 'WITHDRAWN'")
    op.drop_constraint(op.f(_CK), "orders", type_="check")
    op.create_check_constraint(op.f(_CK_0001), "orders", f"status IN ({_OLD_STATES})")

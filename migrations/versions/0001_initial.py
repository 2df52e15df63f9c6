"""Initial ledger schema: workers, lock mirror and audit, orders, fills, positions, trades,
daily summaries.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TSTZ = sa.DateTime(timezone=True)
MONEY = sa.Numeric()
PRICE4 = sa.Numeric(18, 4)
ORDER_STATES = (
    "'NEW', 'SENT', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED', 'UNKNOWN'"
)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False)


def _summary_figures() -> list[sa.Column[object]]:
    return [
        sa.Column("pnl", MONEY, nullable=False),
        sa.Column("win_rate", sa.Numeric(5, 4), nullable=False),
        sa.Column("avg_pnl", sa.Numeric(20, 2), nullable=False),
        sa.Column("max_loss", MONEY, nullable=False),
        sa.Column("trades_count", sa.Integer(), nullable=False),
        sa.Column("wins", sa.Integer(), nullable=False),
        sa.Column("fees", MONEY, nullable=False),
        sa.Column("taxes", MONEY, nullable=False),
        sa.Column("computed_at", TSTZ, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("capital_limit", MONEY, nullable=True),
        sa.Column("current_symbol", sa.Text(), nullable=True),
        sa.Column("started_at", TSTZ, nullable=False),
        sa.Column("heartbeat_at", TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name="pk_workers"),
        sa.CheckConstraint("capital_limit >= 0", name="ck_workers_capital_limit_nonneg"),
    )
    op.create_table(
        "stock_locks",
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("locked_at", TSTZ, nullable=False),
        sa.Column("ttl", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("symbol", name="pk_stock_locks"),
        sa.CheckConstraint("fence > 0", name="ck_stock_locks_fence_positive"),
        sa.CheckConstraint("ttl > 0", name="ck_stock_locks_ttl_positive"),
    )
    op.create_table(
        "lock_events",
        _id(),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("at", TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lock_events"),
        sa.UniqueConstraint("symbol", "fence", "event", name="uq_lock_events_symbol_fence_event"),
        sa.CheckConstraint(
            "event IN ('acquired', 'released', 'expired', 'recovered', 'lost')",
            name="ck_lock_events_event_known",
        ),
        sa.CheckConstraint("fence > 0", name="ck_lock_events_fence_positive"),
    )
    op.create_index("ix_lock_events_at", "lock_events", ["at"])

    op.create_table(
        "orders",
        _id(),
        sa.Column("client_order_id", sa.Text(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("order_type", sa.Text(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("price", MONEY, nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("broker_order_id", sa.Text(), nullable=True),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("signal_price", MONEY, nullable=True),
        sa.Column("tier", sa.SmallInteger(), nullable=True),
        sa.Column("filled_qty", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("filled_amount", MONEY, server_default=sa.text("0"), nullable=False),
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.Column("created_at", TSTZ, nullable=False),
        sa.Column("recorded_at", TSTZ, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("updated_at", TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_orders_side_known"),
        sa.CheckConstraint("order_type IN ('LIMIT', 'MARKET')", name="ck_orders_order_type_known"),
        sa.CheckConstraint(f"status IN ({ORDER_STATES})", name="ck_orders_status_known"),
        sa.CheckConstraint("qty > 0", name="ck_orders_qty_positive"),
        sa.CheckConstraint("price IS NULL OR price > 0", name="ck_orders_price_positive"),
        sa.CheckConstraint(
            "order_type = 'MARKET' OR price IS NOT NULL", name="ck_orders_limit_has_price"
        ),
        sa.CheckConstraint(
            "filled_qty >= 0 AND filled_qty <= qty", name="ck_orders_filled_qty_range"
        ),
        sa.CheckConstraint("filled_amount >= 0", name="ck_orders_filled_amount_nonneg"),
        sa.CheckConstraint("fence > 0", name="ck_orders_fence_positive"),
    )
    op.create_index("ix_orders_worker_id_status", "orders", ["worker_id", "status"])
    op.create_index("ix_orders_symbol_status", "orders", ["symbol", "status"])
    op.create_index("ix_orders_broker_order_id", "orders", ["broker_order_id"])
    op.create_index("ix_orders_trading_day", "orders", ["trading_day"])

    op.create_table(
        "fills",
        _id(),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("price", PRICE4, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("fee", MONEY, nullable=False),
        sa.Column("tax", MONEY, nullable=False),
        sa.Column("transaction_tax", MONEY, nullable=False),
        sa.Column("rural_tax", MONEY, nullable=False),
        sa.Column("cum_qty", sa.Integer(), nullable=False),
        sa.Column("filled_at", TSTZ, nullable=False),
        sa.Column("recorded_at", TSTZ, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_fills_order_id_orders"),
        sa.UniqueConstraint("order_id", "cum_qty", name="uq_fills_order_id_cum_qty"),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name="ck_fills_side_known"),
        sa.CheckConstraint("qty > 0 AND cum_qty >= qty", name="ck_fills_qty_positive"),
        sa.CheckConstraint("amount > 0 AND price > 0", name="ck_fills_amount_positive"),
        sa.CheckConstraint(
            "fee >= 0 AND transaction_tax >= 0 AND rural_tax >= 0", name="ck_fills_costs_nonneg"
        ),
        sa.CheckConstraint("tax = transaction_tax + rural_tax", name="ck_fills_tax_is_sum"),
    )
    op.create_index("ix_fills_trading_day", "fills", ["trading_day"])
    op.create_index("ix_fills_symbol_trading_day", "fills", ["symbol", "trading_day"])

    op.create_table(
        "positions",
        _id(),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("avg_price", PRICE4, nullable=False),
        sa.Column("buy_qty", sa.Integer(), nullable=False),
        sa.Column("buy_amount", MONEY, nullable=False),
        sa.Column("sell_qty", sa.Integer(), nullable=False),
        sa.Column("sell_amount", MONEY, nullable=False),
        sa.Column("fees", MONEY, nullable=False),
        sa.Column("taxes", MONEY, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("entry_reason", sa.Text(), nullable=True),
        sa.Column("opened_at", TSTZ, nullable=False),
        sa.Column("updated_at", TSTZ, nullable=False),
        sa.Column("closed_at", TSTZ, nullable=True),
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_positions"),
        sa.CheckConstraint(
            "status IN ('OPEN', 'ORPHANED', 'CLOSED')", name="ck_positions_status_known"
        ),
        sa.CheckConstraint(
            "qty >= 0 AND qty = buy_qty - sell_qty", name="ck_positions_qty_balances"
        ),
        sa.CheckConstraint(
            "(status = 'CLOSED') = (closed_at IS NOT NULL) AND (status <> 'CLOSED' OR qty = 0)",
            name="ck_positions_closed_is_flat",
        ),
    )
    op.create_index(
        "uq_positions_symbol_live",
        "positions",
        ["symbol"],
        unique=True,
        postgresql_where=sa.text("status <> 'CLOSED'"),
    )
    op.create_index("ix_positions_worker_id_status", "positions", ["worker_id", "status"])
    op.create_index("ix_positions_trading_day", "positions", ["trading_day"])

    op.create_table(
        "trades",
        _id(),
        sa.Column("position_id", sa.BigInteger(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("buy_amount", MONEY, nullable=False),
        sa.Column("sell_amount", MONEY, nullable=False),
        sa.Column("fees", MONEY, nullable=False),
        sa.Column("taxes", MONEY, nullable=False),
        sa.Column("pnl", MONEY, nullable=False),
        sa.Column("opened_at", TSTZ, nullable=False),
        sa.Column("closed_at", TSTZ, nullable=False),
        sa.Column("recorded_at", TSTZ, nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("exit_reason", sa.Text(), nullable=True),
        sa.Column("entry_reason", sa.Text(), nullable=True),
        sa.Column("trading_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trades"),
        sa.ForeignKeyConstraint(
            ["position_id"], ["positions.id"], name="fk_trades_position_id_positions"
        ),
        sa.UniqueConstraint("position_id", name="uq_trades_position_id"),
        sa.CheckConstraint("qty > 0", name="ck_trades_qty_positive"),
        sa.CheckConstraint(
            "pnl = sell_amount - buy_amount - fees - taxes", name="ck_trades_pnl_balances"
        ),
    )
    op.create_index("ix_trades_trading_day", "trades", ["trading_day"])
    op.create_index("ix_trades_worker_id_trading_day", "trades", ["worker_id", "trading_day"])

    op.create_table(
        "daily_summaries",
        sa.Column("date", sa.Date(), nullable=False),
        *_summary_figures(),
        sa.PrimaryKeyConstraint("date", name="pk_daily_summaries"),
        sa.CheckConstraint(
            "wins >= 0 AND wins <= trades_count", name="ck_daily_summaries_wins_range"
        ),
        sa.CheckConstraint("max_loss <= 0", name="ck_daily_summaries_max_loss_nonpos"),
    )
    op.create_table(
        "daily_worker_summaries",
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=False),
        *_summary_figures(),
        sa.PrimaryKeyConstraint("date", "worker_id", name="pk_daily_worker_summaries"),
        sa.CheckConstraint(
            "wins >= 0 AND wins <= trades_count", name="ck_daily_worker_summaries_wins_range"
        ),
        sa.CheckConstraint("max_loss <= 0", name="ck_daily_worker_summaries_max_loss_nonpos"),
    )


def downgrade() -> None:
    # Reverse dependency order: trades -> positions, fills -> orders.
    for table in (
        "daily_worker_summaries",
        "daily_summaries",
        "trades",
        "positions",
        "fills",
        "orders",
        "lock_events",
        "stock_locks",
        "workers",
    ):
        op.drop_table(table)

"""Views with the data for tomorrow's parameters.

* tuning_entry_signals: PnL and hit rate by entry signal (the entry filters that fired).
* tuning_exit_reasons: PnL by exit reason.
* tuning_slippage: fill price against the signal price, by liquidity tier and side
  (positive = cost to us), in won and basis points.
* tuning_forced_exits: what forced liquidation cost: its trades' PnL and the fills' shortfall
  against the signal price.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_VIEWS = {
    "tuning_entry_signals": """
        SELECT trading_day, coalesce(entry_reason, '?') AS entry_signal,
               count(*) AS trades,
               count(*) FILTER (WHERE pnl > 0) AS wins,
               round(count(*) FILTER (WHERE pnl > 0)::numeric / count(*), 4) AS hit_rate,
               sum(pnl) AS pnl,
               round(avg(pnl), 2) AS avg_pnl
        FROM trades GROUP BY trading_day, entry_reason""",
    "tuning_exit_reasons": """
        SELECT trading_day, coalesce(exit_reason, '?') AS exit_reason,
               count(*) AS trades,
               count(*) FILTER (WHERE pnl > 0) AS wins,
               sum(pnl) AS pnl,
               round(avg(pnl), 2) AS avg_pnl,
               min(pnl) AS worst
        FROM trades GROUP BY trading_day, exit_reason""",
    "tuning_slippage": """
        SELECT trading_day, tier, side,
               count(*) AS orders,
               sum(filled_qty) AS qty,
               sum(CASE WHEN side = 'BUY' THEN filled_amount - signal_price * filled_qty
                        ELSE signal_price * filled_qty - filled_amount END) AS slippage_won,
               round(sum(CASE WHEN side = 'BUY' THEN filled_amount - signal_price * filled_qty
                              ELSE signal_price * filled_qty - filled_amount END)
                     / nullif(sum(signal_price * filled_qty), 0) * 10000, 2) AS slippage_bps
        FROM orders
        WHERE filled_qty > 0 AND signal_price IS NOT NULL
        GROUP BY trading_day, tier, side""",
    "tuning_forced_exits": """
        SELECT o.trading_day,
               count(DISTINCT o.symbol) AS symbols,
               sum(o.filled_qty) AS qty,
               sum(o.signal_price * o.filled_qty - o.filled_amount) AS shortfall_won,
               (SELECT coalesce(sum(t.pnl), 0) FROM trades t
                 WHERE t.trading_day = o.trading_day
                   AND t.exit_reason = 'forced_liquidation') AS trades_pnl
        FROM orders o
        WHERE o.side = 'SELL' AND o.reason = 'forced_liquidation' AND o.filled_qty > 0
          AND o.signal_price IS NOT NULL
        GROUP BY o.trading_day""",
}


def upgrade() -> None:
    for name, body in _VIEWS.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(_VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")

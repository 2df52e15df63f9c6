"""Performance figures of closed trades: pure functions, no database, exact where money is.

`day_figures` computes one day's figures from its trades; `total_figures` combines days (the
drawdown runs over all of them in order, Sharpe is over the daily PnL). Definitions:

* ``pnl``: sum of the trades' net PnL (after fees and taxes, as `trades.pnl`); ``fees``,
  ``taxes``: the trades' commissions and sell taxes.
* ``trades``, ``wins`` (pnl > 0), ``losses`` (pnl < 0); ``win_rate`` = wins / trades.
* ``avg_win`` / ``avg_loss``: mean PnL of the winning / losing trades (avg_loss <= 0).
* ``profit_factor``: gross wins / |gross losses|; None when there is no losing trade.
* ``max_drawdown``: the largest fall of realized equity (cumulative PnL in closing order,
  starting at 0) from its running peak, as a positive amount of won.
* ``sharpe``: mean / sample standard deviation of the daily PnL x sqrt(252); None for fewer
  than two days or no variation (a one-day figure has none).
* ``exposure``: the share of worker-time spent holding a position: the trades' holding time
  over (workers x session length).
* ``forced_exit_cost``: what forced liquidation near the close cost: the shortfall of its
  sells against the signal price (signal price x qty - proceeds, the `tuning_forced_exits`
  view), given by the caller per day.

Money is rounded to the won with half-even only where a mean is taken (avg_win, avg_loss);
ratios are quantized to 4 decimals, so the same trades always print the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from ledger.records import TradeRecord

ZERO = Decimal(0)
_RATIO = Decimal("0.0001")
_WON = Decimal(1)
TRADING_DAYS_PER_YEAR = 252


@dataclass(frozen=True, slots=True)
class Figures:
    trades: int
    wins: int
    losses: int
    pnl: Decimal
    fees: Decimal
    taxes: Decimal
    win_rate: Decimal | None
    avg_win: Decimal | None
    avg_loss: Decimal | None
    profit_factor: Decimal | None
    max_drawdown: Decimal
    sharpe: Decimal | None
    exposure: Decimal
    forced_exit_cost: Decimal

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money and ratios as exact strings, None as null."""

        def text(x: Decimal | None) -> str | None:
            return None if x is None else str(x)

        return {
            "pnl": str(self.pnl),
            "fees": str(self.fees),
            "taxes": str(self.taxes),
            "trades": self.trades,
            "wins": self.wins,
            "losses": self.losses,
            "win_rate": text(self.win_rate),
            "avg_win": text(self.avg_win),
            "avg_loss": text(self.avg_loss),
            "profit_factor": text(self.profit_factor),
            "max_drawdown": str(self.max_drawdown),
            "sharpe": text(self.sharpe),
            "exposure": text(self.exposure),
            "forced_exit_cost": str(self.forced_exit_cost),
        }


@dataclass(frozen=True, slots=True)
class DayInput:
    """What one day's figures are computed from."""

    day: date
    trades: Sequence[TradeRecord]
    session_seconds: float
    workers: int
    forced_exit_cost: Decimal = ZERO


def _ratio(num: Decimal, den: Decimal) -> Decimal | None:
    return (num / den).quantize(_RATIO, ROUND_HALF_EVEN) if den else None


def _mean_won(values: Sequence[Decimal]) -> Decimal | None:
    return (sum(values, ZERO) / len(values)).quantize(_WON, ROUND_HALF_EVEN) if values else None


def ordered(trades: Sequence[TradeRecord]) -> list[TradeRecord]:
    """Trades in closing order (ties by id): the order realized equity moves in."""
    return sorted(trades, key=lambda t: (t.closed_at, t.id))


def max_drawdown(pnls: Sequence[Decimal]) -> Decimal:
    """Largest fall of the running sum of `pnls` (from 0) below its running peak."""
    equity = peak = worst = ZERO
    for x in pnls:
        equity += x
        peak = max(peak, equity)
        worst = max(worst, peak - equity)
    return worst


def sharpe(daily_pnl: Sequence[Decimal]) -> Decimal | None:
    """Annualized Sharpe ratio of daily PnL (risk-free 0): mean / stdev x sqrt(252)."""
    n = len(daily_pnl)
    if n < 2:
        return None
    mean = sum(daily_pnl, ZERO) / n
    var = sum(((x - mean) ** 2 for x in daily_pnl), ZERO) / (n - 1)
    if var == 0:
        return None
    ratio = mean / var.sqrt() * Decimal(TRADING_DAYS_PER_YEAR).sqrt()
    return ratio.quantize(_RATIO, ROUND_HALF_EVEN)


def _figures(
    trades: list[TradeRecord],
    worker_seconds: float,
    forced_exit_cost: Decimal,
    daily_pnl: Sequence[Decimal],
) -> Figures:
    pnls = [t.pnl for t in trades]
    wins = [p for p in pnls if p > 0]
    losses = [p for p in pnls if p < 0]
    gross_loss = -sum(losses, ZERO)
    held = sum((t.closed_at - t.opened_at).total_seconds() for t in trades)
    exposure = (
        _ratio(Decimal(str(round(held, 3))), Decimal(str(round(worker_seconds, 3))))
        if worker_seconds > 0
        else None
    )
    return Figures(
        trades=len(trades),
        wins=len(wins),
        losses=len(losses),
        pnl=sum(pnls, ZERO),
        fees=sum((t.fees for t in trades), ZERO),
        taxes=sum((t.taxes for t in trades), ZERO),
        win_rate=_ratio(Decimal(len(wins)), Decimal(len(trades))),
        avg_win=_mean_won(wins),
        avg_loss=_mean_won(losses),
        profit_factor=_ratio(sum(wins, ZERO), gross_loss),
        max_drawdown=max_drawdown(pnls),
        sharpe=sharpe(daily_pnl),
        exposure=exposure if exposure is not None else ZERO,
        forced_exit_cost=forced_exit_cost,
    )


def day_figures(d: DayInput) -> Figures:
    """One day's figures (its Sharpe is None: one day has no spread of daily PnL)."""
    return _figures(ordered(d.trades), d.session_seconds * d.workers, d.forced_exit_cost, [])


def total_figures(days: Sequence[DayInput]) -> Figures:
    """The run's figures: every trade of every day, drawdown across days, daily Sharpe."""
    trades: list[TradeRecord] = []
    for d in sorted(days, key=lambda d: d.day):
        trades += ordered(d.trades)
    return _figures(
        trades,
        sum(d.session_seconds * d.workers for d in days),
        sum((d.forced_exit_cost for d in days), ZERO),
        [sum((t.pnl for t in d.trades), ZERO) for d in sorted(days, key=lambda d: d.day)],
    )

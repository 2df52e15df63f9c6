"""The ledger's money math: pure functions on Decimals, no I/O.

Rounding, stated once:
* fees and taxes are computed per fill increment by `market.costs.CostModel` (floor to the won);
* `PositionState.avg_price` is the average cost per share of the shares held, excluding fees,
  rounded to 4 dp ROUND_HALF_EVEN after each buy; it is informational (stops, display) and
  never enters a PnL, which uses the exact amount totals;
* realized PnL of a closed round trip = sell_amount − buy_amount − fees − taxes, exact;
* day summary: win_rate = wins / trades to 4 dp, avg_pnl = pnl / trades to 2 dp, both
  ROUND_HALF_EVEN; max_loss = the most negative trade pnl, or 0 when no trade lost.
  A win is a trade with pnl > 0; a zero-pnl trade is not a win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

from market.costs import CostModel
from market.orders import Side
from market.types import Board

ZERO = Decimal(0)
AVG_PRICE_QUANTUM = Decimal("0.0001")
WIN_RATE_QUANTUM = Decimal("0.0001")
AVG_PNL_QUANTUM = Decimal("0.01")


def fill_increment(
    prev_qty: int, prev_amount: Decimal, cum_qty: int, cum_amount: Decimal
) -> tuple[int, Decimal]:
    """The (qty, amount) executed since the previous cumulative report.

    Raises ValueError when the cumulative figures go backwards, or when the amount changes
    without the quantity changing: neither can happen for one broker order.
    """
    if cum_qty < prev_qty or cum_amount < prev_amount:
        raise ValueError(
            f"cumulative fill went backwards: ({prev_qty}, {prev_amount}) -> "
            f"({cum_qty}, {cum_amount})"
        )
    qty = cum_qty - prev_qty
    amount = cum_amount - prev_amount
    if (qty == 0) != (amount == 0):
        raise ValueError(f"fill increment of {qty} shares for {amount} won is impossible")
    return qty, amount


@dataclass(frozen=True, slots=True)
class FillCosts:
    """Fee and taxes of one fill increment, each floored to the won. tax = the two taxes."""

    fee: Decimal
    transaction_tax: Decimal
    rural_tax: Decimal
    tax: Decimal


def fill_costs(
    costs: CostModel, side: Side, amount: Decimal, board: Board, trading_day: date
) -> FillCosts:
    """Commission on every fill; transaction and rural taxes on sells only."""
    fee = costs.commission(amount)
    if side is Side.BUY:
        return FillCosts(fee, ZERO, ZERO, ZERO)
    taxes = costs.sell_taxes(amount, board, trading_day)
    return FillCosts(fee, taxes.transaction, taxes.rural, taxes.total)


@dataclass(frozen=True, slots=True)
class PositionState:
    """One symbol's position: held qty at average cost, plus the round trip's totals."""

    qty: int = 0
    avg_price: Decimal = ZERO
    buy_qty: int = 0
    buy_amount: Decimal = ZERO
    sell_qty: int = 0
    sell_amount: Decimal = ZERO
    fees: Decimal = ZERO
    taxes: Decimal = ZERO

    @property
    def closed(self) -> bool:
        """Flat after at least one buy: a complete round trip."""
        return self.qty == 0 and self.buy_qty > 0


def apply_fill(
    state: PositionState, side: Side, qty: int, amount: Decimal, fee: Decimal, tax: Decimal
) -> PositionState:
    """The position after one fill increment. Raises ValueError on overselling."""
    if qty <= 0:
        raise ValueError(f"fill qty must be positive, got {qty}")
    if amount <= 0 or fee < 0 or tax < 0:
        raise ValueError(f"invalid fill figures: amount={amount} fee={fee} tax={tax}")
    fees = state.fees + fee
    taxes = state.taxes + tax
    if side is Side.BUY:
        held_cost = state.avg_price * state.qty
        new_qty = state.qty + qty
        avg = ((held_cost + amount) / new_qty).quantize(AVG_PRICE_QUANTUM, ROUND_HALF_EVEN)
        return replace(
            state,
            qty=new_qty,
            avg_price=avg,
            buy_qty=state.buy_qty + qty,
            buy_amount=state.buy_amount + amount,
            fees=fees,
            taxes=taxes,
        )
    if qty > state.qty:
        raise ValueError(f"cannot sell {qty} shares of a position holding {state.qty}")
    return replace(
        state,
        qty=state.qty - qty,
        sell_qty=state.sell_qty + qty,
        sell_amount=state.sell_amount + amount,
        fees=fees,
        taxes=taxes,
    )


def realized_pnl(state: PositionState) -> Decimal:
    """sell_amount − buy_amount − fees − taxes of a closed round trip (ValueError if open)."""
    if state.qty != 0:
        raise ValueError(f"position still holds {state.qty} shares")
    return state.sell_amount - state.buy_amount - state.fees - state.taxes


@dataclass(frozen=True, slots=True)
class DaySummary:
    """One day's figures over closed trades (see the module docstring for rounding)."""

    pnl: Decimal
    win_rate: Decimal
    avg_pnl: Decimal
    max_loss: Decimal
    trades_count: int
    wins: int


def summarize(pnls: Sequence[Decimal]) -> DaySummary:
    count = len(pnls)
    if count == 0:
        return DaySummary(
            ZERO, ZERO.quantize(WIN_RATE_QUANTUM), ZERO.quantize(AVG_PNL_QUANTUM), ZERO, 0, 0
        )
    total = sum(pnls, ZERO)
    wins = sum(1 for p in pnls if p > 0)
    worst = min(pnls)
    return DaySummary(
        pnl=total,
        win_rate=(Decimal(wins) / count).quantize(WIN_RATE_QUANTUM, ROUND_HALF_EVEN),
        avg_pnl=(total / count).quantize(AVG_PNL_QUANTUM, ROUND_HALF_EVEN),
        max_loss=min(worst, ZERO),
        trades_count=count,
        wins=wins,
    )

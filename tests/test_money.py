"""The ledger's money math, pure: golden figures worked out by hand, and a property test."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.port import Side
from ledger.money import (
    FillCosts,
    PositionState,
    apply_fill,
    fill_costs,
    fill_increment,
    realized_pnl,
    summarize,
)
from market.costs import CostModel
from market.types import Board

D = Decimal
DAY = date(2025, 3, 10)  # Monday; settles 2025-03-12: KOSPI 0% + 0.15% rural, KOSDAQ 0.15%
COSTS = CostModel()
FREE = CostModel(commission_rate=D(0), tax_factor=D(0))


def _fill(
    state: PositionState, side: Side, qty: int, price: int, board: Board, costs: CostModel = COSTS
) -> PositionState:
    amount = D(qty * price)
    c = fill_costs(costs, side, amount, board, DAY)
    return apply_fill(state, side, qty, amount, c.fee, c.tax)


def test_fill_costs_buy_pays_commission_only() -> None:
    # 500,000 × 0.000140527 = 70.26 -> 70
    assert fill_costs(COSTS, Side.BUY, D(500_000), Board.KOSDAQ, DAY) == FillCosts(
        D(70), D(0), D(0), D(0)
    )


def test_fill_costs_sell_taxes_by_board_and_year() -> None:
    # KOSDAQ 2025: 0.15% transaction tax, no rural tax. 510,000: fee 71.67 -> 71, tax 765.
    assert fill_costs(COSTS, Side.SELL, D(510_000), Board.KOSDAQ, DAY) == FillCosts(
        D(71), D(765), D(0), D(765)
    )
    # KOSPI 2026: 0.05% transaction + 0.15% rural on 1,000,000: 500 + 1,500; fee 140.
    assert fill_costs(COSTS, Side.SELL, D(1_000_000), Board.KOSPI, date(2026, 3, 10)) == (
        FillCosts(D(140), D(500), D(1500), D(2000))
    )


def test_round_trip_with_fee_and_tax() -> None:
    state = _fill(PositionState(), Side.BUY, 10, 50_000, Board.KOSDAQ)
    assert (state.qty, state.avg_price, state.fees) == (10, D(50_000), D(70))
    state = _fill(state, Side.SELL, 10, 51_000, Board.KOSDAQ)
    # 510,000 − 500,000 − (70 + 71) − 765
    assert state.closed
    assert realized_pnl(state) == D(9_094)


def test_partial_buys_and_sells_at_different_prices() -> None:
    s = _fill(PositionState(), Side.BUY, 30, 10_000, Board.KOSDAQ)  # 300,000, fee 42
    s = _fill(s, Side.BUY, 20, 10_050, Board.KOSDAQ)  # 201,000, fee 28
    assert s.avg_price == D(10_020)  # 501,000 / 50
    s = _fill(s, Side.SELL, 25, 10_200, Board.KOSDAQ)  # 255,000, fee 35, tax 382
    assert (s.qty, s.avg_price) == (25, D(10_020))  # selling leaves the average cost alone
    s = _fill(s, Side.SELL, 25, 10_100, Board.KOSDAQ)  # 252,500, fee 35, tax 378
    assert (s.buy_amount, s.sell_amount, s.fees, s.taxes) == (D(501_000), D(507_500), 140, 760)
    # 507,500 − 501,000 − 140 − 760
    assert realized_pnl(s) == D(5_600)


def test_losing_round_trip_on_kospi() -> None:
    s = _fill(PositionState(), Side.BUY, 100, 70_000, Board.KOSPI)  # 7,000,000, fee 983
    s = _fill(s, Side.SELL, 100, 69_500, Board.KOSPI)  # 6,950,000, fee 976, rural 10,425
    assert realized_pnl(s) == D(-62_384)


def test_zero_fee_model_pnl_is_price_difference() -> None:
    s = _fill(PositionState(), Side.BUY, 10, 1_000, Board.KOSPI, FREE)
    s = _fill(s, Side.SELL, 10, 1_100, Board.KOSPI, FREE)
    assert (s.fees, s.taxes) == (0, 0)
    assert realized_pnl(s) == D(1_000)


def test_overselling_raises() -> None:
    s = _fill(PositionState(), Side.BUY, 5, 1_000, Board.KOSPI)
    with pytest.raises(ValueError, match="cannot sell 6"):
        _fill(s, Side.SELL, 6, 1_000, Board.KOSPI)


def test_realized_pnl_of_open_position_raises() -> None:
    s = _fill(PositionState(), Side.BUY, 5, 1_000, Board.KOSPI)
    with pytest.raises(ValueError, match="still holds 5"):
        realized_pnl(s)


def test_fill_increment() -> None:
    assert fill_increment(0, D(0), 30, D(300_000)) == (30, D(300_000))
    assert fill_increment(30, D(300_000), 50, D(501_000)) == (20, D(201_000))
    assert fill_increment(50, D(501_000), 50, D(501_000)) == (0, D(0))
    with pytest.raises(ValueError, match="backwards"):
        fill_increment(50, D(501_000), 30, D(300_000))
    with pytest.raises(ValueError, match="impossible"):
        fill_increment(30, D(300_000), 30, D(300_050))


def test_summarize_golden() -> None:
    s = summarize([D(9_094), D(-62_384), D(5_600), D(0)])
    assert s.pnl == D(-47_690)
    assert (s.trades_count, s.wins) == (4, 2)  # a zero-pnl trade is not a win
    assert s.win_rate == D("0.5000")
    assert s.avg_pnl == D("-11922.50")
    assert s.max_loss == D(-62_384)


def test_summarize_rounds_half_even() -> None:
    # avg 1/8 = 0.125 -> 0.12 (half-even), not 0.13
    assert summarize([D(1)] + [D(0)] * 7).avg_pnl == D("0.12")
    # win rate 1/32 = 0.03125 -> 0.0312
    assert summarize([D(1)] + [D(-1)] * 31).win_rate == D("0.0312")


def test_summarize_no_losses_and_no_trades() -> None:
    assert summarize([D(10), D(20)]).max_loss == 0
    empty = summarize([])
    assert (empty.pnl, empty.win_rate, empty.avg_pnl, empty.trades_count) == (0, 0, 0, 0)


_fills = st.lists(
    st.tuples(
        st.sampled_from([Side.BUY, Side.SELL]),
        st.integers(min_value=1, max_value=500),
        st.integers(min_value=1, max_value=300_000),
    ),
    min_size=1,
    max_size=25,
)


@given(fills=_fills, board=st.sampled_from(list(Board)))
def test_apply_fill_pnl_equals_independent_recomputation(
    fills: list[tuple[Side, int, int]], board: Board
) -> None:
    state = PositionState()
    ledger_lines: list[tuple[Side, Decimal, Decimal]] = []  # side, amount, fee + tax
    prices: list[int] = []
    for side, qty, price in fills:
        qty = qty if side is Side.BUY else min(qty, state.qty)
        if qty == 0:
            continue
        amount = D(qty * price)
        c = fill_costs(COSTS, side, amount, board, DAY)
        state = apply_fill(state, side, qty, amount, c.fee, c.tax)
        ledger_lines.append((side, amount, c.fee + c.tax))
        if side is Side.BUY:
            prices.append(price)
    if state.qty:  # close the round trip at the last price
        amount = D(state.qty * fills[-1][2])
        c = fill_costs(COSTS, Side.SELL, amount, board, DAY)
        state = apply_fill(state, Side.SELL, state.qty, amount, c.fee, c.tax)
        ledger_lines.append((Side.SELL, amount, c.fee + c.tax))
    if not prices:
        return
    expected = sum((amt if side is Side.SELL else -amt) - cost for side, amt, cost in ledger_lines)
    assert realized_pnl(state) == expected
    assert state.buy_qty == state.sell_qty


@given(buys=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 500_000)), min_size=1))
def test_avg_price_stays_between_buy_prices(buys: list[tuple[int, int]]) -> None:
    state = PositionState()
    for qty, price in buys:
        state = apply_fill(state, Side.BUY, qty, D(qty * price), D(0), D(0))
    assert min(p for _, p in buys) <= state.avg_price <= max(p for _, p in buys)
    exact = D(sum(q * p for q, p in buys)) / state.qty
    assert abs(state.avg_price - exact) <= D("0.0001") * len(buys)

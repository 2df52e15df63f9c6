"""Commission and sell taxes (market/costs.py), with settlement from the KRX calendar."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market.calendar import default_calendar
from market.costs import CostModel, floor_won, weekday_settlement
from market.ticks import round_to_tick
from market.types import Board

D = Decimal


@pytest.fixture(scope="module")
def krx_costs() -> CostModel:
    return CostModel(settlement_of=default_calendar().settlement_day)


@pytest.mark.parametrize(
    ("amount", "floored"),
    [("0.99", 0), ("1", 1), ("140.527", 140), ("1851.9999", 1851), ("2000", 2000)],
)
def test_floor_won(amount: str, floored: int) -> None:
    assert floor_won(D(amount)) == D(floored)


def test_commission_floors_to_the_won() -> None:
    model = CostModel()
    # 1,000,000 x 0.000140527 = 140.527
    assert model.commission(D(1_000_000)) == D(140)
    # 7,116 x 0.000140527 = 0.99999... -> 0
    assert model.commission(D(7_116)) == D(0)
    assert model.commission(D(7_117)) == D(1)


def test_kospi_sell_taxes_2026(krx_costs: CostModel) -> None:
    taxes = krx_costs.sell_taxes(D(1_234_567), Board.KOSPI, date(2026, 3, 10))
    assert taxes.transaction == D(617)  # 617.2835
    assert taxes.rural == D(1_851)  # 1851.8505
    assert taxes.total == D(2_468)


def test_kosdaq_pays_no_rural_tax(krx_costs: CostModel) -> None:
    taxes = krx_costs.sell_taxes(D(1_234_567), Board.KOSDAQ, date(2026, 3, 10))
    assert taxes.rural == D(0)
    assert taxes.transaction == D(2_469)  # 0.20% of 1,234,567 = 2469.134


def test_sale_on_2024_12_27_settles_in_2025_and_pays_2025_rates(krx_costs: CostModel) -> None:
    trade_day = date(2024, 12, 27)
    # KRX is closed on 2024-12-31 and 2025-01-01, so T+2 is 2025-01-02.
    assert default_calendar().settlement_day(trade_day) == date(2025, 1, 2)
    kospi = krx_costs.tax_rates(Board.KOSPI, trade_day)
    kosdaq = krx_costs.tax_rates(Board.KOSDAQ, trade_day)
    assert (kospi.transaction, kospi.rural) == (D("0.0000"), D("0.0015"))
    assert kosdaq.transaction == D("0.0015")
    # Counting weekdays alone would settle on 2024-12-31 and wrongly charge 2024 rates.
    assert weekday_settlement(trade_day) == date(2024, 12, 31)
    assert CostModel().tax_rates(Board.KOSPI, trade_day).transaction == D("0.0003")
    amount = D(10_000_000)
    assert krx_costs.sell_taxes(amount, Board.KOSPI, trade_day).total == D(15_000)
    assert CostModel().sell_taxes(amount, Board.KOSPI, trade_day).total == D(18_000)


def test_sale_on_2024_12_26_settles_in_2024(krx_costs: CostModel) -> None:
    rates = krx_costs.tax_rates(Board.KOSDAQ, date(2024, 12, 26))
    assert rates.transaction == D("0.0018")


def test_zero_tax_factor_gives_no_tax() -> None:
    model = CostModel(tax_factor=D(0))
    for board in Board:
        taxes = model.sell_taxes(D(99_999_999), board, date(2026, 3, 10))
        assert taxes.total == D(0)
    assert model.commission(D(1_000_000)) == D(140)  # commission is not a tax


def test_no_rates_before_the_table_raises() -> None:
    with pytest.raises(ValueError, match="no tax rates"):
        CostModel().tax_rates(Board.KOSPI, date(2022, 6, 1))


def test_max_buy_qty_counts_floored_commission() -> None:
    model = CostModel()
    # 1,000 won buys one 1,000 won share: commission 0.14 floors to 0.
    assert model.max_buy_qty(D(1_000), D(1_000)) == 1
    assert model.max_buy_qty(D(999), D(1_000)) == 0
    assert model.max_buy_qty(D(10_000_000), D(0)) == 0


@given(
    capital=st.integers(min_value=0, max_value=500_000_000).map(D),
    raw_price=st.integers(min_value=1, max_value=2_000_000),
)
def test_max_buy_qty_is_the_largest_affordable(capital: Decimal, raw_price: int) -> None:
    model = CostModel()
    price = round_to_tick(D(raw_price), "down")
    qty = model.max_buy_qty(capital, price)

    def cost(q: int) -> Decimal:
        return q * price + model.commission(q * price)

    assert qty >= 0
    assert cost(qty) <= capital
    assert cost(qty + 1) > capital

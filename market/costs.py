"""Commission and sell taxes, exact to the won.

Rounding rule (one per quantity, applied per fill):
* commission = floor(amount × commission_rate) won, on buys and sells;
* transaction tax = floor(amount × transaction_rate) won, on sells only;
* rural special tax = floor(amount × rural_rate) won, on KOSPI sells only.
`fills.tax` is transaction tax + rural special tax.

Tax rates apply by the day the shares are *transferred* (settlement, T+2 sessions), so a sale on
2024-12-27 (settling 2025-01-02) already pays the 2025 rate. Sources and the full table are in
the README ("Money rules").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal

from market.types import Board

WON = Decimal(1)

#: KIS commission for accounts opened online (per side), see README.
DEFAULT_COMMISSION_RATE = Decimal("0.000140527")


@dataclass(frozen=True, slots=True)
class TaxRates:
    transaction: Decimal  # securities transaction tax
    rural: Decimal  # rural development special tax (KOSPI only)

    @property
    def total(self) -> Decimal:
        return self.transaction + self.rural


#: (first settlement day the rates apply to, {board: rates}), in ascending order.
DEFAULT_TAX_TABLE: tuple[tuple[date, dict[Board, TaxRates]], ...] = (
    (
        date(2023, 1, 1),
        {
            Board.KOSPI: TaxRates(Decimal("0.0005"), Decimal("0.0015")),
            Board.KOSDAQ: TaxRates(Decimal("0.0020"), Decimal(0)),
        },
    ),
    (
        date(2024, 1, 1),
        {
            Board.KOSPI: TaxRates(Decimal("0.0003"), Decimal("0.0015")),
            Board.KOSDAQ: TaxRates(Decimal("0.0018"), Decimal(0)),
        },
    ),
    (
        date(2025, 1, 1),
        {
            Board.KOSPI: TaxRates(Decimal("0.0000"), Decimal("0.0015")),
            Board.KOSDAQ: TaxRates(Decimal("0.0015"), Decimal(0)),
        },
    ),
    (
        date(2026, 1, 1),
        {
            Board.KOSPI: TaxRates(Decimal("0.0005"), Decimal("0.0015")),
            Board.KOSDAQ: TaxRates(Decimal("0.0020"), Decimal(0)),
        },
    ),
)


def floor_won(amount: Decimal) -> Decimal:
    return amount.quantize(WON, rounding=ROUND_FLOOR)


def weekday_settlement(trade_day: date) -> date:
    """T+2 counting weekdays only; pass the exchange calendar's version where holidays matter."""
    day = trade_day
    added = 0
    while added < 2:
        day += timedelta(days=1)
        if day.weekday() < 5:
            added += 1
    return day


@dataclass(frozen=True, slots=True)
class SellTaxes:
    transaction: Decimal
    rural: Decimal

    @property
    def total(self) -> Decimal:
        return self.transaction + self.rural


@dataclass(frozen=True)
class CostModel:
    commission_rate: Decimal = DEFAULT_COMMISSION_RATE
    tax_table: tuple[tuple[date, dict[Board, TaxRates]], ...] = DEFAULT_TAX_TABLE
    settlement_of: Callable[[date], date] = field(default=weekday_settlement)
    #: Multiplies every tax rate; 0 gives a tax-free model (tests, what-if replays).
    tax_factor: Decimal = Decimal(1)

    def commission(self, amount: Decimal) -> Decimal:
        return floor_won(amount * self.commission_rate)

    def tax_rates(self, board: Board, trade_day: date) -> TaxRates:
        settle = self.settlement_of(trade_day)
        chosen: dict[Board, TaxRates] | None = None
        for since, table in self.tax_table:
            if since <= settle:
                chosen = table
        if chosen is None:
            raise ValueError(f"no tax rates known for settlement on {settle}")
        rates = chosen[board]
        return TaxRates(rates.transaction * self.tax_factor, rates.rural * self.tax_factor)

    def sell_taxes(self, amount: Decimal, board: Board, trade_day: date) -> SellTaxes:
        rates = self.tax_rates(board, trade_day)
        return SellTaxes(floor_won(amount * rates.transaction), floor_won(amount * rates.rural))

    def max_buy_qty(self, capital: Decimal, price: Decimal) -> int:
        """Largest qty with qty × price + commission <= capital."""
        if price <= 0:
            return 0
        qty = int((capital / (price * (1 + self.commission_rate))).to_integral_value(ROUND_FLOOR))
        while qty > 0 and self._buy_cost(qty, price) > capital:
            qty -= 1
        # The estimate ignores that commission is floored to the won, so one more share can
        # still fit (e.g. 1,000 won capital buys one 1,000 won share: commission floors to 0).
        while self._buy_cost(qty + 1, price) <= capital:
            qty += 1
        return max(qty, 0)

    def _buy_cost(self, qty: int, price: Decimal) -> Decimal:
        return qty * price + self.commission(qty * price)

"""Cash and holdings of one exchange account, moved by executions.

A BUY execution pays amount + commission; a SELL one receives amount - commission - taxes
(`market.costs`, floor to the won per execution, as the ledger computes them). Cash moves at
execution (the deposit available for new orders; settlement dates are not modelled).
What working orders hold back is not stored here: the venue computes it from the orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from exchange.config import ExchangeAccount
from market.costs import CostModel
from market.orders import Side
from market.types import Board


@dataclass
class Holding:
    symbol: str
    qty: int = 0
    cost: Decimal = Decimal(0)  # purchase amount of the shares held (average-cost basis)
    bought_qty: int = 0  # today
    sold_qty: int = 0
    bought_amount: Decimal = Decimal(0)
    sold_amount: Decimal = Decimal(0)

    @property
    def avg_price(self) -> Decimal:
        return self.cost / self.qty if self.qty else Decimal(0)


@dataclass
class AccountState:
    """One account's money and shares."""

    spec: ExchangeAccount
    costs: CostModel
    cash: Decimal = Decimal(0)
    holdings: dict[str, Holding] = field(default_factory=dict)
    fees: Decimal = Decimal(0)  # commissions + taxes paid today
    bought: Decimal = Decimal(0)  # won bought today
    sold: Decimal = Decimal(0)

    @classmethod
    def open(cls, spec: ExchangeAccount, costs: CostModel) -> AccountState:
        return cls(spec=spec, costs=costs, cash=spec.cash)

    def held(self, symbol: str) -> int:
        h = self.holdings.get(symbol)
        return h.qty if h else 0

    def buy_cost(self, amount: Decimal) -> Decimal:
        """What a BUY of `amount` won takes from cash: amount + commission."""
        return amount + self.costs.commission(amount)

    def execute(
        self, side: Side, symbol: str, qty: int, price: Decimal, board: Board, day: date
    ) -> Decimal:
        """Apply one execution; return its fees (commission + taxes)."""
        amount = qty * price
        h = self.holdings.setdefault(symbol, Holding(symbol))
        commission = self.costs.commission(amount)
        if side is Side.BUY:
            fees = commission
            self.cash -= amount + fees
            h.cost += amount
            h.qty += qty
            h.bought_qty += qty
            h.bought_amount += amount
            self.bought += amount
        else:
            fees = commission + self.costs.sell_taxes(amount, board, day).total
            self.cash += amount - fees
            if h.qty:
                h.cost -= h.cost * qty / h.qty if qty < h.qty else h.cost
            h.qty -= qty
            h.sold_qty += qty
            h.sold_amount += amount
            self.sold += amount
        self.fees += fees
        return fees

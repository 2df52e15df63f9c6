"""`SimBook`: the order bookkeeping of the simulated brokers (`PaperBroker`, `BarBroker`).

Both keep their orders in this process and differ only in how orders meet the market (the
simulated book, or one-minute bars). What they share lives here, written once:

* the orders: ids issued in sequence (ten digits, like KIS `ODNO`), working ones in time
  priority (oldest first), cumulative figures per order (`SimOrder.status`);
* the `Broker` port's `cancel_order`, `order_status`, `find_orders` and `account`, each first
  advancing the book to `clock.now()` (`_advance`, the subclass's matching), so the result does
  not depend on how often anyone polls;
* the checks of an order at submission (`_validate`) and the closing auction (`_run_auction`):
  whatever is working at the close executes in full at the auction price if it crosses
  (MARKET, BUY limit >= price, SELL limit <= price); the rest expires.

The account is derived from the executions: holdings per symbol on an average-cost basis and,
when a `CostModel` is given, cash = the starting cash − bought − sold amounts with commission
and taxes per execution (as an exchange account moves); without one its cash is None (not
modelled). A holding's orderable quantity excludes what working SELL orders still hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Generic, TypeVar

import anyio.lowlevel

from broker.errors import OrderRejected, UnknownOrder
from broker.port import BrokerOrderId, OrderRequest, OrderStatus, OrderType, Side
from market.account import AccountSnapshot, Holding
from market.calendar import Session
from market.clock import Clock
from market.costs import CostModel
from market.ticks import is_on_grid
from market.types import Board


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution of an order: when, how many shares, at what price."""

    at: datetime
    qty: int
    price: Decimal


@dataclass(kw_only=True)
class SimOrder:
    """One order's state; subclasses add where their matching stopped."""

    broker_order_id: BrokerOrderId
    request: OrderRequest
    ordered_at: datetime
    remaining: int
    updated_at: datetime
    filled_qty: int = 0
    filled_amount: Decimal = Decimal(0)
    canceled: bool = False
    expired: bool = False
    executions: list[Execution] = field(default_factory=list)

    def fill(self, qty: int, price: Decimal, at: datetime) -> None:
        self.filled_qty += qty
        self.filled_amount += qty * price
        self.remaining -= qty
        self.updated_at = at
        self.executions.append(Execution(at, qty, price))

    def status(self) -> OrderStatus:
        r = self.request
        return OrderStatus(
            broker_order_id=self.broker_order_id,
            symbol=r.symbol,
            side=r.side,
            qty=r.qty,
            filled_qty=self.filled_qty,
            filled_amount=self.filled_amount,
            remaining_qty=self.remaining,
            rejected_qty=0,
            canceled=self.canceled,
            ordered_at=self.ordered_at,
            updated_at=self.updated_at,
        )


OrderT = TypeVar("OrderT", bound=SimOrder)


class SimBook(ABC, Generic[OrderT]):
    """The orders of one simulated account over one session (see the module docstring).

    A subclass matches: `_advance(now)` runs its fill model for every working order up to
    `now` (idempotent; it calls `_run_auction` once the close is reached and `_prune` after),
    and it says what the market knows: `_limits`, `_board`, `_closing_price`.
    """

    def __init__(
        self,
        clock: Clock,
        session: Session,
        *,
        cash: Decimal,
        costs: CostModel | None,
        first_order_no: int,
    ) -> None:
        self.clock = clock
        self.session = session
        self.starting_cash = cash
        self.costs = costs
        self._next_no = first_order_no
        self._orders: dict[str, OrderT] = {}
        self._working: list[OrderT] = []  # time priority: oldest first
        self._auction_done = False

    # ----- what a subclass supplies -------------------------------------------------------

    @abstractmethod
    def _advance(self, now: datetime) -> None:
        """Match every working order up to `now` (idempotent)."""

    @abstractmethod
    def _limits(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """(lower, upper) daily price limits of `symbol`; None for a symbol not traded."""

    @abstractmethod
    def _board(self, symbol: str) -> Board:
        """The board `symbol` is listed on (its sell taxes depend on it)."""

    @abstractmethod
    def _closing_price(self, symbol: str) -> Decimal | None:
        """The closing auction's price of `symbol` (None: none known, nothing executes)."""

    # ----- Broker -------------------------------------------------------------------------

    async def cancel_order(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        await anyio.lowlevel.checkpoint()
        now = self.clock.now()
        self._advance(now)
        order = self._get(broker_order_id)
        if order.remaining > 0:
            order.remaining = 0
            order.canceled = True
            order.updated_at = now
            self._prune()
        return order.status()

    async def order_status(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        await anyio.lowlevel.checkpoint()
        self._advance(self.clock.now())
        return self._get(broker_order_id).status()

    async def find_orders(
        self, symbol: str, side: Side, qty: int, since: datetime
    ) -> Sequence[OrderStatus]:
        await anyio.lowlevel.checkpoint()
        self._advance(self.clock.now())
        return [
            o.status()
            for o in self._orders.values()
            if o.request.symbol == symbol
            and o.request.side == side
            and o.request.qty == qty
            and o.ordered_at >= since
        ]

    async def account(self) -> AccountSnapshot:
        await anyio.lowlevel.checkpoint()
        now = self.clock.now()
        self._advance(now)
        # every execution in time order (ties: order placement, then execution order)
        fills = sorted(
            (e.at, n, i, o.request.side, o.request.symbol, e.qty, e.price)
            for n, o in enumerate(self._orders.values())
            for i, e in enumerate(o.executions)
        )
        cash = self.starting_cash
        costs, day = self.costs, self.session.day
        held: dict[str, tuple[int, Decimal]] = {}  # symbol -> (qty, cost of the shares held)
        for _, _, _, side, symbol, qty, price in fills:
            have, cost = held.get(symbol, (0, Decimal(0)))
            amount = qty * price
            fees = costs.commission(amount) if costs is not None else Decimal(0)
            if side is Side.BUY:
                cash -= amount + fees
                held[symbol] = (have + qty, cost + amount)
            else:
                if costs is not None:
                    fees += costs.sell_taxes(amount, self._board(symbol), day).total
                cash += amount - fees
                left = have - qty
                held[symbol] = (left, cost * left / have if have > 0 and left > 0 else Decimal(0))
        selling: dict[str, int] = {}
        for o in self._working:
            if o.request.side is Side.SELL:
                selling[o.request.symbol] = selling.get(o.request.symbol, 0) + o.remaining
        holdings = {
            symbol: Holding(symbol, qty, cost / qty, max(0, qty - selling.get(symbol, 0)))
            for symbol, (qty, cost) in sorted(held.items())
            if qty > 0
        }
        return AccountSnapshot(
            cash=cash if costs is not None else None, holdings=holdings, as_of=now
        )

    def executions(self, broker_order_id: BrokerOrderId) -> list[Execution]:
        """Every execution of one order so far (for tests and reports)."""
        self._advance(self.clock.now())
        return list(self._get(broker_order_id).executions)

    # ----- bookkeeping --------------------------------------------------------------------

    def _next_id(self) -> BrokerOrderId:
        """The next order's id (ten digits, in sequence)."""
        broker_order_id = BrokerOrderId(f"{self._next_no:010d}")
        self._next_no += 1
        return broker_order_id

    def _place(self, order: OrderT) -> None:
        """Book a new order and queue it behind the working ones."""
        self._orders[order.broker_order_id] = order
        self._working.append(order)

    def _get(self, broker_order_id: str) -> OrderT:
        try:
            return self._orders[broker_order_id]
        except KeyError:
            raise UnknownOrder(f"no order {broker_order_id!r}") from None

    def _prune(self) -> None:
        self._working = [o for o in self._working if o.remaining > 0]

    def _validate(self, request: OrderRequest, now: datetime) -> None:
        """Reject what the exchange would: bad quantity or price, unknown symbol, no session."""
        if request.qty <= 0:
            raise OrderRejected(f"qty must be positive, got {request.qty}")
        limits = self._limits(request.symbol)
        if limits is None:
            raise OrderRejected(f"unknown symbol {request.symbol!r}")
        lower, upper = limits
        if request.order_type is OrderType.LIMIT:
            price = request.price
            if price is None:
                raise OrderRejected("LIMIT order needs a price")
            if not is_on_grid(price):
                raise OrderRejected(f"price {price} is not on the tick grid")
            if not lower <= price <= upper:
                raise OrderRejected(f"price {price} is outside the daily limits {lower}..{upper}")
        elif request.price is not None:
            raise OrderRejected("MARKET order must not carry a price")
        s = self.session
        if now < s.open:
            raise OrderRejected(f"outside the session: market opens at {s.open:%H:%M}")
        if now >= s.close:
            raise OrderRejected(f"outside the session: market closed at {s.close:%H:%M}")

    def _run_auction(self) -> None:
        """The closing auction: crossing orders execute in full at its price, the rest expire."""
        close = self.session.close
        for order in self._working:
            price = self._closing_price(order.request.symbol)
            if price is not None and crosses(order.request, price) and order.remaining > 0:
                order.fill(order.remaining, price, close)
            if order.remaining > 0:
                order.remaining = 0
                order.expired = True
                order.updated_at = close


def crosses(r: OrderRequest, price: Decimal) -> bool:
    """Whether `r` executes in a single-price auction at `price`."""
    return (
        r.price is None
        or (r.side is Side.BUY and r.price >= price)
        or (r.side is Side.SELL and r.price <= price)
    )

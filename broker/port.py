"""The ports every broker adapter implements: `Broker` (orders) and `MarketData` (quotes).

The shapes follow the KIS Open API's constraints (../shared/KIS.md) so a KIS adapter fits
without contortions:

* No client order id travels to the broker. We keep our `ClientOrderId` in the ledger and the
  broker gives back a `BrokerOrderId` (KIS `ODNO`). A request whose outcome is unknown is
  reconciled with `find_orders` (symbol, side, qty, time window), never resent blindly.
* Fills are learned by polling `order_status`, which reports cumulative figures
  (`filled_qty`, `filled_amount`); the ledger applies them idempotently keyed by
  (broker order id, cumulative filled qty). Follow-up orders are sized from `remaining_qty`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NewType, Protocol

from market.types import Instrument, Quote, Snapshot

ClientOrderId = NewType("ClientOrderId", str)
BrokerOrderId = NewType("BrokerOrderId", str)


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    LIMIT = "LIMIT"  # KIS ORD_DVSN 00
    MARKET = "MARKET"  # KIS ORD_DVSN 01


@dataclass(frozen=True, slots=True)
class OrderRequest:
    symbol: str
    side: Side
    qty: int
    order_type: OrderType
    price: Decimal | None = None  # required for LIMIT, on the tick grid; None for MARKET


@dataclass(frozen=True, slots=True)
class OrderAck:
    broker_order_id: BrokerOrderId
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """Cumulative state of one broker order (KIS inquire-daily-ccld row)."""

    broker_order_id: BrokerOrderId
    symbol: str
    side: Side
    qty: int  # ordered
    filled_qty: int  # cumulative (tot_ccld_qty)
    filled_amount: Decimal  # cumulative won (tot_ccld_amt): sum of qty x price per execution
    remaining_qty: int  # still working (rmn_qty); 0 once done, canceled or rejected
    rejected_qty: int  # rjct_qty
    canceled: bool  # cncl_yn
    ordered_at: datetime
    updated_at: datetime

    @property
    def done(self) -> bool:
        """No quantity is working any more: further polls will not change the fills."""
        return self.remaining_qty == 0

    @property
    def avg_price(self) -> Decimal | None:
        return self.filled_amount / self.filled_qty if self.filled_qty else None


class Broker(Protocol):
    """Places, cancels and inspects orders on one brokerage account."""

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        """Place one order.

        Returns the broker's id once the broker has accepted it. Raises `OrderRejected`
        (final, with the reason), `BrokerUnavailable` (nothing placed; retry later) or
        `OrderOutcomeUnknown` (maybe placed: reconcile with `find_orders`, do not resend).
        """
        ...

    async def cancel_order(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        """Cancel whatever of the order is still working; return the order's final state.

        Cancelling an order that is already done is not an error: its state is returned.
        """
        ...

    async def order_status(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        """The order's cumulative state now. Raises `UnknownOrder` for an id never issued."""
        ...

    async def find_orders(
        self, symbol: str, side: Side, qty: int, since: datetime
    ) -> Sequence[OrderStatus]:
        """Today's orders for `symbol`/`side`/`qty` placed at or after `since`, oldest first.

        Used to resolve an `OrderOutcomeUnknown` before deciding whether to resend.
        """
        ...


class MarketData(Protocol):
    """Read-only market data for one trading day."""

    async def instruments(self) -> Sequence[Instrument]:
        """The tradable universe today (static for the day)."""
        ...

    async def snapshot(self, n_bars: int) -> Snapshot:
        """Every symbol now, with its last `n_bars` one-minute bars, column-wise."""
        ...

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        """One symbol now, with the short moving average of its last `short_ma_bars` bars."""
        ...

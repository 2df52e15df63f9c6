"""The ports every broker adapter implements: `Broker` (orders) and `MarketData` (quotes).

The shapes follow the KIS Open API's constraints (no client order id, fills learned by
polling) so a KIS adapter fits without contortions:

* No client order id travels to the broker. We keep our `ClientOrderId` in the ledger and the
  broker gives back a `BrokerOrderId` (KIS `ODNO`). A request whose outcome is unknown is
  reconciled with `find_orders` (symbol, side, qty, time window), never resent blindly.
* The account (`account`: cash and holdings per symbol) is read for reconciliation against
  the ledger; it covers the whole account, whoever placed the orders.
* Fills are learned by polling `order_status`, which reports cumulative figures
  (`filled_qty`, `filled_amount`); the ledger applies them idempotently keyed by
  (broker order id, cumulative filled qty). Follow-up orders are sized from `remaining_qty`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from market.account import AccountSnapshot, Holding
from market.orders import (
    BrokerOrderId,
    ClientOrderId,
    OrderAck,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    canonical_broker_order_id,
)
from market.types import Instrument, Quote, Snapshot

__all__ = [
    "AccountSnapshot",
    "Broker",
    "BrokerOrderId",
    "ClientOrderId",
    "Holding",
    "MarketData",
    "OrderAck",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Side",
    "canonical_broker_order_id",
]


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

    async def account(self) -> AccountSnapshot:
        """The account now: cash (settled as of today's executions) and every holding.

        Read-only; executions up to the call are included. Whole-account figures: orders of
        every process on the account (and any placed outside the fleet) count. Raises
        `BrokerUnavailable` when the broker cannot be asked.
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


@runtime_checkable
class PriceWatch(Protocol):
    """Optional: market data that can wake a holder on the trade that reaches a price.

    A HOLD loop that would otherwise check its sell rules every few seconds waits here instead,
    so a stop is acted on at the trade that crosses it, not at the next poll.
    """

    async def wait_price(
        self,
        symbol: str,
        below: Decimal | None,
        above: Decimal | None,
        timeout_s: float,
    ) -> bool:
        """Return True as soon as a trade of `symbol` prints at or below `below` or at or above
        `above` (None: no level on that side), False after `timeout_s` clock seconds without
        one. A trade already through a level when called counts at once."""
        ...

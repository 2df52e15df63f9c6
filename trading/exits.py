"""Selling a holding until it is flat: the exit half of the order path.

Each round re-reads the position the broker confirmed (through the ledger), so follow-up orders
are sized from what is really left after partial fills. An unfilled remainder escalates one
urgency step per round (passive limit -> marketable limit -> market); once continuous trading
has ended, whatever is left goes into the closing auction as a market order.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker.port import OrderType, Side
from coordination.locks import Lease
from strategy.signals import HeldPosition, SellSignal, Urgency, sell_order
from trading.orders import OrderExecutor, Placement

if TYPE_CHECKING:
    from trading.loop import Deps

#: how long after the close a worker keeps working to finish its exits
AFTER_CLOSE_GRACE = timedelta(minutes=2)


def order_timeout_s(d: Deps, urgency: Urgency) -> float:
    """A passive order rests for ORDER_TIMEOUT_S; a marketable one a quarter of it."""
    base = d.config.order_timeout_s
    return base if urgency is Urgency.PASSIVE else base / 4


async def sell_until_flat(
    d: Deps, orders: OrderExecutor, log: Any, held: HeldPosition, lease: Lease, signal: SellSignal
) -> bool:
    """Sell `held` until the ledger shows it flat (True), or the close has passed (False).

    Raises `LeaseInvalid` when the ledger refuses the lease's fence.
    """
    urgency = signal.urgency
    session = d.session
    tier = d.tiers.get(held.symbol)
    while True:
        position = await d.ledger.open_position(held.symbol)
        if position is None or position.qty <= 0:
            return True
        now = d.clock.now()
        if now >= session.close + AFTER_CLOSE_GRACE:
            log.error("{} x{} still open after the close", held.symbol, position.qty)
            return False
        quote = await d.market.quote(held.symbol)
        if now >= session.continuous_close:
            # closing auction: everything left goes in at the single price
            order_type, price = OrderType.MARKET, None
            deadline = session.close + AFTER_CLOSE_GRACE
        else:
            order_type, price = sell_order(urgency, quote)
            timeout = timedelta(seconds=order_timeout_s(d, urgency))
            deadline = min(now + timeout, session.continuous_close)
        placement = Placement(
            held.symbol,
            Side.SELL,
            position.qty,
            order_type,
            price,
            lease.fence,
            signal.reason.value,
            signal.trigger_price,
            int(tier) if tier is not None else None,
        )
        if await orders.execute(placement, deadline) is None:
            await d.clock.sleep(d.config.order_poll_s)
        urgency = urgency.escalate()

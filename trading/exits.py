"""Selling a holding until it is flat: the exit half of the order path.

Each round re-reads the position the broker confirmed (through the ledger), after every earlier
order on the symbol is final, so follow-up orders are sized from what is really left after
partial fills and a SELL is never sized while another order on the symbol works. An unfilled
remainder escalates one urgency step per round (passive limit -> marketable limit -> market);
once continuous trading has ended, whatever is left goes into the closing auction as a market
order.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from market.orders import OrderType, Side
from strategy.signals import SellSignal, Urgency, sell_order
from trading.deps import Deps
from trading.orders import Placement
from trading.tenure import Tenure

#: how long after the close a worker keeps working to finish its exits
AFTER_CLOSE_GRACE = timedelta(minutes=2)


def order_timeout_s(d: Deps, urgency: Urgency) -> float:
    """A passive order rests for ORDER_TIMEOUT_S; a marketable one a quarter of it."""
    base = d.config.order_timeout_s
    return base if urgency is Urgency.PASSIVE else base / 4


async def sell_until_flat(d: Deps, tenure: Tenure, signal: SellSignal, log: Any) -> bool:
    """Sell the tenure's position until the ledger shows it flat (True), or the close has
    passed (False). Raises `LeaseInvalid` when the ledger refuses the fence."""
    urgency = signal.urgency
    session = d.session
    symbol = tenure.symbol
    tier = d.tiers.get(symbol)
    while True:
        await tenure.settle()
        position = await tenure.position()
        if position is None:
            return True
        now = d.clock.now()
        if now >= session.close + AFTER_CLOSE_GRACE:
            log.error("{} x{} still open after the close", symbol, position.qty)
            return False
        quote = await d.market.quote(symbol)
        if now >= session.continuous_close:
            # closing auction: everything left goes in at the single price
            order_type, price = OrderType.MARKET, None
            cancel_at = session.close + AFTER_CLOSE_GRACE
        else:
            order_type, price = sell_order(urgency, quote)
            timeout = timedelta(seconds=order_timeout_s(d, urgency))
            cancel_at = min(now + timeout, session.continuous_close)
        placement = Placement(symbol, Side.SELL, position.qty, order_type, price, tenure.fence,
                              signal.reason.value, signal.trigger_price,
                              int(tier) if tier is not None else None)  # fmt: skip
        final = await tenure.place(placement, cancel_at)
        if final.filled_qty == 0:
            await d.clock.sleep(d.config.order_poll_s)
        urgency = urgency.escalate()

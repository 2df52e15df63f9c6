"""The prices at which the default sell rules would fire, for a HOLD loop that waits on trades.

`sell_levels` turns `strategy.signals.evaluate_sell_signal`'s price rules into two levels: a
trade at or below `below` fires the stop loss or the trend break, one at or above `above` the
take profit. A holder waits for the market to print through either (`broker.port.PriceWatch`)
instead of polling, then evaluates the full rule set on a fresh quote. The time rules (maximum
hold, the liquidation window, the trend break's minimum hold) are not price levels: the HOLD
loop's timeout, at most `HOLD_INTERVAL_S`, covers them as before.

Prices on KRX are whole won, so the trend break's strict `price < short_ma x (1 - pct)` becomes
`price <= ceil(that) - 1`: touching a level always fires its rule, and a holder never wakes on
a price that fires nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from market.types import Quote
from strategy.signals import HeldPosition, SignalParams


@dataclass(frozen=True, slots=True)
class SellLevels:
    below: Decimal | None  # a print at or below fires a sell rule
    above: Decimal | None  # a print at or above fires a sell rule


@runtime_checkable
class HasSellLevels(Protocol):
    """Optional for a strategy (`strategy.base.Strategy`): the prices at which its sell rules
    would fire now, so HOLD can wait on trades instead of polling. A strategy without it is
    checked every hold interval."""

    def sell_levels(self, position: HeldPosition, quote: Quote, now: datetime) -> SellLevels:
        """Levels such that a print at or through one fires `sell_signal` (never one that
        fires nothing: the loop would wake for it)."""
        ...


def sell_levels(
    position: HeldPosition, quote: Quote, now: datetime, params: SignalParams
) -> SellLevels:
    """The price levels of the stop loss, the trend break (once held long enough) and the take
    profit for `position` as of `quote`."""
    stop = position.avg_price * (1 - params.stop_loss_pct / 100)
    below = stop
    if quote.short_ma is not None and now - position.opened_at >= params.trend_min_hold:
        trend = quote.short_ma * (1 - params.trend_break_pct / 100)
        below = max(below, Decimal(math.ceil(trend) - 1))
    above = position.avg_price * (1 + params.take_profit_pct / 100)
    return SellLevels(below, above)

"""Mean reversion: buy a liquid name that has dropped well below its recent mean, sell when it
is back at the mean (or on the stop loss, or after a while).

Copy this file into your project, rename the class, and run it:
    STRATEGY=examples.mean_reversion:MeanReversion STRATEGY_ENTRY_Z=2.5 python -m worker
Parameters: the defaults below, then `STRATEGY_PARAMS=file.toml`, then the environment as
`STRATEGY_<NAME>`; a bad value exits 2 naming it.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Self

import numpy as np
from pydantic import Field

from market.types import Quote, Snapshot
from strategy.base import (
    BasicCandidate,
    ExitReason,
    HeldPosition,
    SellSignal,
    StrategyParams,
    Urgency,
    basic_candidates,
)


class MeanReversionParams(StrategyParams):
    lookback_bars: int = Field(20, ge=5, le=120, description="bars in the mean and deviation")
    entry_z: float = Field(2.0, ge=0.5, le=6, description="buy this many deviations below")
    min_traded_value: Decimal = Field(Decimal(5 * 10**8), ge=0, le=10**15, description="won today")
    max_candidates: int = Field(10, ge=1, le=500, description="candidates per scan")
    stop_loss_pct: Decimal = Field(Decimal("2.0"), gt=0, lt=30, description="% below entry")
    max_hold_min: int = Field(45, ge=1, le=390, description="time exit (minutes)")


class MeanReversion:
    Params = MeanReversionParams  # typed, bounded, described: the loader validates them

    def __init__(self, params: MeanReversionParams | None = None) -> None:
        self.params = params or MeanReversionParams()  # a value: never changed afterwards
        self.bars_needed = self.params.lookback_bars  # the scan reads this many bars
        self.quote_ma_bars = self.params.lookback_bars  # HOLD quotes carry this mean

    def with_params(self, **changes: Any) -> Self:  # a new strategy: this one stays as it is
        return type(self)(self.params.replaced(**changes))

    def candidates(self, snap: Snapshot) -> list[BasicCandidate]:
        # One row per symbol, one column per minute; a short history is NaN-padded on the left.
        p = self.params
        closes = snap.closes[:, -p.lookback_bars :]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean, std = closes.mean(axis=1), closes.std(axis=1)
            z = (snap.price - mean) / std  # NaN where the history is short or flat
            mask = (
                (closes.shape[1] >= p.lookback_bars)
                & (std > 0)
                & (snap.traded_value >= float(p.min_traded_value))
                & (z <= -p.entry_z)
            )
        if snap.halted is not None:  # no continuous price to buy at in a volatility halt
            mask &= ~snap.halted
        # deepest drop first; ties by symbol, so the same snapshot gives the same list
        return basic_candidates(snap, mask, -z, p.max_candidates, reason="below its mean")

    def buy_signal(self, candidate: BasicCandidate) -> str | None:
        # Every candidate already passed the filter; the label groups trades in tuning views.
        return "mean_reversion" if candidate.score >= self.params.entry_z else None

    def sell_signal(self, position: HeldPosition, quote: Quote, now: datetime) -> SellSignal | None:
        p, price = self.params, quote.price
        if price <= position.avg_price * (1 - p.stop_loss_pct / 100):
            return SellSignal(ExitReason.STOP_LOSS, Urgency.MARKETABLE, price)
        if quote.short_ma is not None and price >= quote.short_ma:  # back at the mean
            return SellSignal(ExitReason.TAKE_PROFIT, Urgency.PASSIVE, price)
        if now - position.opened_at >= timedelta(minutes=p.max_hold_min):
            return SellSignal(ExitReason.TIME_EXIT, Urgency.PASSIVE, price)
        return None

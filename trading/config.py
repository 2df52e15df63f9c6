"""The trading core's own parameters, built by the process shell from its settings.

Settings flow down: `worker` reads the environment once and hands `trading` this frozen value;
nothing in `trading` or `strategy` reads the environment or imports the shell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from strategy.base import Strategy
from strategy.momentum import MomentumBreakout


@dataclass(frozen=True, slots=True)
class TradingConfig:
    """One worker's limits and pacing. Intervals are clock seconds (simulated seconds when the
    clock runs faster than real time); `listing_lag_s` is too."""

    worker_id: str
    capital_limit: Decimal = Decimal(10_000_000)
    daily_loss_limit: Decimal = Decimal(2_000_000)
    scan_interval_s: float = 30.0
    hold_interval_s: float = 10.0
    tick_stops: bool = True  # HOLD waits on the market's trades where it offers `PriceWatch`
    vol_surge_ratio: float = 2.5  # `Quote.range_ratio` at or above it: a volatility surge
    vol_surge_hold_s: float = 2.0  # the HOLD interval during a surge
    order_poll_s: float = 2.0
    order_timeout_s: float = 60.0
    heartbeat_s: float = 10 / 3
    #: one-minute bars each scan fetches per symbol (at least `strategy.bars_needed`)
    n_bars: int = 60
    liquidation_lead_min: int = 15
    thin_liquidation_lead_min: int = 25
    #: how long after a submit a broker may still not list the order (KIS lists late): an
    #: order whose outcome is unknown is not called "not placed" before this has passed
    listing_lag_s: float = 30.0
    #: what to buy and when to sell (`strategy.base`); a value: replace it to change parameters
    strategy: Strategy[Any] = field(default_factory=MomentumBreakout)

"""Market data poller: the two reads the worker makes of the market, over any `MarketData`.

* SCAN: `scan_candidates` takes one snapshot of the whole universe and asks the strategy for
  its ranked candidates, keeping those its buy rule accepts (`poll_candidates`: the same with
  the shipped strategy's scan and rule as plain parameters).
* HOLD: `poll_position` reads one quote, which carries everything the sell rules need (last
  price, bid/ask, limits, the short moving average) in a single call.

The same functions run over the paper broker, the KIS adapter and `market.replay.ReplayMarket`,
which is how a replayed day is checked against the live path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.port import MarketData
from market.types import Quote
from strategy.base import Strategy
from strategy.scan import Candidate, ScanParams, rank_candidates
from strategy.signals import SignalParams, evaluate_buy_signal


async def poll_candidates(
    market: MarketData,
    params: ScanParams,
    n_bars: int,
    signal_params: SignalParams | None = None,
) -> list[Candidate]:
    """The ranked candidates now, best first.

    With `signal_params`, only those `evaluate_buy_signal` accepts, in rank order. The
    `max_candidates` cut applies before the buy rule, as in the worker loop.
    """
    needed = max(params.short_ma_bars, params.long_ma_bars, params.breakout_bars)
    if n_bars < needed:
        # Fewer bars than the longest window would silently shorten it.
        raise ValueError(f"n_bars must be >= {needed} for these scan parameters, got {n_bars}")
    snap = await market.snapshot(n_bars)
    ranked = rank_candidates(snap, params)
    if signal_params is None:
        return ranked
    return [c for c in ranked if evaluate_buy_signal(c, signal_params)]


async def scan_candidates(
    market: MarketData, strategy: Strategy[Any], n_bars: int
) -> Sequence[Any]:
    """The strategy's candidates now that its buy rule accepts, best first."""
    if n_bars < strategy.bars_needed:
        # Fewer bars than the longest window would silently shorten it.
        raise ValueError(f"n_bars must be >= {strategy.bars_needed} for this strategy, "
                         f"got {n_bars}")  # fmt: skip
    snap = await market.snapshot(n_bars)
    return [c for c in strategy.candidates(snap) if strategy.buy_signal(c) is not None]


async def poll_position(market: MarketData, symbol: str, short_ma_bars: int) -> Quote:
    """One quote of a held symbol, with the short MA over `short_ma_bars` (the strategy's
    `quote_ma_bars`; 0: none) that a sell rule may compare against."""
    if short_ma_bars < 0:
        raise ValueError(f"short_ma_bars must be >= 0, got {short_ma_bars}")
    return await market.quote(symbol, short_ma_bars)

"""Market data poller: the two reads the worker makes of the market, over any `MarketData`.

* SCAN: `poll_candidates` takes one snapshot of the whole universe and ranks it
  (`strategy.scan`: pre-filters, indicators, score, reasons), optionally keeping only the
  candidates the buy rule accepts.
* HOLD: `poll_position` reads one quote, which carries everything the sell rules need (last
  price, bid/ask, limits, the short moving average) in a single call.

The same functions run over the paper broker, the KIS adapter and `market.replay.ReplayMarket`,
which is how a replayed day is checked against the live path.
"""

from __future__ import annotations

from broker.port import MarketData
from market.types import Quote
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


async def poll_position(market: MarketData, symbol: str, short_ma_bars: int) -> Quote:
    """One quote of a held symbol, with the short MA the trend-break rule compares against."""
    if short_ma_bars < 1:
        raise ValueError(f"short_ma_bars must be >= 1, got {short_ma_bars}")
    return await market.quote(symbol, short_ma_bars)

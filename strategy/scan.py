"""SCAN: filter the whole universe, compute short-candle indicators for every symbol at once,
score and rank candidates.

Everything is vectorized over the `Snapshot` arrays (rows = symbols, columns = one-minute
bars): no Python loop over symbols. Indicators are float64 statistics; prices that reach an
order are always re-read as `Decimal` from a quote.

Indicators (per symbol, on completed one-minute closes):
* fast / slow MA: mean of the last `short_ma_bars` / `long_ma_bars` closes;
* N-bar breakout: last price above the highest of the last `breakout_bars` closes;
* prior-day breakout: last price above the prior day's high;
* volume surge: mean volume of the last `surge_bars` bars over the mean of the last
  `long_ma_bars` bars.
Score = momentum in % (fast / slow - 1) x 100 + 1.0 for an N-bar breakout + 0.5 for a prior-day
breakout + 0.5 x min(surge - 1, 3) when the surge is above 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from market.types import FloatArray, Snapshot, Tier

_LIMIT_HEADROOM = 1.25  # skip names within ~5 points of the +30% limit: nothing left to gain


@dataclass(frozen=True, slots=True)
class ScanParams:
    short_ma_bars: int = 5
    long_ma_bars: int = 20
    breakout_bars: int = 30
    surge_bars: int = 5
    min_volume: int = 20_000
    min_traded_value: float = 300_000_000.0
    max_spread_ticks: int = 3
    min_price: float = 1_000.0
    max_price: float = 1_000_000.0
    exclude: frozenset[str] = frozenset()
    max_candidates: int = 20


@dataclass(frozen=True, slots=True)
class Indicators:
    fast_ma: FloatArray
    slow_ma: FloatArray
    nbar_high: FloatArray
    surge: FloatArray
    spread_ticks: FloatArray


@dataclass(frozen=True, slots=True)
class Candidate:
    symbol: str
    price: Decimal
    score: float
    fast_ma: float
    slow_ma: float
    breakout_nbar: bool
    breakout_prev_high: bool
    surge: float
    tier: Tier
    reasons: tuple[str, ...]


def compute_indicators(snap: Snapshot, p: ScanParams) -> Indicators:
    closes, volumes = snap.closes, snap.volumes
    with np.errstate(invalid="ignore", divide="ignore"):
        fast = closes[:, -p.short_ma_bars :].mean(axis=1)
        slow = closes[:, -p.long_ma_bars :].mean(axis=1)
        nbar_high = closes[:, -p.breakout_bars :].max(axis=1)
        recent = volumes[:, -p.surge_bars :].mean(axis=1)
        base = volumes[:, -p.long_ma_bars :].mean(axis=1)
        surge = np.where(base > 0, recent / base, 0.0)
        spread = (snap.ask - snap.bid) / snap.tick
    return Indicators(fast, slow, nbar_high, surge, spread)


def liquid_mask(snap: Snapshot, ind: Indicators, p: ScanParams) -> np.ndarray:
    """True for symbols that pass every pre-filter."""
    enough_bars = ~np.isnan(snap.closes[:, -max(p.long_ma_bars, p.breakout_bars) :]).any(axis=1)
    mask: np.ndarray = (
        (snap.volume >= p.min_volume)
        & (snap.traded_value >= p.min_traded_value)
        & (ind.spread_ticks <= p.max_spread_ticks)
        & (snap.price >= p.min_price)
        & (snap.price <= p.max_price)
        & (snap.price < snap.prev_close * _LIMIT_HEADROOM)
        & enough_bars
    )
    if snap.halted is not None:  # in a volatility interruption: no continuous price to buy at
        mask &= ~snap.halted
    if p.exclude:  # the only per-symbol Python work in the scan: skip it when there is none
        mask &= ~np.fromiter((s in p.exclude for s in snap.symbols), bool, len(snap.symbols))
    return mask


def score(snap: Snapshot, ind: Indicators) -> FloatArray:
    with np.errstate(invalid="ignore", divide="ignore"):
        momentum = (ind.fast_ma / ind.slow_ma - 1.0) * 100.0
    nbar = (snap.price > ind.nbar_high).astype(np.float64)
    prev = (snap.price > snap.prev_high).astype(np.float64)
    surge_bonus = 0.5 * np.clip(ind.surge - 1.0, 0.0, 3.0)
    result: FloatArray = np.nan_to_num(momentum, nan=-np.inf) + nbar + 0.5 * prev + surge_bonus
    return result


def rank_candidates(snap: Snapshot, p: ScanParams) -> list[Candidate]:
    """The best `max_candidates` liquid symbols, best first (ties broken by symbol)."""
    ind = compute_indicators(snap, p)
    scores = score(snap, ind)
    idx = np.flatnonzero(liquid_mask(snap, ind, p))
    if idx.size == 0 or p.max_candidates < 1:
        return []
    best = scores[idx]
    k = p.max_candidates
    if idx.size > k:
        # Only scores at or above the k-th best can make the cut. Keeping every tie with it
        # lets the symbol tie-break below see all contenders while sorting a handful of
        # strings instead of the whole universe.
        kth = -np.partition(-best, k - 1)[k - 1]
        keep = best >= kth
        idx, best = idx[keep], best[keep]
    symbols = np.asarray([snap.symbols[i] for i in idx])
    # lexsort: last key is primary -> score descending, then symbol ascending
    order = idx[np.lexsort((symbols, -best))][:k]
    return [_candidate(snap, ind, scores, int(i), p) for i in order]


def _candidate(
    snap: Snapshot, ind: Indicators, scores: FloatArray, i: int, p: ScanParams
) -> Candidate:
    price = float(snap.price[i])
    fast, slow, surge = float(ind.fast_ma[i]), float(ind.slow_ma[i]), float(ind.surge[i])
    nbar = price > float(ind.nbar_high[i])
    prev = price > float(snap.prev_high[i])
    reasons = [f"momentum {(fast / slow - 1) * 100:+.2f}%"]
    if nbar:
        reasons.append(f"breakout {p.breakout_bars}-bar high")
    if prev:
        reasons.append("above prior-day high")
    if surge > 1:
        reasons.append(f"volume x{surge:.1f}")
    return Candidate(
        symbol=snap.symbols[i],
        price=Decimal(round(price)),
        score=float(scores[i]),
        fast_ma=fast,
        slow_ma=slow,
        breakout_nbar=nbar,
        breakout_prev_high=prev,
        surge=surge,
        tier=Tier(int(snap.tier[i])),
        reasons=tuple(reasons),
    )

"""Numpy generation of the simulated universe and its one-minute price paths.

Everything is drawn from one `numpy.random.Generator` in a fixed order, so the same generator
state gives the same market in any process. Prices are float64 arrays holding whole won on the
KRX tick grid (exact in float64), always inside the ±30% daily limits.

Regimes (per symbol, for the whole day): random walk, trend, breakout above the prior-day high,
intraday reversal, opening gap (partly faded or extended). Volume is U-shaped over the session,
scaled by liquidity tier and by the size of the minute's move.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from market.ticks import price_limits
from market.types import FloatArray, IntArray

_BOUNDS = np.array([2_000, 5_000, 20_000, 50_000, 200_000, 500_000], dtype=np.float64)
_TICKS = np.array([1, 5, 10, 50, 100, 500, 1_000], dtype=np.float64)

BoolArray = npt.NDArray[np.bool_]

#: Maximum book levels the simulator keeps sizes for.
MAX_LEVELS = 10

# Per tier (THIN, LOW, MID, HIGH): the size of the market, in won, so expensive and cheap names
# of one tier trade similar value.
_TIER_P = np.array([0.20, 0.35, 0.30, 0.15])
_DAILY_VOL = np.array([0.045, 0.035, 0.026, 0.018])  # daily return volatility
_MINUTE_VALUE = np.array([3e6, 2e7, 1e8, 5e8])  # traded won per average minute
_LEVEL_VALUE = np.array([3e6, 1.5e7, 6e7, 3e8])  # resting won per book level
_SPREAD_BASE = np.array([2, 1, 1, 1])  # ticks
_SPREAD_EXTRA = np.array([2, 1, 0, 0])  # up to this many ticks more, per minute


class Regime(IntEnum):
    RANDOM_WALK = 0
    TREND = 1
    BREAKOUT = 2
    REVERSAL = 3
    GAP = 4


_REGIME_P = np.array([0.35, 0.20, 0.15, 0.15, 0.15])


def tick_of(price: FloatArray) -> FloatArray:
    """Vectorized `ticks.tick_size`."""
    out: FloatArray = _TICKS[np.searchsorted(_BOUNDS, price, side="right")]
    return out


def round_grid(price: FloatArray, mode: str) -> FloatArray:
    """Vectorized rounding onto the grid: mode "up", "down" or "nearest".

    Every band boundary is a multiple of the coarser tick, so rounding with the tick of the
    price itself always lands on the grid (same argument as `ticks.round_to_tick`).
    """
    tick = tick_of(price)
    q = price / tick
    if mode == "up":
        q = np.ceil(q)
    elif mode == "down":
        q = np.floor(q)
    else:
        q = np.rint(q)
    out: FloatArray = np.maximum(q * tick, 1.0)
    return out


def step_grid(price: FloatArray, n: IntArray) -> FloatArray:
    """Vectorized `ticks.step`: each grid price moved n[i] ticks (n may be negative)."""
    out = price.copy()
    for _ in range(int(np.abs(n).max(initial=0))):
        up = n > 0
        down = n < 0
        out = np.where(up, out + tick_of(out), out)
        out = np.where(down, out - tick_of(out - 1.0), out)
        n = n - np.sign(n)
    return out


@dataclass(frozen=True)
class Universe:
    """Static per-symbol facts, row i = symbols[i]."""

    symbols: tuple[str, ...]
    kospi: BoolArray  # True: KOSPI, False: KOSDAQ
    kospi200: BoolArray
    tier: IntArray
    prev_close: FloatArray
    prev_high: FloatArray
    prev_low: FloatArray
    lower: FloatArray  # daily price limits
    upper: FloatArray
    daily_vol: FloatArray


def make_universe(rng: np.random.Generator, n: int) -> Universe:
    if n < 1:
        raise ValueError("n_symbols must be >= 1")
    if n > 99_900:
        raise ValueError("n_symbols must be <= 99900")
    # Six-digit codes ending in 0, as KRX common shares do.
    codes = np.sort(rng.choice(np.arange(100, 100_000), size=n, replace=False)) * 10
    symbols = tuple(f"{int(c):06d}" for c in codes)
    tier = rng.choice(4, size=n, p=_TIER_P).astype(np.int64)
    kospi = rng.random(n) < 0.45
    raw = np.exp(rng.uniform(np.log(1_000), np.log(1_000_000), size=n))
    prev_close = round_grid(raw, "nearest")
    daily_vol = _DAILY_VOL[tier] * rng.lognormal(0.0, 0.25, size=n)
    prev_high = round_grid(prev_close * (1 + np.abs(rng.normal(0, daily_vol))), "up")
    prev_low = round_grid(prev_close * (1 - np.abs(rng.normal(0, daily_vol))), "down")
    # KOSPI 200 membership: liquid KOSPI names, at most 200 of them.
    candidates = np.flatnonzero(kospi & (tier >= 2) & (rng.random(n) < 0.7))[:200]
    kospi200 = np.zeros(n, dtype=bool)
    kospi200[candidates] = True
    # Limits through the Decimal implementation: float x 1.3 can land a hair below the grid.
    limits = [price_limits(Decimal(int(p))) for p in prev_close]
    lower = np.array([float(lo) for lo, _ in limits])
    upper = np.array([float(hi) for _, hi in limits])
    return Universe(
        symbols, kospi, kospi200, tier, prev_close, prev_high, prev_low, lower, upper, daily_vol
    )


@dataclass(frozen=True)
class DayPaths:
    """One-minute bars of the continuous session, shape (n_symbols, n_minutes), plus the close."""

    regime: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: IntArray
    value: FloatArray  # traded won per minute (whole won)
    cum_volume: IntArray
    cum_value: FloatArray
    cum_high: FloatArray  # running day high through each minute
    cum_low: FloatArray
    spread_ticks: IntArray
    depth: FloatArray  # shares per book level (before the per-level multiplier)
    level_mult: FloatArray  # (n_symbols, MAX_LEVELS)
    auction_price: FloatArray
    auction_volume: IntArray


def u_shape(n_minutes: int) -> FloatArray:
    """Relative volume by minute: heavy at the open, lighter midday, rising into the close."""
    m = np.arange(n_minutes, dtype=np.float64)
    out: FloatArray = 1.0 + 2.5 * np.exp(-m / 25.0) + 1.5 * np.exp(-(n_minutes - 1 - m) / 20.0)
    return out


def _drift(
    rng: np.random.Generator, u: Universe, regime: IntArray, day_open: FloatArray, m_count: int
) -> FloatArray:
    """Deterministic log-price component per regime, shape (n, m_count), for minute closes."""
    n = len(regime)
    t = np.arange(1, m_count + 1, dtype=np.float64)[None, :]
    det = np.zeros((n, m_count))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]

    move = rng.uniform(0.02, 0.08, size=n)[:, None] * sign
    det = np.where((regime == Regime.TREND)[:, None], move * t / m_count, det)

    start = rng.integers(20, max(21, m_count - 60), size=n)[:, None]
    target = np.log(u.prev_high * rng.uniform(1.02, 1.06, size=n) / day_open)[:, None]
    ramp = target * np.clip((t - start) / 10.0, 0.0, 1.0)
    det = np.where((regime == Regime.BREAKOUT)[:, None], ramp, det)

    peak = rng.integers(m_count // 5, max(m_count // 5 + 1, 3 * m_count // 5), size=n)[:, None]
    amp = rng.uniform(0.03, 0.08, size=n)[:, None] * sign
    after = 1.0 - 1.5 * (t - peak) / np.maximum(m_count - peak, 1)
    tent = amp * np.where(t <= peak, t / peak, after)
    det = np.where((regime == Regime.REVERSAL)[:, None], tent, det)

    gap = np.log(day_open / u.prev_close)[:, None]
    fade = rng.uniform(-0.3, 0.8, size=n)[:, None]  # negative: the gap extends
    faded = -gap * fade * (1.0 - np.exp(-t / 60.0))
    det = np.where((regime == Regime.GAP)[:, None], faded, det)
    return det


def _day_open(rng: np.random.Generator, u: Universe, regime: IntArray) -> FloatArray:
    n = len(regime)
    gap = rng.uniform(0.03, 0.10, size=n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    raw = u.prev_close * np.exp(rng.normal(0.0, 0.004, size=n))
    raw = np.where(regime == Regime.GAP, u.prev_close * (1 + gap), raw)
    below_high = u.prev_high * rng.uniform(0.96, 0.99, size=n)
    raw = np.where(regime == Regime.BREAKOUT, below_high, raw)
    return np.clip(round_grid(np.clip(raw, u.lower, u.upper), "nearest"), u.lower, u.upper)


def make_paths(rng: np.random.Generator, u: Universe, m_count: int) -> DayPaths:
    if m_count < 1:
        raise ValueError("the continuous session must last at least one minute")
    n = len(u.symbols)
    lo, hi = u.lower[:, None], u.upper[:, None]
    regime = rng.choice(len(_REGIME_P), size=n, p=_REGIME_P).astype(np.int64)
    day_open = _day_open(rng, u, regime)
    sigma = (u.daily_vol / np.sqrt(m_count))[:, None]
    noise = np.cumsum(rng.normal(0.0, 1.0, size=(n, m_count)) * sigma, axis=1)
    log_close = np.log(day_open)[:, None] + _drift(rng, u, regime, day_open, m_count) + noise
    close = np.clip(round_grid(np.clip(np.exp(log_close), lo, hi), "nearest"), lo, hi)
    open_ = np.empty_like(close)
    open_[:, 0] = day_open
    open_[:, 1:] = close[:, :-1]
    wick_up = np.abs(rng.normal(0.0, 1.0, size=(n, m_count))) * sigma * 0.6
    wick_down = np.abs(rng.normal(0.0, 1.0, size=(n, m_count))) * sigma * 0.6
    high = np.minimum(round_grid(np.maximum(open_, close) * (1 + wick_up), "up"), hi)
    low = np.maximum(round_grid(np.minimum(open_, close) * (1 - wick_down), "down"), lo)

    shape = u_shape(m_count)[None, :]
    shares_per_minute = (_MINUTE_VALUE[u.tier] / u.prev_close)[:, None]
    move = np.abs(np.log(close / open_)) / sigma  # big moves (breakouts) draw volume
    raw_volume = shares_per_minute * shape * rng.lognormal(0.0, 0.5, size=(n, m_count))
    raw_volume *= 1.0 + 0.5 * np.minimum(move, 6.0)
    # Stochastic rounding keeps thin, expensive names from printing all-zero minutes.
    volume = np.floor(raw_volume + rng.random((n, m_count))).astype(np.int64)
    value = np.rint(volume * (open_ + high + low + close) / 4.0)

    tier = u.tier[:, None]
    extra = np.floor(rng.random((n, m_count)) * (_SPREAD_EXTRA[tier] + 1)).astype(np.int64)
    spread_ticks = _SPREAD_BASE[tier] + extra
    depth = (_LEVEL_VALUE[u.tier] / u.prev_close)[:, None] * np.sqrt(shape)
    depth = depth * rng.lognormal(0.0, 0.35, size=(n, m_count))
    levels = np.arange(MAX_LEVELS, dtype=np.float64)[None, :]
    level_mult = (1.0 + 0.15 * levels) * rng.lognormal(0.0, 0.3, size=(n, MAX_LEVELS))

    last = close[:, -1]
    auction = round_grid(last * np.exp(rng.normal(0.0, 1.0, size=n) * sigma[:, 0]), "nearest")
    auction = np.clip(auction, u.lower, u.upper)
    auction_volume = np.floor(volume.sum(axis=1) * rng.uniform(0.03, 0.08, size=n))
    return DayPaths(
        regime=regime,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        value=value,
        cum_volume=np.cumsum(volume, axis=1),
        cum_value=np.cumsum(value, axis=1),
        cum_high=np.maximum.accumulate(high, axis=1),
        cum_low=np.minimum.accumulate(low, axis=1),
        spread_ticks=spread_ticks,
        depth=depth,
        level_mult=level_mult,
        auction_price=auction,
        auction_volume=auction_volume.astype(np.int64),
    )

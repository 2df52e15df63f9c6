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
        np.ceil(q, out=q)
    elif mode == "down":
        np.floor(q, out=q)
    else:
        np.rint(q, out=q)
    q *= tick  # in place: a day's (symbols, minutes) arrays are rounded with two, not four
    out: FloatArray = np.maximum(q, 1.0, out=q)
    return out


def step_grid(price: FloatArray, n: IntArray) -> FloatArray:
    """Vectorized `ticks.step`: each grid price moved n[i] ticks (n may be negative).

    Fast path: inside one tick band a move of n ticks is price + n x tick. Only the rows whose
    move crosses a band boundary (rare) take the tick-by-tick walk.
    """
    up_tick = tick_of(price)
    down_tick = tick_of(price - 1.0)
    tick = np.where(n > 0, up_tick, down_tick)
    out: FloatArray = price + n * tick
    same_band = (n == 0) | np.where(n > 0, tick_of(out - 1.0) == up_tick, tick_of(out) == down_tick)
    if same_band.all():
        return out
    slow = ~same_band
    out[slow] = _step_walk(price[slow], n[slow])
    return out


def _step_walk(price: FloatArray, n: IntArray) -> FloatArray:
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
    spread_ticks: IntArray
    depth: FloatArray  # shares per book level (before the per-level multiplier)
    level_mult: FloatArray  # (n_symbols, MAX_LEVELS)
    auction_price: FloatArray
    auction_volume: IntArray

    # running figures through each minute: computed when asked (not kept beside the bars)
    @property
    def cum_volume(self) -> IntArray:
        out: IntArray = np.cumsum(self.volume, axis=1)
        return out

    @property
    def cum_value(self) -> FloatArray:
        out: FloatArray = np.cumsum(self.value, axis=1)
        return out

    @property
    def cum_high(self) -> FloatArray:
        """The running day high."""
        out: FloatArray = np.maximum.accumulate(self.high, axis=1)
        return out

    @property
    def cum_low(self) -> FloatArray:
        out: FloatArray = np.minimum.accumulate(self.low, axis=1)
        return out


def u_shape(n_minutes: int) -> FloatArray:
    """Relative volume by minute: heavy at the open, lighter midday, rising into the close."""
    m = np.arange(n_minutes, dtype=np.float64)
    out: FloatArray = 1.0 + 2.5 * np.exp(-m / 25.0) + 1.5 * np.exp(-(n_minutes - 1 - m) / 20.0)
    return out


def _drift(
    rng: np.random.Generator, u: Universe, regime: IntArray, day_open: FloatArray, m_count: int
) -> FloatArray:
    """Deterministic log-price component per regime, shape (n, m_count), for minute closes.

    Each regime's rows are computed on their own rows only (every draw still covers all
    symbols, in the same order): the same values as whole-array expressions, without four
    (n, m_count) temporaries."""
    n = len(regime)
    t = np.arange(1, m_count + 1, dtype=np.float64)[None, :]
    det = np.zeros((n, m_count))
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None]

    move = rng.uniform(0.02, 0.08, size=n)[:, None] * sign
    rows = regime == Regime.TREND
    det[rows] = move[rows] * t / m_count

    start = rng.integers(20, max(21, m_count - 60), size=n)[:, None]
    target = np.log(u.prev_high * rng.uniform(1.02, 1.06, size=n) / day_open)[:, None]
    rows = regime == Regime.BREAKOUT
    det[rows] = target[rows] * np.clip((t - start[rows]) / 10.0, 0.0, 1.0)

    peak = rng.integers(m_count // 5, max(m_count // 5 + 1, 3 * m_count // 5), size=n)[:, None]
    amp = rng.uniform(0.03, 0.08, size=n)[:, None] * sign
    rows = regime == Regime.REVERSAL
    peak_r = peak[rows]
    after = 1.0 - 1.5 * (t - peak_r) / np.maximum(m_count - peak_r, 1)
    det[rows] = amp[rows] * np.where(t <= peak_r, t / peak_r, after)

    gap = np.log(day_open / u.prev_close)[:, None]
    fade = rng.uniform(-0.3, 0.8, size=n)[:, None]  # negative: the gap extends
    rows = regime == Regime.GAP
    det[rows] = -gap[rows] * fade[rows] * (1.0 - np.exp(-t / 60.0))
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
    """The day's bars. Built in place where the arithmetic allows (same operations in the same
    order, so the same values): a paper worker's start-up peak is these (n, m_count) arrays."""
    if m_count < 1:
        raise ValueError("the continuous session must last at least one minute")
    n = len(u.symbols)
    lo, hi = u.lower[:, None], u.upper[:, None]
    regime = rng.choice(len(_REGIME_P), size=n, p=_REGIME_P).astype(np.int64)
    day_open = _day_open(rng, u, regime)
    sigma = (u.daily_vol / np.sqrt(m_count))[:, None]
    noise = rng.normal(0.0, 1.0, size=(n, m_count))
    noise *= sigma
    np.cumsum(noise, axis=1, out=noise)
    close = _drift(rng, u, regime, day_open, m_count)  # log(open) + drift + noise, then prices
    close += np.log(day_open)[:, None]
    close += noise
    del noise
    np.exp(close, out=close)
    np.clip(close, lo, hi, out=close)
    close = round_grid(close, "nearest")
    np.clip(close, lo, hi, out=close)
    open_ = np.empty_like(close)
    open_[:, 0] = day_open
    open_[:, 1:] = close[:, :-1]
    high = _wick(rng, (n, m_count), sigma)
    high += 1.0
    high *= np.maximum(open_, close)
    high = round_grid(high, "up")
    np.minimum(high, hi, out=high)
    low = _wick(rng, (n, m_count), sigma)
    np.subtract(1.0, low, out=low)
    low *= np.minimum(open_, close)
    low = round_grid(low, "down")
    np.maximum(low, lo, out=low)

    shape = u_shape(m_count)[None, :]
    shares_per_minute = (_MINUTE_VALUE[u.tier] / u.prev_close)[:, None]
    move = np.divide(close, open_)  # |log(close / open)| / sigma: big moves draw volume
    np.log(move, out=move)
    np.abs(move, out=move)
    move /= sigma
    volume_f = rng.lognormal(0.0, 0.5, size=(n, m_count))
    volume_f *= shares_per_minute * shape  # (spm x shape) x draw, as drawn
    np.minimum(move, 6.0, out=move)
    move *= 0.5
    move += 1.0
    volume_f *= move
    del move
    # Stochastic rounding keeps thin, expensive names from printing all-zero minutes.
    volume_f += rng.random((n, m_count))
    np.floor(volume_f, out=volume_f)
    volume = volume_f.astype(np.int64)
    del volume_f
    value = open_ + high  # rint(volume x (o + h + l + c) / 4), in that order
    value += low
    value += close
    value *= volume
    value /= 4.0
    np.rint(value, out=value)

    tier = u.tier[:, None]
    extra = rng.random((n, m_count))
    extra *= _SPREAD_EXTRA[tier] + 1
    np.floor(extra, out=extra)
    spread_ticks = _SPREAD_BASE[tier] + extra.astype(np.int64)
    del extra
    depth = rng.lognormal(0.0, 0.35, size=(n, m_count))
    depth *= (_LEVEL_VALUE[u.tier] / u.prev_close)[:, None] * np.sqrt(shape)
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
        spread_ticks=spread_ticks,
        depth=depth,
        level_mult=level_mult,
        auction_price=auction,
        auction_volume=auction_volume.astype(np.int64),
    )


def _wick(rng: np.random.Generator, size: tuple[int, int], sigma: FloatArray) -> FloatArray:
    """|N(0, 1)| x sigma x 0.6 per minute, in place."""
    wick = rng.normal(0.0, 1.0, size=size)
    np.abs(wick, out=wick)
    wick *= sigma
    wick *= 0.6
    return wick


# ----- the path inside a minute, and volatility interruptions on it ------------------------------

Rows = IntArray | slice

#: Microseconds per one-minute bar; instants inside the session are counted in these units so
#: the market and the VI detection evaluate the path at bit-identical fractions.
MINUTE_US = 60_000_000
#: A volatility interruption's single-price auction lasts two minutes.
VI_US = 120_000_000
STATIC_VI_PCT = 10  # from the reference: the day's opening price or the last VI auction price
DYNAMIC_VI_PCT = 6  # within one minute, from the previous minute's close
DYNAMIC_VI_PCT_KOSPI200 = 3


def vertices(p: DayPaths, rows: Rows, m: int) -> list[FloatArray]:
    """Minute m's path: open -> first extreme -> second extreme -> close (low first on up bars)."""
    o, h, lo, c = p.open[rows, m], p.high[rows, m], p.low[rows, m], p.close[rows, m]
    up = c >= o
    return [o, np.where(up, lo, h), np.where(up, h, lo), c]


def path_point(p: DayPaths, rows: Rows, m: int, f: float) -> FloatArray:
    """The printed price a fraction f (0..1) into minute m: each leg a third, on the grid."""
    v = vertices(p, rows, m)
    x = 3.0 * f
    seg = min(int(x), 2)
    raw = v[seg] + (v[seg + 1] - v[seg]) * (x - seg)
    out: FloatArray = np.clip(round_grid(raw, "nearest"), p.low[rows, m], p.high[rows, m])
    return out


@dataclass(frozen=True)
class ViWindow:
    """One volatility interruption of row `row`, in microseconds since the open."""

    row: int
    static: bool  # True: static (10% from the reference), False: dynamic (one-minute move)
    start_us: int
    end_us: int  # start + 2 min, or the end of continuous trading if that comes first
    reference: float  # the price the triggering move was measured from
    trigger: float  # the price that triggered it
    price: float  # the printed price at end_us (NaN when the window runs into the close)


def find_interruptions(u: Universe, p: DayPaths) -> list[ViWindow]:
    """Every VI of the day, per row in time order (rows ascending).

    Static: the printed price reaches +-10% of the reference (the day's opening price, then the
    last VI auction price). Dynamic: it moves more than 3% (KOSPI 200) / 6% (others) from the
    previous minute's close (the minute's open; the VI auction price for the rest of the minute
    in which a VI ended). A VI freezes the symbol for two minutes from the instant the path
    first breaches, then its single price is the path's price at that instant.
    """
    dyn = np.where(u.kospi200, DYNAMIC_VI_PCT_KOSPI200, DYNAMIC_VI_PCT)
    d = dyn[:, None]
    dyn_hit = (p.high * 100 > p.open * (100 + d)) | (p.low * 100 < p.open * (100 - d))
    first = p.open[:, :1]
    static_hit = (p.high * 10 >= first * 11) | (p.low * 10 <= first * 9)
    out: list[ViWindow] = []
    for row in np.flatnonzero((dyn_hit | static_hit).any(axis=1)):
        out += _row_interruptions(p, int(row), int(dyn[row]), dyn_hit[row])
    return out


def _row_interruptions(p: DayPaths, i: int, d: int, dyn_hit: BoolArray) -> list[ViWindow]:
    session_us = p.close.shape[1] * MINUTE_US
    sref = float(p.open[i, 0])
    oref: float | None = None  # dynamic reference for the rest of the minute a VI ended in
    t = 0
    out: list[ViWindow] = []
    while t < session_us:
        m0 = t // MINUTE_US
        hi, lo = p.high[i, m0:], p.low[i, m0:]
        hit = (hi * 10 >= sref * 11) | (lo * 10 <= sref * 9) | dyn_hit[m0:]
        if oref is not None:
            hit[0] |= hi[0] * 100 > oref * (100 + d) or lo[0] * 100 < oref * (100 - d)
        found: tuple[int, bool, float, float] | None = None
        for k in np.flatnonzero(hit):  # at most two tries: only minute m0 starts mid-way
            m = m0 + int(k)
            dref = oref if oref is not None and m == m0 else float(p.open[i, m])
            found = _first_breach(p, i, m, t if m == m0 else m * MINUTE_US, sref, dref, d)
            if found is not None:
                break
        if found is None or found[0] >= session_us:
            break
        start, static, ref, trigger = found
        end = start + VI_US
        if end >= session_us:  # runs into the closing auction, which takes it over
            out.append(ViWindow(i, static, start, session_us, ref, trigger, float("nan")))
            break
        price = _price_at(p, i, end)
        out.append(ViWindow(i, static, start, end, ref, trigger, price))
        sref = oref = price
        t = end
    return out


def _price_at(p: DayPaths, i: int, us: int) -> float:
    m, r = divmod(us, MINUTE_US)
    if m >= p.close.shape[1]:
        m, r = m - 1, MINUTE_US
    return float(path_point(p, np.array([i]), m, r / MINUTE_US)[0])


def _first_breach(
    p: DayPaths, i: int, m: int, start: int, sref: float, dref: float, d: int
) -> tuple[int, bool, float, float] | None:
    """(instant, static?, reference, price) of the first breach in minute m at or after `start`.

    The path is monotone between consecutive vertices, so the first breaching vertex bounds the
    first breaching instant, found by bisection to the microsecond.
    """

    def breach(x: float) -> tuple[bool, bool]:
        static = x * 10 >= sref * 11 or x * 10 <= sref * 9
        return static, static or x * 100 > dref * (100 + d) or x * 100 < dref * (100 - d)

    base = m * MINUTE_US
    legs = [base + k * MINUTE_US // 3 for k in (1, 2, 3)]
    points = [start, *(us for us in legs if us > start)]
    prev: int | None = None
    for us in points:
        if breach(_price_at(p, i, us))[1]:
            lo, hi = (us - 1, us) if prev is None else (prev, us)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if breach(_price_at(p, i, mid))[1] else (mid, hi)
            x = _price_at(p, i, hi)
            static = breach(x)[0]
            return hi, static, sref if static else dref, x
        prev = us
    return None

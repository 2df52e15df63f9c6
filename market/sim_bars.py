"""The simulated day's bars as `market.sim.SimulatedMarket` keeps them, and one symbol's minute
in scalars.

`KeptDay`: `market.paths.make_paths` draws float64/int64 arrays; the market keeps what it reads
in the narrowest type that holds every value exactly (checked at construction) and derives the
rest (3.1 MB at 300 symbols, 11 MB as drawn): a minute's open is the previous close, its traded
value is `make_paths`' formula on the kept columns, and the running day high/low/volume/value
start from a checkpoint every `CHECKPOINT` minutes. Every value read back is the one
`make_paths` drew, to the won.

`Bar`, `tick_f`, `step_f`: `market.paths`' vectorized functions for one float each, the same
IEEE operations in the same order, so they give bit-identical prices (checked against the
vectorized forms in tests/test_sim.py) without numpy's per-call overhead: `quote` and
`first_touch` look at one symbol at one instant many times a simulated day.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from market.paths import DayPaths, Rows
from market.types import FloatArray, IntArray

_BOUNDS_F = (2_000.0, 5_000.0, 20_000.0, 50_000.0, 200_000.0, 500_000.0)  # `paths.tick_of`
_TICKS_F = (1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0)


def tick_f(price: float) -> float:
    return _TICKS_F[bisect_right(_BOUNDS_F, price)]


def step_f(price: float, n: int) -> float:
    """`paths.step_grid` for one price: n ticks up (n > 0) or down, tick by tick."""
    out = price
    for _ in range(abs(n)):
        out = out + tick_f(out) if n > 0 else out - tick_f(out - 1.0)
    return out


@dataclass(frozen=True, slots=True)
class Bar:
    """Minute m of one symbol: its path's vertices (`paths.vertices`) and its low and high."""

    v: tuple[float, float, float, float]
    low: float
    high: float

    def point(self, f: float) -> float:
        """`paths.path_point`: the printed price a fraction f into the minute."""
        v = self.v
        x = 3.0 * f
        seg = min(int(x), 2)
        raw = v[seg] + (v[seg + 1] - v[seg]) * (x - seg)
        tick = tick_f(raw)
        on_grid = max(round(raw / tick) * tick, 1.0)  # round: half to even, as np.rint
        return min(max(on_grid, self.low), self.high)

    def span(self, f0: float, f1: float) -> tuple[float, float]:
        """(low, high) of the prints from fraction f0 to f1 of the minute (`traded_range`)."""
        points = [self.point(f0), self.point(f1)]
        points += [self.v[k] for k in (1, 2) if f0 < k / 3 < f1]
        if f1 >= 1.0:
            points.append(self.v[3])
        return min(points), max(points)


CHECKPOINT = 16
Cum = tuple[float, float, int, float]  # day high, day low, volume, traded value
Cums = tuple[FloatArray, FloatArray, IntArray, FloatArray]  # the same for every row
SIntArray = npt.NDArray[np.signedinteger[Any]]


def narrow(a: npt.NDArray[Any], dtypes: tuple[type[np.signedinteger[Any]], ...]) -> SIntArray:
    """`a` in the first of `dtypes` that holds each of its values exactly (a value that does
    not fit comes back different from the cast, so the comparison is the whole check)."""
    for dtype in dtypes:
        with np.errstate(invalid="ignore"):
            out = a.astype(dtype)
        if np.array_equal(out, a):
            return out
    raise ValueError(f"values do not fit {dtypes[-1].__name__} exactly")


class KeptDay:
    """The day's bars as the market keeps them; read-only. `open` and `value` are derived on
    each access (whole arrays: for exports and tests, not the hot paths)."""

    __slots__ = ("auction_price", "auction_volume", "checkpoints", "close", "day_open", "depth",
                 "high", "level_mult", "low", "regime", "spread_ticks", "volume")  # fmt: skip

    def __init__(self, p: DayPaths) -> None:
        self.regime = p.regime
        self.day_open: FloatArray = p.open[:, 0].copy()
        prices = (np.int32, np.int64)
        self.high, self.low, self.close = (narrow(a, prices) for a in (p.high, p.low, p.close))
        self.volume = narrow(p.volume, (np.int32, np.int64))
        self.spread_ticks = narrow(p.spread_ticks, (np.int8, np.int16, np.int64))
        self.depth = p.depth  # fractional shares: float64 as drawn
        self.level_mult = p.level_mult
        self.auction_price = p.auction_price
        self.auction_volume = p.auction_volume
        # Traded values are whole won summed in float64: exact, in any order, below 2**53.
        cum_value = p.cum_value
        if p.value.size and not cum_value[:, -1].max() < 2.0**53:
            raise ValueError("a day's traded value is too large to sum exactly in float64")
        marks = slice(CHECKPOINT - 1, None, CHECKPOINT)  # through minutes 15, 31, ...
        # each running figure exists whole only while its checkpoints are taken
        self.checkpoints: Cums = (
            np.ascontiguousarray(p.cum_high[:, marks]),
            np.ascontiguousarray(p.cum_low[:, marks]),
            np.ascontiguousarray(p.cum_volume[:, marks]),
            np.ascontiguousarray(cum_value[:, marks]),
        )
        del cum_value
        for value in (*self.checkpoints, self.day_open, self.high, self.low, self.close,
                      self.volume, self.spread_ticks):  # fmt: skip
            value.setflags(write=False)

    def opens(self, rows: Rows, a: int, b: int) -> FloatArray:
        """The opens of minutes a..b-1 (the previous minute's close; the day's open first)."""
        if a > 0:
            return self.close[rows, a - 1 : b - 1].astype(np.float64)
        first = self.day_open[rows][:, None]
        return np.concatenate([first, self.close[rows, : b - 1].astype(np.float64)], axis=1)

    def values(self, rows: Rows, a: int, b: int) -> FloatArray:
        """Traded won of minutes a..b-1: `make_paths`' rint(volume x mean(OHLC)), whole won."""
        s = self.opens(rows, a, b) + self.high[rows, a:b] + self.low[rows, a:b]
        s = s + self.close[rows, a:b]
        out: FloatArray = np.rint(self.volume[rows, a:b] * s / 4.0)
        return out

    @property
    def open(self) -> FloatArray:
        return self.opens(slice(None), 0, self.close.shape[1])

    @property
    def value(self) -> FloatArray:
        return self.values(slice(None), 0, self.close.shape[1])

    def cum(self, k: int, last: tuple[int, Cums] | None = None) -> Cums:
        """Every row's (day high, day low, volume, traded value) through minutes 0..k-1, k >= 1:
        from `last` (the same through minutes 0..j-1) when j <= k is nearer than a checkpoint."""
        c = k // CHECKPOINT
        a = c * CHECKPOINT  # the checkpoint covers minutes 0..a-1, the block a..k-1
        base: Cums | None = None
        if last is not None and a <= last[0] <= k:
            a, base = last
        elif c:
            high, low, volume, value = self.checkpoints
            base = (high[:, c - 1], low[:, c - 1], volume[:, c - 1], value[:, c - 1])
        if base is not None and a == k:
            return base
        h = self.high[:, a:k].max(axis=1).astype(np.float64)
        lo = self.low[:, a:k].min(axis=1).astype(np.float64)
        vol = self.volume[:, a:k].sum(axis=1, dtype=np.int64)
        val = self.values(slice(None), a, k).sum(axis=1)
        if base is None:
            return h, lo, vol, val
        high, low, volume, value = base
        return np.maximum(high, h), np.minimum(low, lo), volume + vol, value + val

    def row_cum(self, i: int, k: int) -> Cum:
        """`cum` for row i, in scalars (the same sums: whole numbers, exact in any order)."""
        c = k // CHECKPOINT
        a = c * CHECKPOINT
        if c:
            high, low, volume, value = (x[i, c - 1] for x in self.checkpoints)
            out: Cum = (float(high), float(low), int(volume), float(value))
            if a == k:
                return out
        highs, lows = self.high[i, a:k].tolist(), self.low[i, a:k].tolist()
        vols, closes = self.volume[i, a:k].tolist(), self.close[i, a:k].tolist()
        o = float(self.close[i, a - 1]) if a else float(self.day_open[i])
        val = 0.0
        for h, lo, v, cl in zip(highs, lows, vols, closes, strict=True):
            val += float(round(v * (o + h + lo + cl) / 4.0))  # `values`, half to even as rint
            o = cl
        block = (float(max(highs)), float(min(lows)), int(sum(vols)), val)
        if not c:
            return block
        return (max(out[0], block[0]), min(out[1], block[1]), out[2] + block[2],
                out[3] + block[3])  # fmt: skip

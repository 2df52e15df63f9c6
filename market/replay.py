"""Replay: the `MarketData` port over one-minute bars read from a CSV file.

`ReplayMarket(path, clock, session)` serves `instruments`, `snapshot` and `quote` for the
instant `clock.now()`, so the worker's poller runs unchanged over a day an operator exported.
`write_replay_csv` exports a `SimulatedMarket` day in the same layout (the test sample is made
that way).

File layout: UTF-8, comma-separated, one header line, then one row per symbol and minute in any
order. Columns (by name, any order; the last two optional):

    symbol,board,minute,open,high,low,close,volume,prev_close,prev_high,prev_low,value,tier

* ``symbol``: six-digit KRX code; ``board``: ``KOSPI`` or ``KOSDAQ``.
* ``minute``: the bar's *start*, ISO 8601 with offset, e.g. ``2026-03-10T09:05:00+09:00``, on a
  whole minute of the session's day. The bar covers [minute, minute + 1 min) and counts as
  completed from minute + 1 min on. Minutes of the continuous session (open ..
  continuous_close) are bars; rows from continuous_close to close (inclusive) are the closing
  auction: the latest such row's ``close`` is the auction price and their volumes and values
  add up; it prints at the close. Any other minute is an error.
* ``open, high, low, close``: whole won; ``volume``: shares traded in the minute.
* ``prev_close, prev_high, prev_low``: the prior day, whole won, the same on every row of a
  symbol. The daily limits are derived from ``prev_close`` (`market.ticks.price_limits`); a bar
  outside them is an error.
* ``value`` (optional): won traded in the minute. Without the column it is estimated as
  volume x (open + high + low + close) / 4, rounded to the won.
* ``tier`` (optional): ``THIN``, ``LOW``, ``MID`` or ``HIGH`` (or 0-3); ``MID`` without it.

A minute with no row for a symbol that has traded before replays as a minute without trades
(flat at the previous close, zero volume), so a file may also stop early. Before a symbol's first
row it has no bars (NaN closes in snapshots, like the left padding) and quotes its prior close.

What the market shows at an instant (the simulator's conventions at whole minutes, so a day
exported from `SimulatedMarket` replays to the same snapshots and quotes there):

* before the open: the prior close, zero volume, no bars;
* continuous trading, inside minute m: bars 0 .. m-1 are completed; the price is the close of
  the last completed bar (during minute 0, bar 0's open: the opening auction price); day high,
  low, volume and value are those of the completed bars;
* closing auction: every bar completed, the last close holds;
* at and after the close: the auction print, if the file has one, is added.

Bid and ask are not in the file: the bid is the last price and the ask one tick above it; at
the upper limit the ask is the limit and the bid one tick below (the simulator's one-tick
book). `bid_qty` / `ask_qty` are unknown and reported as 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np

from market.calendar import Session
from market.clock import Clock
from market.paths import round_grid, tick_of
from market.replay_file import (
    MINUTE,
    Reader,
    ReplayFormatError,
    write_replay_csv,
)
from market.ticks import price_limits
from market.types import FloatArray, Instrument, Quote, Snapshot, range_ratio

__all__ = ["ReplayFormatError", "ReplayMarket", "write_replay_csv"]


@dataclass(frozen=True, slots=True)
class _View:
    price: FloatArray
    day_high: FloatArray
    day_low: FloatArray
    volume: FloatArray
    value: FloatArray
    completed: int


class ReplayMarket:
    """`MarketData` over a CSV of one-minute bars (layout in the module docstring).

    The whole file is read and checked at construction; every call afterwards is an array
    lookup at `clock.now()`. Raises `ReplayFormatError` naming the first bad line.
    """

    def __init__(self, path: Path, clock: Clock, session: Session) -> None:
        self.path, self.clock, self.session = Path(path), clock, session
        reader = Reader(self.path, session)
        reader.read()
        self.n_minutes = reader.n_minutes
        self._build(reader)

    @classmethod
    def from_rows(cls, rows: Reader, clock: Clock, session: Session) -> ReplayMarket:
        """The market over rows read elsewhere (`market.bars`: CSV or Parquet, several days),
        given with `Reader`'s attributes (`ordinal`, `statics`, `sym`, `minute`, `bars`,
        `line`, `n_minutes`, `path`, `fail`)."""
        self = cls.__new__(cls)
        self.path, self.clock, self.session = Path(rows.path), clock, session
        self.n_minutes = rows.n_minutes
        self._build(rows)
        return self

    def _build(self, r: Reader) -> None:
        # Symbols sorted by code, as the simulator lists them; `rank` maps file order to it.
        self.symbols: tuple[str, ...] = tuple(sorted(r.ordinal))
        self._index = {s: i for i, s in enumerate(self.symbols)}
        rank = np.array([self._index[s] for s in r.ordinal], dtype=np.int64)
        statics = [r.statics[s] for s in self.symbols]
        n, m_count = len(self.symbols), self.n_minutes

        sym = rank[np.asarray(r.sym, dtype=np.int64)]
        minute = np.asarray(r.minute, dtype=np.int64)
        bars = np.asarray(r.bars, dtype=np.float64).reshape(-1, 6)
        # Estimated value for rows without one (no `value` column).
        typical = np.rint(bars[:, 4] * bars[:, :4].sum(axis=1) / 4.0)
        bars[:, 5] = np.where(np.isnan(bars[:, 5]), typical, bars[:, 5])

        self._prev = np.array([st.prev for st in statics], dtype=np.float64).reshape(n, 3)
        limits = [price_limits(Decimal(st.prev[0])) for st in statics]
        self._lower = np.array([float(lo) for lo, _ in limits])
        self._upper = np.array([float(hi) for _, hi in limits])
        self._tier = np.array([int(st.tier) for st in statics], dtype=np.int64)
        self._check(r, sym, minute, bars)

        auction = minute >= m_count
        cont = ~auction
        close = np.full((n, m_count), np.nan)
        high, low = close.copy(), close.copy()
        volume = np.zeros((n, m_count))
        value = np.zeros((n, m_count))
        s, m, b = sym[cont], minute[cont], bars[cont]
        close[s, m], high[s, m], low[s, m] = b[:, 3], b[:, 1], b[:, 2]
        volume[s, m], value[s, m] = b[:, 4], b[:, 5]
        self._open0 = np.full(n, np.nan)
        first = m == 0
        self._open0[s[first]] = b[first, 0]

        # Minutes without a row after the first trade: flat at the previous close.
        seen = np.where(np.isnan(close), 0, np.arange(m_count)[None, :])
        filled = np.take_along_axis(close, np.maximum.accumulate(seen, axis=1), axis=1)
        self._close = filled
        self._range = high - low  # NaN for minutes without a row
        self._volume = volume
        self._cum_volume = np.cumsum(volume, axis=1)
        self._cum_value = np.cumsum(value, axis=1)
        self._cum_high = np.fmax.accumulate(np.fmax(high, filled), axis=1)
        self._cum_low = np.fmin.accumulate(np.fmin(low, filled), axis=1)

        # The closing auction: the latest row's close is the price; volume and value add up.
        self._auction_price = np.full(n, np.nan)
        self._auction_volume = np.zeros(n)
        self._auction_value = np.zeros(n)
        a_sym, a_bars = sym[auction], bars[auction]
        if a_sym.size:
            order = np.lexsort((minute[auction], a_sym))
            latest = order[np.r_[a_sym[order][1:] != a_sym[order][:-1], True]]
            self._auction_price[a_sym[latest]] = a_bars[latest, 3]
        np.add.at(self._auction_volume, a_sym, a_bars[:, 4])
        np.add.at(self._auction_value, a_sym, a_bars[:, 5])

        for array in vars(self).values():
            if isinstance(array, np.ndarray):
                array.setflags(write=False)  # snapshots hand out views: writes must fail
        self._instruments = tuple(
            Instrument(
                symbol=sym_,
                name=sym_,
                board=st.board,
                tier=st.tier,
                prev_close=Decimal(st.prev[0]),
                prev_high=Decimal(st.prev[1]),
                prev_low=Decimal(st.prev[2]),
            )
            for sym_, st in zip(self.symbols, statics, strict=True)
        )

    def _check(self, r: Reader, sym: np.ndarray, minute: np.ndarray, bars: FloatArray) -> None:
        def first_bad(bad: np.ndarray, message: str) -> None:
            if bad.any():
                raise r.fail(r.line[int(np.flatnonzero(bad)[0])], message)

        _, first_rows = np.unique(sym * (int(minute.max()) + 1) + minute, return_index=True)
        dup = np.ones(len(sym), dtype=bool)
        dup[first_rows] = False
        first_bad(dup, "a second row for the same symbol and minute")
        prices = bars[:, :4]
        off_grid = (round_grid(prices, "nearest") != prices).any(axis=1)
        first_bad(off_grid, "a price off the KRX tick grid")
        first_bad(bars[:, 2] < self._lower[sym], "low below the lower limit from prev_close")
        first_bad(bars[:, 1] > self._upper[sym], "high above the upper limit from prev_close")

    # ----- MarketData ---------------------------------------------------------------------

    async def instruments(self) -> Sequence[Instrument]:
        return self._instruments

    async def snapshot(self, n_bars: int) -> Snapshot:
        return self.snapshot_at(self.clock.now(), n_bars)

    async def quote(self, symbol: str, short_ma_bars: int = 5) -> Quote:
        return self.quote_at(symbol, self.clock.now(), short_ma_bars)

    # ----- the same views at an explicit instant ------------------------------------------

    def index(self, symbol: str) -> int:
        try:
            return self._index[symbol]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}") from None

    def completed_bars(self, at: datetime) -> int:
        if at < self.session.open:
            return 0
        if at >= self.session.continuous_close:
            return self.n_minutes
        return int((at - self.session.open) / MINUTE)

    def _view(self, rows: np.ndarray | slice, at: datetime) -> _View:
        prev_close = self._prev[rows, 0]
        done = self.completed_bars(at)
        if at < self.session.open or done == 0:
            price = prev_close if at < self.session.open else self._open0[rows]
            price = np.where(np.isnan(price), prev_close, price)
            zeros = np.zeros(price.shape)
            return _View(price, price, price, zeros, zeros, 0)
        last = done - 1
        price = np.where(np.isnan(self._close[rows, last]), prev_close, self._close[rows, last])
        high = np.where(np.isnan(self._cum_high[rows, last]), price, self._cum_high[rows, last])
        low = np.where(np.isnan(self._cum_low[rows, last]), price, self._cum_low[rows, last])
        volume, value = self._cum_volume[rows, last], self._cum_value[rows, last]
        if at >= self.session.close:
            auction = self._auction_price[rows]
            has = ~np.isnan(auction)
            price = np.where(has, auction, price)
            high, low = np.fmax(high, auction), np.fmin(low, auction)
            volume = volume + self._auction_volume[rows]
            value = value + self._auction_value[rows]
        return _View(price, high, low, volume, value, done)

    def _bid_ask(
        self, rows: np.ndarray | slice, price: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        upper = self._upper[rows]
        ask = price + tick_of(price)
        over = ask > upper
        bid = np.where(over, upper - tick_of(upper - 1.0), price)
        return bid, np.where(over, upper, ask)

    def snapshot_at(self, at: datetime, n_bars: int) -> Snapshot:
        """Every symbol at `at`, with its last `n_bars` completed bars (left-padded NaN / 0)."""
        if n_bars < 0:
            raise ValueError("n_bars must be >= 0")
        rows = slice(None)
        v = self._view(rows, at)
        bid, ask = self._bid_ask(rows, v.price)
        n = len(self.symbols)
        closes = np.full((n, n_bars), np.nan)
        volumes = np.zeros((n, n_bars))
        k = min(v.completed, n_bars)
        if k:
            closes[:, n_bars - k :] = self._close[:, v.completed - k : v.completed]
            volumes[:, n_bars - k :] = self._volume[:, v.completed - k : v.completed]
        return Snapshot(
            at=at,
            trading_day=self.session.day,
            symbols=self.symbols,
            price=v.price,
            bid=bid,
            ask=ask,
            tick=tick_of(v.price),
            volume=v.volume,
            traded_value=v.value,
            day_high=v.day_high,
            day_low=v.day_low,
            prev_close=self._prev[:, 0],
            prev_high=self._prev[:, 1],
            prev_low=self._prev[:, 2],
            tier=self._tier,
            closes=closes,
            volumes=volumes,
        )

    def quote_at(self, symbol: str, at: datetime, short_ma_bars: int = 5) -> Quote:
        """One symbol at `at`; `short_ma` as the simulator computes it (won, 2 decimals)."""
        i = self.index(symbol)
        rows = np.array([i])
        v = self._view(rows, at)
        bid, ask = self._bid_ask(rows, v.price)
        short_ma: Decimal | None = None
        if short_ma_bars > 0 and v.completed >= short_ma_bars:
            closes = self._close[i, v.completed - short_ma_bars : v.completed]
            if not np.isnan(closes).any():
                short_ma = (Decimal(int(closes.sum())) / short_ma_bars).quantize(Decimal("0.01"))
        inst = self._instruments[i]
        return Quote(
            symbol=symbol,
            at=at,
            price=_won(v.price[0]),
            bid=_won(bid[0]),
            ask=_won(ask[0]),
            bid_qty=0,
            ask_qty=0,
            volume=int(v.volume[0]),
            traded_value=_won(v.value[0]),
            day_high=_won(v.day_high[0]),
            day_low=_won(v.day_low[0]),
            prev_close=inst.prev_close,
            prev_high=inst.prev_high,
            prev_low=inst.prev_low,
            upper_limit=_won(self._upper[i]),
            lower_limit=_won(self._lower[i]),
            tier=inst.tier,
            short_ma=short_ma,
            range_ratio=range_ratio(self._range[i, : v.completed]),
        )


def _won(x: float | np.floating) -> Decimal:
    return Decimal(int(x))

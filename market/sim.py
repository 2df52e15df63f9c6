"""A seeded, deterministic simulated KRX market for one session.

`SimulatedMarket(seed, session, n_symbols)` draws the universe and every one-minute bar of the
continuous session at construction (numpy, `market.paths`), so quotes, snapshots and books are
cheap lookups. The same (seed, session day, n_symbols) gives the same market in any process.
It keeps the bars in the narrowest exact types (int32 prices and volumes, int8 spreads: 3.1 MB
at 300 symbols, 11 MB as drawn) and derives opens, traded values and running day totals
(`market.sim_bars.KeptDay`).

Time inside the session:

* before the open: quotes show the prior close, zero volume;
* continuous trading (open .. continuous_close): minute m is the bar [open + m min, open +
  (m+1) min). Inside a minute the price follows a fixed path open -> first extreme -> second
  extreme -> close (low first on up bars, high first on down bars), each leg a third of the
  minute, rounded to the grid; so the price at any instant is deterministic and the running
  day high/low are exact;
* closing auction (continuous_close .. close): no trading; quotes hold the last minute close;
* at and after the close: the single auction price (on the grid, inside the limits) and the
  auction volume are added.

Volatility interruptions (`market.paths.find_interruptions`, computed once at construction): a
static VI when the printed price reaches +-10% of the reference (the day's opening price, then
the last VI auction price), a dynamic VI when it moves more than 3% (KOSPI 200) / 6% (others)
from the previous minute's close. Either starts at the microsecond the path first breaches and
lasts two minutes; quotes carry `halted_until` and snapshots a `halted` column meanwhile, and
the VI's single price is the path's price at its end. The VI is an overlay: the path itself
(prices, volume, high/low) keeps printing through it and serves as the indicative price, so
replays and indicators are unchanged; the paper broker is what stops matching.

Not modelled: the opening auction, the VI's own indicative book, VIs during the closing auction,
market impact of our own orders on the printed prices, and asymmetric books (bid and ask sides
share sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from market.calendar import Session
from market.paths import (
    MAX_LEVELS,
    MINUTE_US,
    Rows,
    find_interruptions,
    make_paths,
    make_universe,
    round_grid,
    step_grid,
    tick_of,
)
from market.sim_bars import Bar, Cum, Cums, KeptDay, step_f
from market.ticks import step
from market.types import (
    Board,
    FloatArray,
    Instrument,
    IntArray,
    Quote,
    Snapshot,
    Tier,
    ViKind,
    VolatilityInterruption,
    range_ratio,
)

Level = tuple[Decimal, int]
_Facts = tuple[int, Decimal | None, float | None]  # `SimulatedMarket._minute_facts`
_US = timedelta(microseconds=1)


class Phase(StrEnum):
    PRE_OPEN = "PRE_OPEN"
    CONTINUOUS = "CONTINUOUS"
    CLOSING_AUCTION = "CLOSING_AUCTION"
    CLOSED = "CLOSED"


@dataclass(frozen=True)
class _State:
    price: FloatArray
    day_high: FloatArray
    day_low: FloatArray
    volume: IntArray
    value: FloatArray
    minute: int  # whose spread and depth apply
    completed: int  # completed one-minute bars


def _won(x: float | np.floating | np.integer) -> Decimal:
    return Decimal(int(x))


class SimulatedMarket:
    """The whole simulated universe for one session; read-only after construction (but for
    caches of per-minute quote facts and running day totals that only save work)."""

    def __init__(self, seed: int, session: Session, n_symbols: int = 300) -> None:
        if seed < 0:
            raise ValueError("seed must be >= 0")
        continuous = (session.continuous_close - session.open).total_seconds()
        if continuous <= 0 or continuous % 60:
            raise ValueError("the continuous session must last a whole number of minutes")
        self.seed = seed
        self.session = session
        self.n_minutes = int(continuous // 60)
        rng = np.random.default_rng(
            np.random.SeedSequence([seed, session.day.toordinal(), n_symbols])
        )
        self._u = make_universe(rng, n_symbols)
        paths = make_paths(rng, self._u, self.n_minutes)
        # Snapshots hand out views of these arrays: make accidental writes fail loudly.
        for arrays in (self._u, paths):
            for value in vars(arrays).values():
                if isinstance(value, np.ndarray):
                    value.setflags(write=False)
        windows = find_interruptions(self._u, paths)
        self._p = KeptDay(paths)  # the narrow copy; `paths` goes
        del paths
        self._index = {s: i for i, s in enumerate(self._u.symbols)}
        u = self._u
        self.instruments: tuple[Instrument, ...] = tuple(
            Instrument(
                symbol=s,
                name=f"SIM {'KOSPI' if u.kospi[i] else 'KOSDAQ'} {s}",
                board=Board.KOSPI if u.kospi[i] else Board.KOSDAQ,
                tier=Tier(int(u.tier[i])),
                prev_close=_won(u.prev_close[i]),
                prev_high=_won(u.prev_high[i]),
                prev_low=_won(u.prev_low[i]),
                kospi200=bool(u.kospi200[i]),
            )
            for i, s in enumerate(u.symbols)
        )
        self._vi: dict[int, tuple[VolatilityInterruption, ...]] = {}
        for w in windows:
            vi = VolatilityInterruption(
                symbol=u.symbols[w.row],
                kind=ViKind.STATIC if w.static else ViKind.DYNAMIC,
                start=session.open + w.start_us * _US,
                end=session.open + w.end_us * _US,
                reference=_won(w.reference),
                trigger_price=_won(w.trigger),
                price=None if np.isnan(w.price) else _won(w.price),
            )
            self._vi[w.row] = (*self._vi.get(w.row, ()), vi)
        # column form for snapshots
        self._vi_rows = np.array([w.row for w in windows], dtype=np.int64)
        self._vi_start = np.array([w.start_us for w in windows], dtype=np.int64)
        self._vi_end = np.array([w.end_us for w in windows], dtype=np.int64)
        # `_minute_facts`' last answer per row
        self._facts: dict[int, tuple[tuple[int, int, int], _Facts]] = {}
        # `_continuous`' last running day totals per row: (through minute k - 1, totals)
        self._cums: dict[int, tuple[int, Cum]] = {}
        # `_cum`'s last answer for every row (through minute k - 1)
        self._last_cums: tuple[int, Cums] | None = None

    # ----- lookup -------------------------------------------------------------------------

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._u.symbols

    def index(self, symbol: str) -> int:
        try:
            return self._index[symbol]
        except KeyError:
            raise KeyError(f"unknown symbol {symbol!r}") from None

    def instrument(self, symbol: str) -> Instrument:
        return self.instruments[self.index(symbol)]

    def limits(self, symbol: str) -> tuple[Decimal, Decimal]:
        """(lower, upper) daily price limits."""
        i = self.index(symbol)
        return _won(self._u.lower[i]), _won(self._u.upper[i])

    def auction_price(self, symbol: str) -> Decimal:
        """The closing single-price auction's price (known in advance to the simulator)."""
        return _won(self._p.auction_price[self.index(symbol)])

    # ----- volatility interruptions -------------------------------------------------------

    def interruptions(self, symbol: str) -> tuple[VolatilityInterruption, ...]:
        """The symbol's VIs of the day, in time order (known in advance to the simulator)."""
        return self._vi.get(self.index(symbol), ())

    def interruption_at(self, symbol: str, at: datetime) -> VolatilityInterruption | None:
        """The VI the symbol is in at `at` (start <= at < end), if any."""
        for vi in self.interruptions(symbol):
            if vi.start <= at < vi.end:
                return vi
        return None

    def next_interruption(self, symbol: str, after: datetime) -> VolatilityInterruption | None:
        """The first VI of the symbol starting strictly after `after`."""
        for vi in self.interruptions(symbol):
            if vi.start > after:
                return vi
        return None

    def _halted(self, at: datetime) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(self._u.symbols), dtype=bool)
        us = (at - self.session.open) // _US
        out[self._vi_rows[(self._vi_start <= us) & (us < self._vi_end)]] = True
        return out

    # ----- time ---------------------------------------------------------------------------

    def phase(self, at: datetime) -> Phase:
        s = self.session
        if at < s.open:
            return Phase.PRE_OPEN
        if at < s.continuous_close:
            return Phase.CONTINUOUS
        if at < s.close:
            return Phase.CLOSING_AUCTION
        return Phase.CLOSED

    def minute_of(self, at: datetime) -> tuple[int, float]:
        """(minute index, fraction of it elapsed), clamped to the continuous session."""
        # whole microseconds, so the VI detection (market.paths) sees the same fractions
        us = (at - self.session.open) // _US
        if us < 0:
            return 0, 0.0
        m, rest = divmod(us, MINUTE_US)
        if m >= self.n_minutes:
            return self.n_minutes - 1, 1.0
        return m, rest / MINUTE_US

    def completed_bars(self, at: datetime) -> int:
        phase = self.phase(at)
        if phase is Phase.PRE_OPEN:
            return 0
        if phase is Phase.CONTINUOUS:
            return self.minute_of(at)[0]
        return self.n_minutes

    # ----- the path -----------------------------------------------------------------------

    def _vertices(self, rows: Rows, m: int) -> list[FloatArray]:
        """`paths.vertices` on the kept bars (float64, as drawn)."""
        p = self._p
        o = p.opens(rows, m, m + 1)[:, 0]
        h, lo = p.high[rows, m].astype(np.float64), p.low[rows, m].astype(np.float64)
        c = p.close[rows, m].astype(np.float64)
        up = c >= o
        return [o, np.where(up, lo, h), np.where(up, h, lo), c]

    def _path_point(self, rows: Rows, m: int, f: float) -> FloatArray:
        """`paths.path_point` on the kept bars."""
        v = self._vertices(rows, m)
        x = 3.0 * f
        seg = min(int(x), 2)
        raw = v[seg] + (v[seg + 1] - v[seg]) * (x - seg)
        low, high = self._p.low[rows, m], self._p.high[rows, m]
        out: FloatArray = np.clip(round_grid(raw, "nearest"), low, high)
        return out

    def _cum(self, rows: Rows, k: int) -> tuple[FloatArray, FloatArray, IntArray, FloatArray]:
        """(day high, day low, volume, traded value) of `rows` through minute k - 1."""
        if isinstance(rows, slice):
            last = self._last_cums
            if last is None or last[0] != k:  # snapshots move forward: from the last one's
                last = (k, self._p.cum(k, last))
                self._last_cums = last
            h, lo, vol, val = last[1]
            return h[rows], lo[rows], vol[rows], val[rows]
        cums = [self._p.row_cum(int(i), k) for i in rows]
        return (np.array([c[0] for c in cums]), np.array([c[1] for c in cums]),
                np.array([c[2] for c in cums], dtype=np.int64),
                np.array([c[3] for c in cums]))  # fmt: skip

    def _state(self, rows: Rows, at: datetime) -> _State:
        u, p = self._u, self._p
        phase = self.phase(at)
        last = self.n_minutes - 1
        if phase is Phase.PRE_OPEN:
            pc = u.prev_close[rows]
            zeros = np.zeros(pc.shape, dtype=np.int64)
            return _State(pc, pc.copy(), pc.copy(), zeros, zeros.astype(np.float64), 0, 0)
        if phase is not Phase.CONTINUOUS:
            price = p.close[rows, last].astype(np.float64)
            high, low, volume, value = self._cum(rows, self.n_minutes)
            if phase is Phase.CLOSED:
                price = p.auction_price[rows]
                high, low = np.maximum(high, price), np.minimum(low, price)
                volume = volume + p.auction_volume[rows]
                value = value + p.auction_volume[rows] * price
            return _State(price, high, low, volume, value, last, self.n_minutes)
        m, f = self.minute_of(at)
        price = self._path_point(rows, m, f)
        seen = [*self._vertices(rows, m)[: min(int(3.0 * f), 2) + 1], price]
        high, low = np.max(seen, axis=0), np.min(seen, axis=0)
        volume = np.floor(p.volume[rows, m] * f).astype(np.int64)
        value = np.floor(p.values(rows, m, m + 1)[:, 0] * f)
        if m > 0:
            cum_high, cum_low, cum_volume, cum_value = self._cum(rows, m)
            high = np.maximum(high, cum_high)
            low = np.minimum(low, cum_low)
            volume = volume + cum_volume
            value = value + cum_value
        return _State(price, high, low, volume, value, m, m)

    def _bid_ask(self, rows: Rows, price: FloatArray, minute: int) -> tuple[FloatArray, FloatArray]:
        spread = self._p.spread_ticks[rows, minute].astype(np.int64)
        lower, upper = self._u.lower[rows], self._u.upper[rows]
        bid = np.maximum(step_grid(price, -(spread // 2)), lower)
        ask = step_grid(bid, spread)
        over = ask > upper  # near the upper limit the book shifts down under it
        bid = np.where(over, step_grid(upper, -spread), bid)
        ask = np.where(over, upper, ask)
        return bid, ask

    def _bar(self, i: int, m: int) -> Bar:
        p = self._p
        o = float(p.close[i, m - 1]) if m else float(p.day_open[i])
        h, lo, c = float(p.high[i, m]), float(p.low[i, m]), float(p.close[i, m])
        up = c >= o
        return Bar((o, lo if up else h, h if up else lo, c), lo, h)

    def traded_range(self, symbol: str, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
        """(low, high) of the prices printed in [start, end] during continuous trading.

        Both instants must lie in one minute of the continuous session (the paper broker asks
        minute by minute).
        """
        m0, f0 = self.minute_of(start)
        m1, f1 = self.minute_of(end)
        if m1 != m0:  # `end` exactly on the next minute boundary closes minute m0
            f1 = 1.0
        low, high = self._bar(self.index(symbol), m0).span(f0, f1)
        return _won(low), _won(high)

    def first_touch(
        self,
        symbol: str,
        below: Decimal | None,
        above: Decimal | None,
        start: datetime,
        end: datetime,
    ) -> datetime | None:
        """The first instant in [start, end] of continuous trading at which the printed price is
        at or below `below` or at or above `above` (either may be None); None if it is not.

        Exact to a millisecond: the path is searched minute by minute with `traded_range`
        (which sees every print, extremes included), then bisected inside the minute that
        touches, so the instant returned is at or just after the first print through a level.
        """
        s = self.session
        start, end = max(start, s.open), min(end, s.continuous_close)
        if start >= end:
            return None
        i = self.index(symbol)

        def touched(bar: Bar, m: int, f0: float, at: datetime) -> bool:
            """Did minute m print through a level from fraction f0 to `at` (in minute m, or on
            its end)? Prices are whole won: compared as the Decimals `traded_range` gives."""
            m1, f1 = self.minute_of(at)
            low, high = bar.span(f0, 1.0 if m1 != m else f1)
            return (below is not None and int(low) <= below) or (
                above is not None and int(high) >= above
            )

        m, f = self.minute_of(start)
        if touched(self._bar(i, m), m, f, start):
            return start
        t = start
        while t < end:  # each minute from where the last one ended, which did not touch
            m, f = self.minute_of(t)
            bar = self._bar(i, m)
            minute_end = min(s.open + timedelta(minutes=m + 1), end)
            if touched(bar, m, f, minute_end):
                lo, hi = 0, (minute_end - t) // _US  # untouched at lo, touched by hi
                while hi - lo > 1000:
                    mid = (lo + hi) // 2
                    if touched(bar, m, f, t + mid * _US):
                        hi = mid
                    else:
                        lo = mid
                return t + hi * _US
            t = minute_end
        return None

    # ----- public views -------------------------------------------------------------------

    def quote(self, symbol: str, at: datetime, short_ma_bars: int = 5) -> Quote:
        """One symbol at `at` (see the module docstring for each phase)."""
        i = self.index(symbol)
        if self.phase(at) is Phase.CONTINUOUS:
            price, high, low, volume, value, minute = self._continuous(i, at)
            completed = minute
        else:
            st = self._state(np.array([i]), at)
            price, high, low = float(st.price[0]), float(st.day_high[0]), float(st.day_low[0])
            volume, value = int(st.volume[0]), float(st.value[0])
            minute, completed = st.minute, st.completed
        bid, ask = self._bid_ask_one(i, price, minute)
        depth, short_ma, ratio = self._minute_facts(i, minute, completed, short_ma_bars)
        inst = self.instruments[i]
        vi = self.interruption_at(symbol, at)
        return Quote(
            symbol=symbol,
            at=at,
            price=_won(price),
            bid=_won(bid),
            ask=_won(ask),
            bid_qty=depth,
            ask_qty=depth,
            volume=volume,
            traded_value=_won(value),
            day_high=_won(high),
            day_low=_won(low),
            prev_close=inst.prev_close,
            prev_high=inst.prev_high,
            prev_low=inst.prev_low,
            upper_limit=_won(self._u.upper[i]),
            lower_limit=_won(self._u.lower[i]),
            tier=inst.tier,
            short_ma=short_ma,
            halted_until=None if vi is None else vi.end,
            range_ratio=ratio,
        )

    def _continuous(self, i: int, at: datetime) -> tuple[float, float, float, int, float, int]:
        """`_state` for one row during continuous trading: (price, day high, day low, volume,
        traded value, minute), in scalars."""
        p = self._p
        m, f = self.minute_of(at)
        bar = self._bar(i, m)
        price = bar.point(f)
        seen = [*bar.v[: min(int(3.0 * f), 2) + 1], price]
        high, low = max(seen), min(seen)
        shares = int(p.volume[i, m])
        volume = math.floor(float(shares) * f)
        o, c = bar.v[0], bar.v[3]  # the minute's traded won, as `KeptDay.values`
        value = float(math.floor(float(round(shares * (o + bar.high + bar.low + c) / 4.0)) * f))
        if m > 0:
            kept = self._cums.get(i)
            if kept is None or kept[0] != m:
                kept = (m, p.row_cum(i, m))
                self._cums[i] = kept
            cum_high, cum_low, cum_volume, cum_value = kept[1]
            high = max(high, cum_high)
            low = min(low, cum_low)
            volume += cum_volume
            value += cum_value
        return price, high, low, volume, value, m

    def _bid_ask_one(self, i: int, price: float, minute: int) -> tuple[float, float]:
        """`_bid_ask` for one row."""
        spread = int(self._p.spread_ticks[i, minute])
        lower, upper = float(self._u.lower[i]), float(self._u.upper[i])
        bid = max(step_f(price, -(spread // 2)), lower)
        ask = step_f(bid, spread)
        if ask > upper:  # near the upper limit the book shifts down under it
            return step_f(upper, -spread), upper
        return bid, ask

    def _minute_facts(self, i: int, minute: int, completed: int, short_ma_bars: int) -> _Facts:
        """A quote's parts that change only with the minute: (top-of-book size, short MA,
        range ratio); the last answer per row is kept (a held symbol is quoted every step)."""
        key = (minute, completed, short_ma_bars)
        kept = self._facts.get(i)
        if kept is not None and kept[0] == key:
            return kept[1]
        depth = self._level_sizes(i, minute, 1)[0]
        short_ma: Decimal | None = None
        if short_ma_bars > 0 and completed >= short_ma_bars:
            closes = self._p.close[i, completed - short_ma_bars : completed]
            short_ma = (_won(closes.sum()) / short_ma_bars).quantize(Decimal("0.01"))
        ranges = self._p.high[i, :completed] - self._p.low[i, :completed]
        facts = (depth, short_ma, range_ratio(ranges))
        self._facts[i] = (key, facts)
        return facts

    def snapshot(self, at: datetime, n_bars: int) -> Snapshot:
        """Every symbol at `at`, with its last `n_bars` completed bars (left-padded NaN / 0)."""
        if n_bars < 0:
            raise ValueError("n_bars must be >= 0")
        u, p = self._u, self._p
        rows = slice(None)
        st = self._state(rows, at)
        bid, ask = self._bid_ask(rows, st.price, st.minute)
        n = len(u.symbols)
        closes = np.full((n, n_bars), np.nan)
        volumes = np.zeros((n, n_bars))
        k = min(st.completed, n_bars)
        if k:
            closes[:, n_bars - k :] = p.close[:, st.completed - k : st.completed]
            volumes[:, n_bars - k :] = p.volume[:, st.completed - k : st.completed]
        return Snapshot(
            at=at,
            trading_day=self.session.day,
            symbols=u.symbols,
            price=st.price,
            bid=bid,
            ask=ask,
            tick=tick_of(st.price),
            volume=st.volume.astype(np.float64),
            traded_value=st.value,
            day_high=st.day_high,
            day_low=st.day_low,
            prev_close=u.prev_close,
            prev_high=u.prev_high,
            prev_low=u.prev_low,
            tier=u.tier,
            closes=closes,
            volumes=volumes,
            halted=self._halted(at),
        )

    def _level_sizes(self, i: int, minute: int, levels: int) -> list[int]:
        base = self._p.depth[i, minute] * self._p.level_mult[i, :levels]
        return [max(1, int(x)) for x in base]

    def book(self, symbol: str, at: datetime, levels: int = 5) -> tuple[list[Level], list[Level]]:
        """(bids best first, asks best first) as (price, shares), up to `levels` each.

        A side has fewer levels only where the daily price limit cuts it off.
        """
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..{MAX_LEVELS}")
        i = self.index(symbol)
        rows = np.array([i])
        st = self._state(rows, at)
        bid_f, ask_f = self._bid_ask(rows, st.price, st.minute)
        lower, upper = self.limits(symbol)
        sizes = self._level_sizes(i, st.minute, levels)
        bids: list[Level] = []
        asks: list[Level] = []
        bid, ask = _won(bid_f[0]), _won(ask_f[0])
        for size in sizes:
            if bid >= lower:
                bids.append((bid, size))
            if ask <= upper:
                asks.append((ask, size))
            bid = step(bid, -1) if bid > 1 else Decimal(0)
            ask = step(ask, 1)
        return bids, asks

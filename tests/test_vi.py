"""Volatility interruptions: detection on the simulated paths, quotes, and the paper broker.

Detection is checked on hand-made paths (`market.paths.find_interruptions`), where the exact
trigger instant can be worked out on paper, and on a seeded market against the bars; matching
during a VI is checked through `PaperBroker` on that seeded market.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from broker.paper import PaperBroker
from broker.port import OrderRequest, OrderType, Side
from market.calendar import Session
from market.clock import KST
from market.paths import DayPaths, Universe, ViWindow, find_interruptions
from market.sim import SimulatedMarket
from market.ticks import step
from market.types import ViKind, VolatilityInterruption

SESSION = Session(
    date(2026, 3, 10),
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
MINUTES = 380
US = 1_000_000  # microseconds per second


# ----- detection on hand-made paths ------------------------------------------------------------


def crafted(rows: list[tuple[float, list[float], bool]]) -> tuple[Universe, DayPaths]:
    """Rows of (opening price, minute closes, KOSPI 200?); each bar spans its open and close."""
    n = len(rows)
    close = np.array([c for _, c, _ in rows], dtype=np.float64)
    open_ = np.empty_like(close)
    open_[:, 0] = [o for o, _, _ in rows]
    open_[:, 1:] = close[:, :-1]
    zeros = np.zeros_like(close)
    izeros = np.zeros(close.shape, dtype=np.int64)
    first = open_[:, 0].copy()
    u = Universe(
        symbols=tuple(f"{i + 1:05d}0" for i in range(n)),
        kospi=np.array([k for *_, k in rows]),
        kospi200=np.array([k for *_, k in rows]),
        tier=np.full(n, 2, dtype=np.int64),
        prev_close=first,
        prev_high=first,
        prev_low=first,
        lower=first * 0.7,
        upper=first * 1.3,
        daily_vol=np.full(n, 0.02),
    )
    p = DayPaths(
        regime=np.zeros(n, dtype=np.int64),
        open=open_,
        high=np.maximum(open_, close),
        low=np.minimum(open_, close),
        close=close,
        volume=izeros,
        value=zeros,
        spread_ticks=izeros,
        depth=zeros,
        level_mult=np.ones((n, 10)),
        auction_price=close[:, -1].copy(),
        auction_volume=np.zeros(n, dtype=np.int64),
    )
    return u, p


def ramp(first: float, step_won: float, until: float) -> list[float]:
    """Minute closes `first`, then `step_won` further each minute up to `until`, then flat."""
    out = [first]
    while len(out) < MINUTES:
        out.append(out[-1] + step_won if out[-1] != until else until)
    return out


def jump(at_minute: int, to: float) -> list[float]:
    """10,000 won flat, then one minute moving to `to`, then flat."""
    return [10_000.0 if m < at_minute else to for m in range(MINUTES)]


def by_row(windows: list[ViWindow]) -> dict[int, list[ViWindow]]:
    out: dict[int, list[ViWindow]] = {}
    for w in windows:
        out.setdefault(w.row, []).append(w)
    return out


def test_static_vi_at_ten_percent_from_the_open_then_from_the_vi_price() -> None:
    # +100 won a minute (1%, far from any dynamic band): 11,000 (+10%) is first printed in
    # minute 9 (10,900 -> 11,000); the leg to the high is the middle third of the minute and the
    # price rounds to 11,000 from a raw 10,995, i.e. 0.95 of the way: 20 s + 19 s = 39 s.
    u, p = crafted([(10_000.0, ramp(10_100.0, 100.0, 20_000.0), False)])
    windows = find_interruptions(u, p)
    first, second = windows[0], windows[1]
    assert first.static
    assert first.reference == 10_000.0
    assert first.trigger == 11_000.0
    assert first.start_us == 9 * 60 * US + 39 * US
    assert first.end_us == first.start_us + 120 * US
    # Two minutes later (minute 11, 11,100 -> 11,200, 39 s in) the path prints 11,200: the
    # auction price, and the next static reference: +10% is 12,320, printed in minute 23
    # (12,300 -> 12,400) from a raw 12,315, 0.15 of the middle leg: 20 s + 3 s = 23 s.
    assert first.price == 11_200.0
    assert second.static
    assert second.reference == 11_200.0
    assert second.trigger == 12_320.0
    assert second.start_us == 23 * 60 * US + 23 * US


def test_static_vi_downwards_and_not_under_ten_percent() -> None:
    u, p = crafted(
        [
            (10_000.0, ramp(9_900.0, -100.0, 9_000.0), False),  # reaches -10%: VI
            (10_000.0, ramp(10_010.0, 10.0, 10_990.0), False),  # +9.9%, never +10%
            (10_000.0, ramp(9_990.0, -10.0, 9_010.0), False),  # -9.9%, never -10%
        ]
    )
    windows = by_row(find_interruptions(u, p))
    assert set(windows) == {0}
    down = windows[0][0]
    assert down.static
    assert down.trigger == 9_000.0
    assert down.reference == 10_000.0
    assert 9 * 60 * US <= down.start_us < 10 * 60 * US  # minute 9: 9,100 -> 9,000


def test_dynamic_vi_thresholds_by_kospi200_membership() -> None:
    u, p = crafted(
        [
            (10_000.0, jump(100, 10_300.0), True),  # +3.0% in a minute: not more than 3%
            (10_000.0, jump(100, 10_400.0), True),  # +4%, KOSPI 200: VI
            (10_000.0, jump(100, 10_400.0), False),  # +4%, others: under 6%
            (10_000.0, jump(100, 10_700.0), False),  # +7%, others: VI
            (10_000.0, jump(200, 9_600.0), True),  # -4%, KOSPI 200: VI
        ]
    )
    windows = by_row(find_interruptions(u, p))
    assert set(windows) == {1, 3, 4}
    assert all(len(w) == 1 and not w[0].static for w in windows.values())
    k200, other, down = windows[1][0], windows[3][0], windows[4][0]
    # 10,400: the first print above 10,300 is 10,310, from a raw just above 10,305 (10,305
    # itself rounds half-to-even to 10,300), 0.7625 of the middle leg: 35.25 s.
    assert 100 * 60 * US + 35_250_000 <= k200.start_us <= 100 * 60 * US + 35_250_002
    assert (k200.reference, k200.trigger, k200.price) == (10_000.0, 10_310.0, 10_400.0)
    assert other.trigger == 10_610.0
    assert 100 * 60 * US < other.start_us < 101 * 60 * US
    assert down.trigger == 9_690.0
    assert 200 * 60 * US < down.start_us < 201 * 60 * US


def test_vi_running_into_the_close_merges_into_the_closing_auction() -> None:
    u, p = crafted([(10_000.0, jump(MINUTES - 1, 10_800.0), False)])  # +8% in the last minute
    (w,) = find_interruptions(u, p)
    assert w.end_us == MINUTES * 60 * US
    assert np.isnan(w.price)


# ----- the seeded market ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=7, session=SESSION, n_symbols=300)


def at_us(us: int) -> datetime:
    return SESSION.open + timedelta(microseconds=us)


def test_first_vi_starts_in_the_minute_the_bars_first_reach_the_band(
    market: SimulatedMarket,
) -> None:
    p = market._p
    day_open = p.open[:, :1]
    static = (p.high * 10 >= day_open * 11) | (p.low * 10 <= day_open * 9)
    dyn = np.where(market._u.kospi200, 3, 6)[:, None]
    dynamic = (p.high * 100 > p.open * (100 + dyn)) | (p.low * 100 < p.open * (100 - dyn))
    assert not dynamic.any(), "this day has no dynamic VI; the hand-made paths cover those"
    with_vi = 0
    for i, symbol in enumerate(market.symbols):
        vis = market.interruptions(symbol)
        if not static[i].any():
            assert vis == (), symbol  # never 10% from the open: no VI
            continue
        with_vi += 1
        m = int(np.argmax(static[i]))
        first = vis[0]
        assert first.kind is ViKind.STATIC
        assert first.reference == Decimal(int(p.open[i, 0]))
        start = SESSION.open + timedelta(minutes=m)
        assert start <= first.start <= start + timedelta(minutes=1), symbol  # the close ends it
        assert first.end == first.start + timedelta(minutes=2)
    assert with_vi >= 10


def test_quotes_and_snapshots_show_the_vi(market: SimulatedMarket) -> None:
    vi = inside_session(market)
    before, eps = vi.start - timedelta(microseconds=1), timedelta(microseconds=1)
    ref = vi.reference

    def breached(x: Decimal) -> bool:
        return abs(x - ref) * 10 >= ref

    assert market.quote(vi.symbol, before).halted_until is None
    assert not breached(market.quote(vi.symbol, before).price)
    assert market.quote(vi.symbol, vi.start).halted_until == vi.end
    assert market.quote(vi.symbol, vi.start).price == vi.trigger_price
    assert breached(vi.trigger_price)
    assert market.quote(vi.symbol, vi.end - eps).halted_until == vi.end
    assert market.quote(vi.symbol, vi.end).halted_until is None
    assert market.quote(vi.symbol, vi.end).price == vi.price
    i = market.index(vi.symbol)
    for at, halted in ((before, False), (vi.start, True), (vi.end - eps, True), (vi.end, False)):
        snap = market.snapshot(at, 10)
        assert snap.halted is not None
        assert bool(snap.halted[i]) is halted
        in_vi = {s for s in market.symbols if market.interruption_at(s, at) is not None}
        assert {snap.symbols[k] for k in np.flatnonzero(snap.halted)} == in_vi


def test_same_seed_same_interruptions(market: SimulatedMarket) -> None:
    again = SimulatedMarket(seed=7, session=SESSION, n_symbols=300)
    assert [again.interruptions(s) for s in again.symbols] == [
        market.interruptions(s) for s in market.symbols
    ]


# ----- the paper broker ----------------------------------------------------------------------


class ManualClock:
    speed = 1.0

    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def inside_session(market: SimulatedMarket) -> VolatilityInterruption:
    """A VI well inside continuous trading, with no other VI of its symbol in the 5 min before."""
    for symbol in market.symbols:
        previous: datetime | None = None
        for vi in market.interruptions(symbol):
            calm = previous is None or previous < vi.start - timedelta(minutes=5)
            if (
                calm
                and vi.start > SESSION.open + timedelta(minutes=5)
                and vi.end < SESSION.continuous_close - timedelta(minutes=5)
            ):
                return vi
            previous = vi.end
    raise AssertionError("no VI inside the session")


@pytest.mark.anyio
async def test_orders_during_a_vi_fill_at_its_single_price_at_its_end(
    market: SimulatedMarket,
) -> None:
    vi = inside_session(market)
    assert vi.price is not None
    clock = ManualClock(vi.start + timedelta(seconds=30))
    broker = PaperBroker(market, clock)
    buy = await broker.submit_order(OrderRequest(vi.symbol, Side.BUY, 10, OrderType.MARKET))
    sell = await broker.submit_order(OrderRequest(vi.symbol, Side.SELL, 7, OrderType.MARKET))
    below = step(vi.price, -3)  # a BUY limit under the VI price does not cross
    low_buy = await broker.submit_order(
        OrderRequest(vi.symbol, Side.BUY, 5, OrderType.LIMIT, below)
    )
    for at in (vi.start + timedelta(seconds=31), vi.end - timedelta(microseconds=1)):
        clock.t = at
        for ack in (buy, sell, low_buy):
            status = await broker.order_status(ack.broker_order_id)
            assert status.filled_qty == 0
            assert not status.done
    clock.t = vi.end
    for ack, qty in ((buy, 10), (sell, 7)):
        assert [(e.at, e.qty, e.price) for e in broker.executions(ack.broker_order_id)] == [
            (vi.end, qty, vi.price)
        ]
    status = await broker.order_status(low_buy.broker_order_id)
    assert (status.filled_qty, status.remaining_qty) == (0, 5)  # keeps working afterwards


@pytest.mark.anyio
async def test_a_resting_limit_the_vi_would_have_hit_waits_for_the_auction(
    market: SimulatedMarket,
) -> None:
    # A limit at the trigger price, resting from before the VI: the path prints that price at
    # the VI's first instant, so continuous matching would fill it there. It must fill only at
    # the VI's end, at the VI's single price.
    for symbol in market.symbols:
        found = [
            vi
            for vi in market.interruptions(symbol)
            if vi.price is not None
            and (vi.price >= vi.trigger_price > vi.reference)
            and vi.start > SESSION.open + timedelta(minutes=2)
        ]
        if found:
            vi = found[0]
            break
    else:
        raise AssertionError("no upward VI whose price holds the trigger")
    assert vi.price is not None
    clock = ManualClock(vi.start - timedelta(seconds=50))
    broker = PaperBroker(market, clock)
    assert market.quote(vi.symbol, clock.t).bid < vi.trigger_price  # not marketable yet
    ack = await broker.submit_order(
        OrderRequest(vi.symbol, Side.SELL, 3, OrderType.LIMIT, vi.trigger_price)
    )
    clock.t = vi.end - timedelta(microseconds=1)
    assert broker.executions(ack.broker_order_id) == []
    clock.t = vi.end + timedelta(seconds=5)
    fills = [(e.at, e.qty, e.price) for e in broker.executions(ack.broker_order_id)]
    assert fills == [(vi.end, 3, vi.price)]


@pytest.mark.anyio
async def test_continuous_matching_resumes_at_the_vi_end(market: SimulatedMarket) -> None:
    vi = inside_session(market)
    clock = ManualClock(vi.end)
    broker = PaperBroker(market, clock)
    _, asks = market.book(vi.symbol, vi.end, 1)
    ack = await broker.submit_order(OrderRequest(vi.symbol, Side.BUY, 1, OrderType.MARKET))
    assert [(e.at, e.price) for e in broker.executions(ack.broker_order_id)] == [
        (vi.end, asks[0][0])
    ]

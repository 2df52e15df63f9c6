"""The seeded simulated market (market/sim.py, market/paths.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.calendar import Session
from market.clock import KST
from market.paths import DayPaths, Regime, make_paths, make_universe, tick_of
from market.sim import SimulatedMarket
from market.ticks import is_on_grid, step, tick_size, ticks_between
from market.types import Tier

DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=7, session=SESSION, n_symbols=300)


def at_minute(m: float) -> datetime:
    return SESSION.open + timedelta(minutes=m)


def fingerprint(m: SimulatedMarket) -> str:
    snap = m.snapshot(at_minute(200.5), 120)
    h = hashlib.sha256()
    h.update(repr(m.instruments).encode())
    for arr in (snap.price, snap.bid, snap.ask, snap.volume, snap.closes, snap.volumes):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def test_same_seed_and_day_give_the_same_market() -> None:
    a = SimulatedMarket(3, SESSION, 200)
    b = SimulatedMarket(3, SESSION, 200)
    assert fingerprint(a) == fingerprint(b)
    sym = a.symbols[17]
    t = at_minute(123.4)
    assert a.quote(sym, t) == b.quote(sym, t)
    assert a.book(sym, t) == b.book(sym, t)
    assert fingerprint(SimulatedMarket(4, SESSION, 200)) != fingerprint(a)
    other_day = Session(
        DAY + timedelta(days=1),
        *(x + timedelta(days=1) for x in (SESSION.open, SESSION.continuous_close, SESSION.close)),
    )
    assert SimulatedMarket(3, other_day, 200).instruments != a.instruments


def test_same_market_in_another_process() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.test_sim import SESSION, fingerprint;"
        "from market.sim import SimulatedMarket;"
        "print(fingerprint(SimulatedMarket(3, SESSION, 200)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == fingerprint(SimulatedMarket(3, SESSION, 200))


def test_universe(market: SimulatedMarket) -> None:
    insts = market.instruments
    assert len(insts) == 300
    assert len({i.symbol for i in insts}) == 300
    assert all(len(i.symbol) == 6 and i.symbol.isdigit() for i in insts)
    assert {i.board for i in insts} == {"KOSPI", "KOSDAQ"}
    assert {i.tier for i in insts} == set(Tier)
    assert any(i.kospi200 for i in insts)
    assert all(i.board == "KOSPI" for i in insts if i.kospi200)
    prices = [i.prev_close for i in insts]
    assert min(prices) < 3_000
    assert max(prices) > 300_000
    for i in insts:
        assert is_on_grid(i.prev_close)
        assert i.prev_low <= i.prev_close <= i.prev_high
    assert market.instrument(insts[5].symbol) is insts[5]
    with pytest.raises(KeyError, match="unknown symbol"):
        market.instrument("999999")


def test_every_bar_on_grid_and_inside_limits(market: SimulatedMarket) -> None:
    p, u = market._p, market._u
    lower, upper = u.lower[:, None], u.upper[:, None]
    for arr in (p.open, p.high, p.low, p.close):
        assert np.all(arr % tick_of(arr) == 0)
        assert np.all((arr >= lower) & (arr <= upper))
    assert np.all(p.low <= np.minimum(p.open, p.close))
    assert np.all(p.high >= np.maximum(p.open, p.close))
    assert np.all(p.auction_price % tick_of(p.auction_price) == 0)
    assert np.all((p.auction_price >= u.lower) & (p.auction_price <= u.upper))
    assert np.all(p.volume >= 0)
    # The vectorized limits agree with the Decimal rule.
    for inst in market.instruments[:50]:
        lo, hi = market.limits(inst.symbol)
        assert (is_on_grid(lo), is_on_grid(hi)) == (True, True)


@settings(max_examples=60, deadline=None)
@given(
    second=st.integers(
        min_value=-600, max_value=int((SESSION.close - SESSION.open).total_seconds()) + 600
    ),
    row=st.integers(min_value=0, max_value=299),
)
def test_quote_at_any_instant_is_consistent(market: SimulatedMarket, second: int, row: int) -> None:
    sym = market.symbols[row]
    q = market.quote(sym, SESSION.open + timedelta(seconds=second, microseconds=250_000))
    for price in (q.price, q.bid, q.ask, q.day_high, q.day_low):
        assert is_on_grid(price)
        assert q.lower_limit <= price <= q.upper_limit
    assert q.day_low <= q.price <= q.day_high
    assert q.ask >= step(q.bid, 1)  # spread >= one tick
    assert q.bid_qty > 0
    assert q.ask_qty > 0


def test_quote_phases(market: SimulatedMarket) -> None:
    inst = market.instruments[11]
    sym = inst.symbol
    pre = market.quote(sym, SESSION.open - timedelta(minutes=5))
    assert pre.price == inst.prev_close
    assert (pre.volume, pre.traded_value, pre.short_ma) == (0, Decimal(0), None)
    last_close = Decimal(int(market._p.close[11, -1]))
    auction = market.quote(sym, SESSION.continuous_close + timedelta(minutes=3))
    assert auction.price == last_close
    closed = market.quote(sym, SESSION.close + timedelta(hours=1))
    assert closed.price == market.auction_price(sym)
    assert closed.volume > auction.volume
    assert closed.day_high >= closed.price >= closed.day_low


def test_volume_and_short_ma_follow_completed_bars(market: SimulatedMarket) -> None:
    sym = market.symbols[3]
    q0 = market.quote(sym, at_minute(10.0))
    q1 = market.quote(sym, at_minute(10.5))
    q2 = market.quote(sym, at_minute(11.0))
    assert q0.volume <= q1.volume <= q2.volume
    assert q0.volume == int(market._p.volume[3, :10].sum())
    closes = market._p.close[3, 5:10]
    assert q0.short_ma == (Decimal(int(closes.sum())) / 5).quantize(Decimal("0.01"))
    assert market.quote(sym, at_minute(3.5)).short_ma is None  # fewer than 5 bars yet


def test_snapshot_bars_are_completed_and_left_padded(market: SimulatedMarket) -> None:
    snap = market.snapshot(at_minute(3.5), 5)
    assert snap.closes.shape == (300, 5)
    assert np.all(np.isnan(snap.closes[:, :2]))
    assert np.array_equal(snap.closes[:, 2:], market._p.close[:, :3])
    assert np.all(snap.volumes[:, :2] == 0)
    assert np.array_equal(snap.volumes[:, 2:], market._p.volume[:, :3])
    assert snap.trading_day == DAY
    # The snapshot and the per-symbol quote agree.
    for row in (0, 150, 299):
        q = market.quote(snap.symbols[row], snap.at)
        assert (snap.price[row], snap.bid[row], snap.ask[row]) == (
            float(q.price),
            float(q.bid),
            float(q.ask),
        )
        assert snap.volume[row] == q.volume
        assert snap.tick[row] == float(tick_size(q.price))
    assert market.snapshot(SESSION.open - timedelta(minutes=1), 3).closes.shape == (300, 3)


def test_book_levels_and_spread(market: SimulatedMarket) -> None:
    t = at_minute(77.3)
    spreads: dict[Tier, list[int]] = {tier: [] for tier in Tier}
    for inst in market.instruments:
        bids, asks = market.book(inst.symbol, t, levels=5)
        lower, upper = market.limits(inst.symbol)
        assert asks[0][0] >= step(bids[0][0], 1)
        assert len(bids) == 5 or step(bids[-1][0], -1) < lower
        assert len(asks) == 5 or step(asks[-1][0], 1) > upper
        for side, sign in ((bids, -1), (asks, 1)):
            for (p0, _), (p1, _) in pairwise(side):
                assert p1 == step(p0, sign)  # consecutive grid prices
            assert all(is_on_grid(p) and q > 0 for p, q in side)
        spreads[inst.tier].append(ticks_between(bids[0][0], asks[0][0]))
    assert np.mean(spreads[Tier.THIN]) > np.mean(spreads[Tier.HIGH])
    assert min(min(v) for v in spreads.values()) >= 1


def test_depth_scales_with_tier(market: SimulatedMarket) -> None:
    t = at_minute(100)
    value: dict[Tier, list[float]] = {tier: [] for tier in Tier}
    for inst in market.instruments:
        bids, _ = market.book(inst.symbol, t)
        value[inst.tier].append(float(sum(p * q for p, q in bids)))
    medians = [np.median(value[tier]) for tier in Tier]
    assert medians == sorted(medians)


def test_volume_is_u_shaped(market: SimulatedMarket) -> None:
    per_minute = market._p.volume * market._u.prev_close[:, None]  # won, comparable across names
    profile = per_minute.mean(axis=0)
    first, middle, last = profile[:15].mean(), profile[150:230].mean(), profile[-15:].mean()
    assert first > 1.5 * middle
    assert last > 1.3 * middle


def test_breakouts_clear_the_prior_day_high(market: SimulatedMarket) -> None:
    p, u = market._p, market._u
    rows = np.flatnonzero(p.regime == Regime.BREAKOUT)
    assert len(rows) > 10
    cleared = p.high[rows].max(axis=1) > u.prev_high[rows]
    assert cleared.mean() > 0.8
    assert set(np.unique(p.regime)) == {int(r) for r in Regime}


def test_scales_to_2500_symbols() -> None:
    """The whole market at once: 2,500 symbols, 120-bar snapshots that run on from minute to
    minute (how long it takes is bench/scan.py's `sim_build_ms` and `sim_snapshot_ms`)."""
    big = SimulatedMarket(11, SESSION, n_symbols=2_500)
    assert len(big.instruments) == len({i.symbol for i in big.instruments}) == 2_500
    previous = None
    for k in range(20):
        snap = big.snapshot(at_minute(150 + k + 0.5), 120)
        assert snap.closes.shape == snap.volumes.shape == (2_500, 120)
        if previous is not None:  # one minute on: the window moved by one bar
            assert np.array_equal(snap.closes[:, :-1], previous.closes[:, 1:])
        previous = snap


def test_step_grid_equals_the_scalar_step_across_band_edges() -> None:
    from decimal import Decimal

    import numpy as np

    from market.paths import round_grid, step_grid
    from market.ticks import step

    rng = np.random.default_rng(5)
    edges = [1_999, 2_000, 4_995, 5_000, 19_990, 20_000, 49_950, 50_000, 199_900, 200_000,
             499_500, 500_000]  # fmt: skip
    prices = np.concatenate(
        [np.repeat(np.array(edges, float), 13),
         round_grid(np.exp(rng.uniform(np.log(900), np.log(1_100_000), 500)), "nearest")]
    )  # fmt: skip
    moves = np.concatenate([np.tile(np.arange(-6, 7), len(edges)), rng.integers(-6, 7, 500)])
    expected = [float(step(Decimal(int(p)), int(k))) for p, k in zip(prices, moves, strict=True)]
    assert step_grid(prices, moves).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(
    us=st.integers(min_value=-60_000_000, max_value=(380 * 60 + 600) * 1_000_000),
    on_second=st.booleans(),
)
def test_a_quote_is_the_snapshot_of_its_symbol(market: SimulatedMarket, us: int,
                                               on_second: bool) -> None:  # fmt: skip
    """`quote` works in scalars for one symbol and `snapshot` in arrays for all: the same
    prices, to the won, at any instant (on and between minute boundaries, in every phase)."""
    at = SESSION.open + timedelta(microseconds=us - us % 1_000_000 if on_second else us)
    snap = market.snapshot(at, 0)
    for row in range(0, 300, 7):
        q = market.quote(market.symbols[row], at)
        fields = (q.price, q.bid, q.ask, q.day_high, q.day_low, q.traded_value)
        arrays = (snap.price, snap.bid, snap.ask, snap.day_high, snap.day_low, snap.traded_value)
        assert fields == tuple(Decimal(int(a[row])) for a in arrays)
        assert q.volume == int(snap.volume[row])
        assert (q.halted_until is not None) == bool(snap.halted[row])


def drawn(seed: int, n: int) -> tuple[SimulatedMarket, DayPaths]:
    """A market and the float64/int64 bars `make_paths` drew for it (the same generator)."""
    market = SimulatedMarket(seed, SESSION, n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, DAY.toordinal(), n]))
    return market, make_paths(rng, make_universe(rng, n), market.n_minutes)


@pytest.mark.parametrize(("seed", "n"), [(7, 300), (3, 41)])
def test_the_kept_bars_read_back_what_was_drawn(seed: int, n: int) -> None:
    """The market keeps narrow types and derives opens, values and running totals: every one
    reads back as drawn, to the won, at every minute (from checkpoints, from the last
    snapshot's totals, and per row)."""
    market, p = drawn(seed, n)
    kept = market._p
    for name in ("open", "high", "low", "close", "volume", "value", "spread_ticks", "depth"):
        assert np.array_equal(getattr(kept, name), getattr(p, name)), name
    running = (p.cum_high, p.cum_low, p.cum_volume, p.cum_value)
    last = None
    for k in [*range(1, market.n_minutes + 1), 3, 17, 380, 16, 2]:
        cums = kept.cum(k, last)
        last = (k, cums)
        for got, want in zip(cums, running, strict=True):
            assert got.dtype == want.dtype
            assert np.array_equal(got, want[:, k - 1]), k
        for i in (0, n // 2, n - 1):
            assert kept.row_cum(i, k) == tuple(want[i, k - 1].item() for want in running)


def test_the_kept_bars_are_narrow() -> None:
    """Prices and volumes in int32, spreads in int8, only a checkpoint of the running totals
    every 16 minutes: about 3.1 MB for 300 symbols x 380 minutes (10.9 MB as drawn)."""
    market, p = drawn(7, 300)
    kept = market._p
    assert (kept.high.dtype, kept.low.dtype, kept.close.dtype) == (np.int32,) * 3
    assert (kept.volume.dtype, kept.spread_ticks.dtype) == (np.int32, np.int8)
    arrays = [getattr(kept, name) for name in kept.__slots__ if name != "checkpoints"]
    kept_bytes = sum(a.nbytes for a in (*arrays, *kept.checkpoints))
    as_drawn = [a for a in vars(p).values() if isinstance(a, np.ndarray)]
    running = [p.cum_high, p.cum_low, p.cum_volume, p.cum_value]  # computed when asked
    drawn_bytes = sum(a.nbytes for a in (*as_drawn, *running))
    assert kept_bytes < 3.2e6 < 10.9e6 < drawn_bytes

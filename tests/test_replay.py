"""Replay of one-minute bars from CSV (market/replay.py) and the poller over it (worker/poller.py).

The shipped sample (tests/data/replay_sample.csv) was exported from the seed-7 simulated day by
tests/data/make_replay_sample.py; the live side here is the paper broker over that same
simulated day, restricted to the sample's symbols with the scan's exclusion list.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from broker.paper import PaperBroker
from broker.port import MarketData
from market.replay import ReplayFormatError, ReplayMarket, write_replay_csv
from market.sim import SimulatedMarket
from market.types import Tier
from strategy.scan import ScanParams, rank_candidates
from strategy.signals import SignalParams
from trading.poller import poll_candidates, poll_position

sys.path.insert(0, str(Path(__file__).with_name("data")))
import make_replay_sample as sample

from market.clock import ManualClock

SESSION = sample.SESSION
N_BARS = 60


def at_minute(m: float) -> datetime:
    return SESSION.open + timedelta(minutes=m)


@pytest.fixture(scope="module")
def sim() -> SimulatedMarket:
    return SimulatedMarket(sample.SEED, SESSION, sample.N_SYMBOLS)


# ----- the shipped sample: replay == live ------------------------------------------------------


def test_sample_file_is_small_and_is_the_documented_day(sim: SimulatedMarket) -> None:
    assert sample.PATH.stat().st_size < 300_000
    replay = ReplayMarket(sample.PATH, ManualClock(SESSION.open), SESSION)
    assert len(replay.symbols) == sample.COUNT
    assert replay.symbols == tuple(sample.sample_symbols(sim))


@pytest.mark.anyio
async def test_replayed_sample_gives_the_live_pollers_candidates(sim: SimulatedMarket) -> None:
    clock = ManualClock(SESSION.open)
    replay = ReplayMarket(sample.PATH, clock, SESSION)
    live = PaperBroker(sim, clock)
    params = ScanParams()  # the worker's defaults
    others = frozenset(sim.symbols) - frozenset(replay.symbols)
    live_params = dataclasses.replace(params, exclude=others)
    signals = SignalParams()
    ranked_at_some_point = buys_at_some_point = False
    for minute in (0, 1, 10, 29, 30, 31, 45, 60, 75, 90, 105, 119, 120):
        clock.t = at_minute(minute)
        got = await poll_candidates(replay, params, N_BARS)
        want = await poll_candidates(live, live_params, N_BARS)
        assert got == want, minute
        got_buys = await poll_candidates(replay, params, N_BARS, signals)
        assert got_buys == await poll_candidates(live, live_params, N_BARS, signals), minute
        ranked_at_some_point |= bool(got)
        buys_at_some_point |= bool(got_buys)
    assert ranked_at_some_point
    assert buys_at_some_point


@pytest.mark.anyio
async def test_replayed_sample_quotes_match_the_live_quotes(sim: SimulatedMarket) -> None:
    clock = ManualClock(SESSION.open)
    replay = ReplayMarket(sample.PATH, clock, SESSION)
    live = PaperBroker(sim, clock)
    for minute in (0, 3, 50, 120):
        clock.t = at_minute(minute)
        for symbol in replay.symbols:
            got = await poll_position(replay, symbol, 5)
            want = await poll_position(live, symbol, 5)
            book = {"bid", "ask", "bid_qty", "ask_qty"}
            if want.tier >= Tier.MID:  # the simulator's book is one tick wide there, as ours
                book -= {"bid", "ask"}
            assert dataclasses.replace(got, **{k: getattr(want, k) for k in book}) == want


# ----- a full exported day, closing auction included ------------------------------------------


@pytest.fixture(scope="module")
def full_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulatedMarket, Path]:
    market = SimulatedMarket(3, SESSION, 12)
    path = tmp_path_factory.mktemp("replay") / "day.csv"
    write_replay_csv(market, path)
    return market, path


SNAPSHOT_FIELDS = (
    "price", "tick", "volume", "traded_value", "day_high", "day_low",
    "prev_close", "prev_high", "prev_low", "tier", "closes", "volumes",
)  # fmt: skip


@pytest.mark.parametrize(
    "at",
    [
        SESSION.open - timedelta(minutes=5),
        SESSION.open,
        at_minute(1),
        at_minute(200),
        at_minute(379),
        SESSION.continuous_close,
        SESSION.close - timedelta(seconds=1),
        SESSION.close,
        SESSION.close + timedelta(hours=1),
    ],
)
def test_exported_day_replays_to_the_simulators_snapshots(
    full_day: tuple[SimulatedMarket, Path], at: datetime
) -> None:
    market, path = full_day
    replay = ReplayMarket(path, ManualClock(at), SESSION)
    got, want = replay.snapshot_at(at, 90), market.snapshot(at, 90)
    assert got.symbols == want.symbols
    for name in SNAPSHOT_FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for symbol in market.symbols[:4]:
        g, w = replay.quote_at(symbol, at, 5), market.quote(symbol, at, 5)
        assert (g.price, g.volume, g.traded_value, g.short_ma) == (
            w.price, w.volume, w.traded_value, w.short_ma
        )  # fmt: skip
        assert (g.upper_limit, g.lower_limit, g.day_high, g.day_low) == (
            w.upper_limit, w.lower_limit, w.day_high, w.day_low
        )  # fmt: skip


def test_inside_a_minute_the_replay_holds_the_minutes_start(
    full_day: tuple[SimulatedMarket, Path],
) -> None:
    _, path = full_day
    replay = ReplayMarket(path, ManualClock(SESSION.open), SESSION)
    start = replay.snapshot_at(at_minute(42), 30)
    inside = replay.snapshot_at(at_minute(42.99), 30)
    np.testing.assert_array_equal(start.price, inside.price)
    np.testing.assert_array_equal(start.closes, inside.closes)
    later = replay.snapshot_at(at_minute(43), 30)
    np.testing.assert_array_equal(later.closes[:, :-1], start.closes[:, 1:])


def test_snapshot_arrays_are_read_only(full_day: tuple[SimulatedMarket, Path]) -> None:
    _, path = full_day
    snap = ReplayMarket(path, ManualClock(SESSION.open), SESSION).snapshot_at(at_minute(10), 5)
    with pytest.raises(ValueError, match="read-only"):
        snap.prev_close[0] = 1.0


@pytest.mark.anyio
async def test_the_port_serves_the_clocks_instant(full_day: tuple[SimulatedMarket, Path]) -> None:
    market, path = full_day
    clock = ManualClock(at_minute(77))
    replay = ReplayMarket(path, clock, SESSION)
    port: MarketData = replay
    assert [i.symbol for i in await port.instruments()] == list(market.symbols)
    assert [i.tier for i in await port.instruments()] == [i.tier for i in market.instruments]
    symbol = market.symbols[0]
    assert await port.quote(symbol, 5) == replay.quote_at(symbol, clock.t, 5)
    clock.t = at_minute(78)
    snap = await port.snapshot(10)
    assert snap.at == clock.t
    np.testing.assert_array_equal(snap.closes, replay.snapshot_at(clock.t, 10).closes)


# ----- hand-written files: gaps, estimates, the book rule, errors ------------------------------

HEADER = "symbol,board,minute,open,high,low,close,volume,prev_close,prev_high,prev_low\n"


def row(symbol: str, minute: int, o: int, h: int, lo: int, c: int, v: int, prev: int) -> str:
    at = at_minute(minute).isoformat()
    return f"{symbol},KOSPI,{at},{o},{h},{lo},{c},{v},{prev},{prev},{prev}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_gaps_and_late_first_trades(tmp_path: Path) -> None:
    text = HEADER + "".join([
        row("000020", 0, 10_000, 10_050, 9_990, 10_020, 100, 10_000),
        row("000020", 2, 10_020, 10_100, 10_020, 10_090, 300, 10_000),  # minute 1 missing
        row("000010", 1, 4_900, 4_910, 4_895, 4_905, 70, 4_890),  # first trade in minute 1
    ])  # fmt: skip
    replay = ReplayMarket(write(tmp_path, text), ManualClock(SESSION.open), SESSION)
    assert replay.symbols == ("000010", "000020")  # sorted by code, not by file order
    snap = replay.snapshot_at(at_minute(3), 4)
    np.testing.assert_array_equal(
        snap.closes, [[np.nan, np.nan, 4_905, 4_905], [np.nan, 10_020, 10_020, 10_090]]
    )
    np.testing.assert_array_equal(snap.volumes, [[0, 0, 70, 0], [0, 100, 0, 300]])
    np.testing.assert_array_equal(snap.day_high, [4_910, 10_100])
    np.testing.assert_array_equal(snap.volume, [70, 400])
    # value estimated from the typical price when the file has no value column
    assert snap.traded_value[0] == round(70 * (4_900 + 4_910 + 4_895 + 4_905) / 4)
    early = replay.quote_at("000010", at_minute(0.5))
    assert (early.price, early.volume) == (Decimal(4_890), 0)  # no trade yet: prior close
    opening = replay.quote_at("000020", at_minute(0.5))
    assert opening.price == Decimal(10_000)  # during minute 0: the opening print


def test_bid_is_the_price_and_ask_one_tick_up_except_at_the_upper_limit(tmp_path: Path) -> None:
    text = HEADER + "".join([
        row("000010", 0, 19_990, 19_990, 19_990, 19_990, 10, 19_000),  # tick 10 -> ask 20,000
        row("000020", 0, 12_900, 13_000, 12_900, 13_000, 10, 10_000),  # closes at upper 13,000
    ])  # fmt: skip
    replay = ReplayMarket(write(tmp_path, text), ManualClock(SESSION.open), SESSION)
    a = replay.quote_at("000010", at_minute(1))
    assert (a.bid, a.ask) == (Decimal(19_990), Decimal(20_000))
    b = replay.quote_at("000020", at_minute(1))
    assert (b.bid, b.ask, b.upper_limit) == (Decimal(12_990), Decimal(13_000), Decimal(13_000))


def test_closing_auction_rows_print_at_the_close(tmp_path: Path) -> None:
    header = HEADER.replace("prev_low\n", "prev_low,value,tier\n")

    def with_extra(text: str, value: int, tier: str) -> str:
        return text.replace("\n", f",{value},{tier}\n")

    text = header + "".join([
        with_extra(row("000010", 0, 10_000, 10_050, 9_990, 10_020, 100, 10_000), 1_000_000, "1"),
        with_extra(row("000010", 390, 10_100, 10_100, 10_100, 10_100, 40, 10_000), 404_000, "1"),
        with_extra(row("000010", 385, 10_080, 10_080, 10_080, 10_080, 10, 10_000), 100_800, "1"),
    ])  # fmt: skip
    replay = ReplayMarket(write(tmp_path, text), ManualClock(SESSION.open), SESSION)
    assert replay.snapshot_at(SESSION.continuous_close, 1).tier[0] == Tier.LOW
    before = replay.quote_at("000010", SESSION.close - timedelta(seconds=1))
    assert (before.price, before.volume, before.traded_value) == (10_020, 100, 1_000_000)
    after = replay.quote_at("000010", SESSION.close)
    assert after.price == Decimal(10_100)  # the 15:30 row, though it comes first in the file
    assert (after.volume, after.traded_value, after.day_high) == (150, 1_504_800, 10_100)


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path) -> None:
    text = HEADER + "\n" + GOOD + GOOD
    path = write(tmp_path, text)
    with pytest.raises(ReplayFormatError, match=rf"^{re.escape(str(path))}:4: a second row"):
        ReplayMarket(path, ManualClock(SESSION.open), SESSION)


GOOD = row("000010", 0, 10_000, 10_050, 9_990, 10_020, 100, 10_000)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("symbol,board,minute,open\n", 1, "missing column"),
        (HEADER + GOOD + GOOD, 3, "same symbol and minute"),
        (HEADER + GOOD.replace(",10020,", ",10021,"), 2, "tick grid"),
        (HEADER + GOOD.replace(",9990,", ",10030,"), 2, "low <= open"),
        (HEADER + GOOD.replace("+09:00", ""), 2, "no UTC offset"),
        (HEADER + GOOD.replace("09:00:00", "09:00:30"), 2, "whole minute"),
        (HEADER + GOOD.replace("09:00:00", "08:59:00"), 2, "outside the session"),
        (HEADER + GOOD + row("000010", 1, 10_020, 10_020, 10_020, 10_020, 1, 9_000), 3, "differ"),
        (HEADER + GOOD.replace(",10050,", ",13050,"), 2, "upper limit"),
        (HEADER + GOOD.replace("KOSPI", "NYSE"), 2, "NYSE"),
        (HEADER + GOOD.replace(",100,", ",-1,"), 2, "volume"),
        (HEADER.replace("\n", ",tier\n") + GOOD.replace("\n", ",HUGE\n"), 2, "tier 'HUGE'"),
        (HEADER + GOOD.rstrip("\n") + ",extra\n", 2, "fields"),
        (HEADER, None, "no bars"),
    ],
)
def test_format_errors_name_the_line(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    path = write(tmp_path, text)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    with pytest.raises(ReplayFormatError, match=message) as info:
        ReplayMarket(path, ManualClock(SESSION.open), SESSION)
    assert str(info.value).startswith(where)


@pytest.mark.anyio
async def test_poller_refuses_fewer_bars_than_the_longest_window(
    full_day: tuple[SimulatedMarket, Path],
) -> None:
    _, path = full_day
    replay = ReplayMarket(path, ManualClock(at_minute(100)), SESSION)
    with pytest.raises(ValueError, match="n_bars"):
        await poll_candidates(replay, ScanParams(long_ma_bars=20, breakout_bars=30), 29)
    params = ScanParams(long_ma_bars=20, breakout_bars=30, max_candidates=3)
    ranked = await poll_candidates(replay, params, 30)
    assert ranked == rank_candidates(replay.snapshot_at(at_minute(100), 30), params)
    assert len(ranked) == 3

"""Stops that react to every trade: the simulator finds the first print through a level exactly,
the paper broker and the KIS gateway's tick stream wake a holder on it, the default strategy's
levels are the prices at which its sell rules fire, and the volatility measure."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import anyio
import pytest
import redis.asyncio as aioredis
from trading_rig import SESSION, START

from broker.kis.fanout import TradeWriter, decode_trade
from broker.kis.feed import GatewayMarketData
from broker.kis.keys import KisKeys
from broker.kis.notices import Trade
from broker.paper import PaperBroker
from broker.port import PriceWatch
from market.clock import KST, ManualClock
from market.sim import SimulatedMarket
from market.types import range_ratio
from strategy.signals import HeldPosition, SignalParams, evaluate_sell_signal
from strategy.triggers import sell_levels

MS = timedelta(milliseconds=1)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(7, SESSION, 40)


def _touches(m: SimulatedMarket, sym: str, lo: Decimal | None, hi: Decimal | None, a, b) -> bool:
    low, high = Decimal("Infinity"), Decimal("-Infinity")
    t = a
    while t < b:  # traded_range works minute by minute
        end = min(SESSION.open + timedelta(minutes=m.minute_of(t)[0] + 1), b)
        lo_t, hi_t = m.traded_range(sym, t, end)
        low, high = min(low, lo_t), max(high, hi_t)
        t = end
    return (lo is not None and low <= lo) or (hi is not None and high >= hi)


def test_first_touch_is_the_first_print_through_a_level(market: SimulatedMarket) -> None:
    checked = 0
    for sym in market.symbols[:20]:
        start = START
        price = market.quote(sym, start).price
        band = price / 200  # +-0.5%
        below, above = price - band, price + band
        end = start + timedelta(minutes=30)
        hit = market.first_touch(sym, below, above, start, end)
        if hit is None:
            assert not _touches(market, sym, below, above, start, end)
            continue
        checked += 1
        assert start < hit <= end
        assert _touches(market, sym, below, above, start, hit), "touched by the instant returned"
        assert not _touches(market, sym, below, above, start, hit - 2 * MS), "and not before"
    assert checked >= 5, "most names move 0.5% within 30 minutes"


def test_first_touch_at_once_when_already_through(market: SimulatedMarket) -> None:
    sym = market.symbols[0]
    price = market.quote(sym, START).price
    assert market.first_touch(sym, price, None, START, START + timedelta(minutes=5)) == START
    assert market.first_touch(sym, None, price, START, START + timedelta(minutes=5)) == START


def test_first_touch_only_in_continuous_trading(market: SimulatedMarket) -> None:
    sym = market.symbols[0]
    after = SESSION.continuous_close + timedelta(seconds=1)
    assert market.first_touch(sym, Decimal(10**9), None, after, SESSION.close) is None


@pytest.mark.anyio
async def test_paper_wait_price_sleeps_to_the_touch(market: SimulatedMarket) -> None:
    clock = ManualClock(START)
    broker = PaperBroker(market, clock)
    assert isinstance(broker, PriceWatch)
    sym = market.symbols[1]
    price = market.quote(sym, START).price
    level = price - 2 * (price / 100)
    want = market.first_touch(sym, level, None, START, START + timedelta(hours=2))
    assert want is not None
    assert await broker.wait_price(sym, level, None, 7_200) is True
    assert clock.now() == want
    assert market.quote(sym, clock.now()).price <= level + price / 100  # at the print, on the grid
    # nothing to reach within 10 s: a plain sleep of 10 s
    clock.set(START)
    assert await broker.wait_price(sym, Decimal(1), Decimal(10**9), 10) is False
    assert clock.now() == START + timedelta(seconds=10)


def test_levels_fire_exactly_the_rules() -> None:
    params = SignalParams(
        stop_loss_pct=Decimal("1.5"),
        take_profit_pct=Decimal("3.0"),
        trend_break_pct=Decimal("0.5"),
        trend_min_hold=timedelta(minutes=5),
    )
    opened = START
    held = HeldPosition("005930", 10, Decimal(10_000), opened)
    now = opened + timedelta(minutes=10)

    def quote_at(price: int, short_ma: str | None):
        from market.types import Quote, Tier

        p = Decimal(price)
        return Quote("005930", now, p, p, p + 10, 1, 1, 1, p, p, p, p, p, p,
                     Decimal(13_000), Decimal(7_000), Tier.MID,
                     None if short_ma is None else Decimal(short_ma))  # fmt: skip

    for ma in (None, "9_900.40", "9_952.00", "10_200.00"):
        q = quote_at(10_000, ma)
        lv = sell_levels(held, q, now, params)
        assert lv.below is not None
        assert lv.above is not None
        # at the level: a rule fires; one won inside: none of the price rules does
        assert evaluate_sell_signal(held, quote_at(int(lv.below), ma), now, params, now +
                                    timedelta(hours=1)) is not None  # fmt: skip
        assert evaluate_sell_signal(held, quote_at(int(lv.below) + 1, ma), now, params, now +
                                    timedelta(hours=1)) is None  # fmt: skip
        up = int(lv.above)
        assert evaluate_sell_signal(held, quote_at(up, ma), now, params,
                                    now + timedelta(hours=1)) is not None  # fmt: skip
    # before the trend break's minimum hold only the stop is a level below
    early = sell_levels(held, quote_at(10_000, "10_200.00"), opened, params)
    assert early.below == Decimal(10_000) * (1 - Decimal("1.5") / 100)


def test_range_ratio() -> None:
    assert range_ratio([]) is None
    assert range_ratio([5.0]) is None
    assert range_ratio([0.0, 0.0, 3.0]) is None  # a flat history has no scale
    assert range_ratio([10.0, 10.0, 30.0]) == 3.0
    assert range_ratio([float("nan"), 10.0, 5.0]) == 0.5


def test_sim_quotes_carry_the_range_ratio(market: SimulatedMarket) -> None:
    sym = market.symbols[2]
    assert market.quote(sym, SESSION.open).range_ratio is None
    q = market.quote(sym, START)
    i = market.index(sym)
    n = market.completed_bars(START)
    ranges = market._p.high[i, :n] - market._p.low[i, :n]
    assert q.range_ratio == range_ratio(ranges)


# ----- the KIS gateway's tick stream (real Redis) ----------------------------------------------


def _trade(symbol: str, price: int) -> Trade:
    p = Decimal(price)
    return Trade(symbol, "20260310", "100000", p, 1_000, p * 1_000, p, p, p + 10, p, 5, 5)


@pytest.mark.anyio
async def test_gateway_wait_price_wakes_on_the_trade_through_a_level(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    clock = ManualClock(START.astimezone(KST))
    keys = KisKeys(prefix, "real", "PSappkey")
    writer = TradeWriter(redis_client, keys, clock)
    reader = GatewayMarketData(redis_client, keys, clock)
    assert isinstance(reader, PriceWatch)
    sym = "005930"
    await writer(_trade(sym, 10_000))
    woke: list[bool] = []
    waiting = anyio.Event()

    async def holder() -> None:
        waiting.set()
        woke.append(await reader.wait_price(sym, Decimal(9_850), Decimal(10_300), 60))

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await waiting.wait()
        # trades inside the band do not wake it; the one through the stop does
        for price in (9_990, 9_900, 10_200, 9_860):
            await writer(_trade(sym, price))
        assert not woke
        await writer(_trade(sym, 9_850))
    assert woke == [True]
    latest = await redis_client.xrevrange(keys.md_ticks(sym), count=1)
    assert decode_trade(latest[0][1][b"trade"]).trade.price == Decimal(9_850)
    # the latest trade already through a level counts at once; none: a timeout
    with anyio.fail_after(5):
        assert await reader.wait_price(sym, Decimal(9_900), None, 60) is True
    assert await reader.wait_price(sym, Decimal(9_000), Decimal(11_000), 0.2) is False
    assert await reader.wait_price("000660", Decimal(1), None, 0.2) is False  # not streamed

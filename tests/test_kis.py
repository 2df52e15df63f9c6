"""KisBroker against the fake KIS server (tests/fake_kis.py) on loopback, with real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from fake_kis import ACCOUNT, APP_KEY, APP_SECRET, FakeKis, bar_close, serve

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown, OrderRejected, RateLimited
from broker.kis import KisBroker, KisClient, KisConfig, wire
from broker.port import OrderRequest, OrderType, Side
from market.clock import KST, ManualClock
from market.types import Board, Tier

pytestmark = pytest.mark.anyio

OPEN = datetime(2026, 3, 10, 10, 0, 0, tzinfo=KST)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(OPEN)


@pytest.fixture
def fake(clock: ManualClock) -> FakeKis:
    return FakeKis(clock=clock.now)


@pytest.fixture
def url(fake: FakeKis) -> Iterator[str]:
    with serve(fake) as base:
        yield base


class Brokers:
    """Builds KisBroker instances that behave like separate processes (own HTTP pool, own
    in-memory token and order-number memory) sharing one Redis prefix."""

    def __init__(self, url: str, redis: aioredis.Redis, prefix: str, clock: ManualClock) -> None:
        self.url, self.redis, self.prefix, self.clock = url, redis, prefix, clock
        self.stack = AsyncExitStack()

    async def make(self, universe: list[str] | None = None, **config: Any) -> KisBroker:
        options: dict[str, Any] = {"domain": "real", "rate_per_s": 1000.0, "timeout_s": 1.0}
        options.update(config)
        cfg = KisConfig(APP_KEY, APP_SECRET, ACCOUNT, base_url=self.url, **options)
        client = KisClient(cfg, self.redis, self.prefix)
        self.stack.push_async_callback(client.aclose)
        return KisBroker(client, self.clock, universe=universe, cancel_poll_s=0.01)


@pytest.fixture
async def brokers(
    url: str, redis_client: aioredis.Redis, prefix: str, clock: ManualClock
) -> AsyncIterator[Brokers]:
    b = Brokers(url, redis_client, prefix, clock)
    async with b.stack:
        yield b


def market(symbol: str, side: Side, qty: int) -> OrderRequest:
    return OrderRequest(symbol, side, qty, OrderType.MARKET)


def limit(symbol: str, side: Side, qty: int, price: int) -> OrderRequest:
    return OrderRequest(symbol, side, qty, OrderType.LIMIT, Decimal(price))


async def test_one_token_for_the_fleet(brokers: Brokers, fake: FakeKis) -> None:
    a, b = await brokers.make(), await brokers.make()
    async with anyio.create_task_group() as tg:
        for broker in (a, b, a, b):
            tg.start_soon(broker.quote, "005930")
    assert fake.issued == 1
    assert len(fake.requests) >= 4 * 3  # price, orderbook, minute bars (+ description)


async def test_expired_token_is_refreshed_once(brokers: Brokers, fake: FakeKis) -> None:
    fake.token_interval_s = 0.3
    a = await brokers.make(token_issue_interval_s=0.35)
    b = await brokers.make(token_issue_interval_s=0.35)
    await a.quote("005930", 0)
    fake.expire_tokens()
    await anyio.sleep(0.4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.quote, "005930", 0)
        tg.start_soon(b.quote, "000660", 0)
    assert fake.issued == 2


async def test_shared_rate_limit_keeps_kis_from_refusing(brokers: Brokers, fake: FakeKis) -> None:
    fake.rate_per_s = 40
    fleet = [await brokers.make(rate_per_s=40.0) for _ in range(4)]
    done = 0

    async def read(broker: KisBroker) -> None:
        nonlocal done
        for _ in range(10):
            await broker.quote("005930", 0)  # two requests
            done += 1

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for broker in fleet:
            tg.start_soon(read, broker)
    assert done == 40
    assert fake.rate_limited == 0
    assert anyio.current_time() - started >= 1.0  # 80 requests at 40/s: paced, not bursted


async def price(broker: KisBroker, symbol: str) -> str:
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": symbol}
    reply = await broker.client.get(wire.PRICE, wire.TR_PRICE, params)
    return str(reply.body["output"]["stck_prpr"])


async def test_egw00201_is_retried(brokers: Brokers, fake: FakeKis) -> None:
    fake.rate_per_s = 2
    fleet = [await brokers.make(backoff_s=0.05, rate_retries=8) for _ in range(4)]
    prices: list[str] = []

    async def read(broker: KisBroker) -> None:
        prices.append(await price(broker, "005930"))

    async with anyio.create_task_group() as tg:
        for broker in fleet:
            tg.start_soon(read, broker)
    assert fake.rate_limited > 0  # KIS did refuse some, and every read still arrived
    assert prices == ["70000"] * 4
    assert len(fake.requests) == 4


async def test_egw00201_gives_up_with_rate_limited(brokers: Brokers, fake: FakeKis) -> None:
    fake.rate_per_s = 1
    broker = await brokers.make(backoff_s=0.01, rate_retries=2)
    await price(broker, "005930")
    with pytest.raises(RateLimited):
        await price(broker, "005930")
    assert fake.rate_limited == 3  # the first answer and two retries


async def test_dropped_order_post_is_outcome_unknown_and_found(
    brokers: Brokers, fake: FakeKis, clock: ManualClock
) -> None:
    broker = await brokers.make()
    fake.drop_next_order = True
    since = clock.now()
    with pytest.raises(OrderOutcomeUnknown):
        await broker.submit_order(market("005930", Side.BUY, 7))
    found = await broker.find_orders("005930", Side.BUY, 7, since)
    assert [s.broker_order_id for s in found] == [fake.orders[0].odno]
    assert len(fake.placed()) == 1  # looked up, not resent
    assert len([r for r in fake.requests if r[1].endswith("order-cash")]) == 1


async def test_slow_order_reply_is_outcome_unknown(brokers: Brokers, fake: FakeKis) -> None:
    broker = await brokers.make(timeout_s=0.3)
    fake.delay_next_s = 0.6
    with pytest.raises(OrderOutcomeUnknown):
        await broker.submit_order(limit("005930", Side.BUY, 3, 69_000))
    await anyio.sleep(0.4)  # let the server finish the slow request
    assert len(fake.placed()) == 1


async def test_reads_retry_transient_failures(brokers: Brokers, fake: FakeKis) -> None:
    broker = await brokers.make(backoff_s=0.01, read_retries=3, timeout_s=0.3)
    fake.fail_next_reads = 2
    quote = await broker.quote("005930", 0)
    assert quote.price == Decimal(70_000)
    fake.delay_next_s = 0.5  # one read times out, the retry answers
    assert (await broker.quote("000660", 0)).price == Decimal(180_000)
    fake.fail_next_reads = 10
    with pytest.raises(BrokerUnavailable):
        await broker.quote("005930", 0)


async def test_unreachable_server_places_nothing(
    redis_client: aioredis.Redis, prefix: str, clock: ManualClock
) -> None:
    cfg = KisConfig(APP_KEY, APP_SECRET, ACCOUNT, base_url="http://127.0.0.1:9", timeout_s=0.5)
    client = KisClient(cfg, redis_client, prefix)
    await redis_client.set(f"{prefix}:kis:token", "tok1", px=60_000)  # so the order POST is tried
    try:
        with pytest.raises(BrokerUnavailable, match="nothing was sent"):
            await KisBroker(client, clock).submit_order(market("005930", Side.BUY, 1))
    finally:
        await client.aclose()


async def test_partial_fills_are_cumulative(brokers: Brokers, fake: FakeKis) -> None:
    broker = await brokers.make()
    fake.fill_per_poll["035720"] = 3
    ack = await broker.submit_order(limit("035720", Side.BUY, 10, 41_050))
    seen = [(await broker.order_status(ack.broker_order_id)).filled_qty for _ in range(6)]
    assert seen == [0, 3, 6, 9, 10, 10]
    final = await broker.order_status(ack.broker_order_id)
    assert (final.filled_amount, final.remaining_qty, final.done) == (Decimal(410_000), 0, True)
    assert final.avg_price == Decimal(41_000)  # filled at the ask, under the limit


async def test_cancel_from_another_process(
    brokers: Brokers, fake: FakeKis, clock: ManualClock
) -> None:
    a, b = await brokers.make(), await brokers.make()
    fake.fill_per_poll["000660"] = 4
    ack = await a.submit_order(limit("000660", Side.SELL, 10, 179_900))
    await a.order_status(ack.broker_order_id)
    clock.set(OPEN + timedelta(seconds=30))
    partly = await a.order_status(ack.broker_order_id)
    assert partly.filled_qty == 4
    fake.stocks["000660"].bid = 179_800  # the market moves away from the limit
    # b never saw the submit reply: the org number comes from the inquiry row
    status = await b.cancel_order(ack.broker_order_id)
    assert status.canceled
    assert (status.filled_qty, status.remaining_qty) == (4, 0)
    assert status.updated_at == OPEN + timedelta(seconds=30)
    cancels = [r for r in fake.requests if r[1].endswith("order-rvsecncl")]
    assert len(cancels) == 1
    assert cancels[0][2]["ORGN_ODNO"] == ack.broker_order_id
    # the cancel record is not an order of ours
    assert [s.broker_order_id for s in await a.find_orders("000660", Side.SELL, 10, OPEN)] == [
        ack.broker_order_id
    ]
    assert await b.cancel_order(ack.broker_order_id) == status  # done: no second cancel
    assert len([r for r in fake.requests if r[1].endswith("order-rvsecncl")]) == 1


async def test_reject_reason_is_surfaced(brokers: Brokers, fake: FakeKis) -> None:
    broker = await brokers.make()
    with pytest.raises(OrderRejected, match="FK000007") as info:
        await broker.submit_order(limit("005930", Side.BUY, 1, 99_000))  # above the upper limit
    assert "상하한가" in info.value.reason
    with pytest.raises(OrderRejected, match="unknown symbol"):
        await broker.submit_order(market("999999", Side.BUY, 1))
    assert fake.placed() == []


async def test_daily_ccld_paging(brokers: Brokers, fake: FakeKis, clock: ManualClock) -> None:
    fake.page_size = 3
    broker = await brokers.make()
    acks = []
    for n in range(8):
        clock.set(OPEN + timedelta(seconds=n))
        acks.append(await broker.submit_order(limit("005930", Side.BUY, 2, 60_000)))
    await broker.submit_order(limit("005930", Side.BUY, 5, 60_000))
    found = await broker.find_orders("005930", Side.BUY, 2, OPEN)
    assert [s.broker_order_id for s in found] == [a.broker_order_id for a in acks]
    assert [s.ordered_at for s in found] == [OPEN + timedelta(seconds=n) for n in range(8)]
    pages = [r for r in fake.requests if r[1].endswith("inquire-daily-ccld")]
    assert len(pages) == 3  # 9 rows, 3 per page
    assert [p[2]["CTX_AREA_NK100"] for p in pages] == ["", "3", "6"]
    later = await broker.find_orders(
        "005930", Side.BUY, 2, OPEN + timedelta(seconds=6, microseconds=5)
    )
    assert [s.broker_order_id for s in later] == [a.broker_order_id for a in acks[6:]]


async def test_tr_ids_follow_the_domain(brokers: Brokers, fake: FakeKis) -> None:
    fake.domain = "mock"
    broker = await brokers.make(domain="mock", universe=None)
    ack = await broker.submit_order(limit("005930", Side.BUY, 1, 69_000))
    assert (await broker.order_status(ack.broker_order_id)).qty == 1
    real = await brokers.make(domain="real")
    with pytest.raises(OrderRejected, match="FK000002"):  # TTTC ids are refused on mock
        await real.submit_order(limit("005930", Side.BUY, 1, 69_000))


async def test_instruments_and_snapshot(
    brokers: Brokers, fake: FakeKis, clock: ManualClock
) -> None:
    broker = await brokers.make()
    instruments = {i.symbol: i for i in await broker.instruments()}
    assert list(instruments) == ["005930", "000660", "035720", "091990", "123456"]
    samsung = instruments["005930"]
    assert (samsung.board, samsung.kospi200, samsung.tier) == (Board.KOSPI, True, Tier.HIGH)
    assert (samsung.prev_close, samsung.prev_high, samsung.prev_low) == (69_500, 70_500, 68_500)
    assert instruments["091990"].board is Board.KOSDAQ
    assert instruments["091990"].tier is Tier.LOW
    assert instruments["123456"].tier is Tier.THIN
    clock.set(OPEN + timedelta(minutes=45, seconds=20))
    snap = await broker.snapshot(40)
    assert snap.closes.shape == (5, 40)
    assert snap.symbols == tuple(instruments)
    assert snap.price[0] == 70_000
    assert (snap.bid[0], snap.ask[0]) == (69_900, 70_000)
    # the last completed bar is 10:44 (10:45 is still forming)
    stock = fake.stocks["005930"]
    expected = [bar_close(stock, OPEN + timedelta(minutes=m)) for m in range(5, 45)]
    assert list(snap.closes[0]) == expected
    again = await broker.snapshot(40)  # reused within the TTL
    assert again is snap
    quote = await broker.quote("005930", 5)
    assert quote.short_ma == Decimal(sum(expected[-5:])) / 5
    assert (quote.upper_limit, quote.lower_limit) == (90_300, 48_650)


async def test_built_from_settings(
    url: str, redis_client: aioredis.Redis, prefix: str, clock: ManualClock, fake: FakeKis
) -> None:
    from worker.app import kis_broker
    from worker.settings import ConfigError, load_settings

    settings = load_settings(
        broker="kis",
        kis_app_key=APP_KEY,
        kis_app_secret=APP_SECRET,
        kis_account=ACCOUNT,
        kis_domain="mock",
        kis_base_url=url,
        kis_rate_per_s=500,
        fleet_prefix=prefix,
    )
    fake.domain = "mock"
    broker = kis_broker(settings, redis_client, clock)
    try:
        assert broker.client.config.rate == 500
        # the mock domain has no volume ranking: the default universe is used
        assert broker.universe is not None
        assert "005930" in broker.universe
        ack = await broker.submit_order(limit("005930", Side.BUY, 1, 69_000))
        assert (await broker.order_status(ack.broker_order_id)).qty == 1
    finally:
        await broker.client.aclose()
    with pytest.raises(ConfigError, match="KIS_ACCOUNT"):
        kis_broker(settings.model_copy(update={"kis_account": "123"}), redis_client, clock)

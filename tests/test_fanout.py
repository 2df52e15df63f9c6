"""The gateway's fan-out, through the real adapter and a real gateway against the project's
exchange on loopback: the market-data publisher fills Redis and `GatewayMarketData` serves what
the exchange serves; stale data is an error; held symbols' real-time trades reach their quotes;
each fill notice reaches the stream of the worker holding the symbol; a BROKER=kis worker sends
no quotation request and opens no WebSocket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import anyio
import numpy as np
import pytest
import redis.asyncio as aioredis
from kis_rig import ACCOUNT, APP_KEY, HTS_ID, SESSION, START, KisVenue, Recorder, kis_venue
from trading_rig import Rig as TradingRig
from trading_rig import running

from broker.errors import BrokerUnavailable
from broker.kis import KisBroker, KisClient
from broker.kis.client import GatewayRoute
from broker.kis.fanout import (
    Holders,
    MarketDataPublisher,
    decode_trade,
    realtime,
    requests_per_symbol,
)
from broker.kis.feed import GatewayFills, GatewayMarketData, HintedBroker, MarketDataStale
from broker.kis.gateway import Gateway, GatewayContext, Service
from broker.kis.keys import KisKeys
from broker.kis.market import RANGE_BARS
from broker.paper import WALK_LEVELS
from broker.port import OrderRequest, OrderStatus, OrderType, Side
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from ledger.orders import OrderState
from ledger.records import OrderRecord
from ledger.repository import Ledger
from market.clock import ManualClock
from market.ticks import step
from market.types import Snapshot, range_ratio
from trading.orders import Limits, Placement
from trading.tenure import Tenure

pytestmark = pytest.mark.anyio

N_BARS = 60
QUOTATIONS = ("FHKST01010100", "FHKST01010200", "FHKST03010200", "FHKST03010100", "FHPST01710000")


@dataclass
class Rig:
    venue: KisVenue
    gateway: Gateway
    keys: KisKeys
    held: dict[str, str]  # symbol -> worker id: the lock holders the services see

    @property
    def ctx(self) -> GatewayContext:
        return self.gateway.context()

    def holders_of(self, ctx: GatewayContext) -> Holders:
        async def holders() -> Mapping[str, str]:
            return dict(self.held)

        return holders

    def publisher(self, universe: list[str] | None, **options: Any) -> MarketDataPublisher:
        client = self.ctx.client("market-data")
        self.venue.stack.push_async_callback(client.aclose)
        return MarketDataPublisher(client.get, self.venue.redis, self.keys, self.venue.clock,
                                   universe=universe, n_bars=N_BARS,
                                   holders=self.holders_of(self.ctx), **options)  # fmt: skip

    def reader(self, **options: Any) -> GatewayMarketData:
        return GatewayMarketData(self.venue.redis, self.keys, self.venue.clock, **options)

    async def worker(self, name: str) -> KisBroker:
        """A BROKER=kis worker's broker: no secret, every request through the gateway."""
        venue = self.venue
        config = replace(venue.config(), app_secret="")
        route = GatewayRoute(venue.redis, self.keys, name)
        client = KisClient(config, venue.redis, venue.prefix, clock=venue.clock,
                           transport=Recorder(), route=route)  # fmt: skip
        venue.stack.push_async_callback(client.aclose)
        return KisBroker(client, venue.clock)

    def quotations(self) -> int:
        """Quotation requests the exchange received for the app key, all of them."""
        return sum(self.venue.requests(tr) for tr in QUOTATIONS)


@asynccontextmanager
async def fanout_rig(
    redis: aioredis.Redis,
    prefix: str,
    domain: str,
    *,
    services: Callable[[Rig], list[Service]] = lambda rig: [],
    **exchange: Any,
) -> AsyncIterator[Rig]:
    """An exchange and one active gateway in front of it, running `services`."""
    async with kis_venue(redis, prefix, domain, **exchange) as venue:
        keys = KisKeys(prefix, domain, APP_KEY)
        config = venue.config(rate_per_s=1000.0, wait_s=30.0)
        held: dict[str, str] = {}
        rig_services: list[Service] = []
        gw = Gateway(config, redis, prefix, clock=venue.clock, gateway_id="gw-fanout",
                     services=rig_services)  # fmt: skip
        rig = Rig(venue, gw, keys, held)
        gw.services = tuple(services(rig))
        async with anyio.create_task_group() as tg:
            await tg.start(gw.run)
            with anyio.fail_after(10):
                while not gw.active:
                    await anyio.sleep(0.01)
            yield rig
            tg.cancel_scope.cancel()


def assert_same_snapshot(got: Snapshot, want: Snapshot) -> None:
    assert got.symbols == want.symbols
    assert got.trading_day == want.trading_day
    for f in fields(Snapshot):
        if f.name in ("at", "trading_day", "symbols", "halted"):
            continue
        np.testing.assert_array_equal(getattr(got, f.name), getattr(want, f.name), f.name)


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    with anyio.fail_after(timeout):
        while not (found := await probe()):
            await anyio.sleep(0.02)
    return found


@pytest.mark.parametrize("domain", ["real", "mock"])
async def test_published_snapshot_equals_what_the_exchange_serves(
    redis_client: aioredis.Redis, prefix: str, domain: str
) -> None:
    async with fanout_rig(redis_client, prefix, domain) as rig:
        universe = rig.venue.symbols[:6]
        publisher = rig.publisher(universe)
        direct = await rig.venue.broker(universe=universe)  # KIS quotations, asked directly
        reader = rig.reader()
        for step in range(2):
            first = step == 0
            asked = rig.quotations()
            cycle = await publisher.cycle()
            # the documented cost: 5 requests a symbol, then 3 (one bar page joins the known bars),
            # plus 2 to describe each symbol once a day
            per_symbol = requests_per_symbol(N_BARS, first) + (2 if first else 0)
            assert cycle.published == cycle.symbols == 6
            assert cycle.requests == rig.quotations() - asked == 6 * per_symbol
            direct.snapshot_ttl_s = 0.0
            assert list(await reader.instruments()) == list(await direct.instruments())
            assert_same_snapshot(await reader.snapshot(N_BARS), await direct.snapshot(N_BARS))
            assert_same_snapshot(await reader.snapshot(20), await direct.snapshot(20))
            for symbol in universe[:2]:
                got, want = await reader.quote(symbol, 5), await direct.quote(symbol, 5)
                assert replace(got, at=want.at) == want
            await rig.venue.advance(180)  # three more bars, new prices


async def test_kis_quotes_measure_the_last_minutes_range_against_the_minutes_before(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    """`Quote.range_ratio` on KIS, read directly or from the gateway: the last completed
    minute's high - low (KIS's bars) over the mean of the RANGE_BARS - 1 minutes before it,
    as the simulated market traded them."""
    async with fanout_rig(redis_client, prefix, "real") as rig:
        universe = rig.venue.symbols[:3]
        await rig.publisher(universe).cycle()
        direct = await rig.venue.broker(universe=universe)
        reader = rig.reader()
        market = rig.venue.running.venue.market
        now = rig.venue.clock.now()
        last = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
        for symbol in universe:
            spans = []
            for k in range(RANGE_BARS - 1, -1, -1):
                start = last - timedelta(minutes=k)
                low, high = market.traded_range(symbol, start, start + timedelta(minutes=1))
                spans.append(float(high - low))
            want = range_ratio(spans)
            assert want is not None
            assert (await direct.quote(symbol, 5)).range_ratio == want
            assert (await reader.quote(symbol, 5)).range_ratio == want


async def test_stale_data_is_an_error_never_used(redis_client: aioredis.Redis, prefix: str) -> None:
    async with fanout_rig(redis_client, prefix, "real") as rig:
        reader = rig.reader(max_age_s=30.0, universe_wait_s=0.2)
        with pytest.raises(MarketDataStale, match="no universe"):  # no gateway published yet
            await reader.instruments()
        universe = rig.venue.symbols[:3]
        publisher = rig.publisher(universe)
        await publisher.cycle()
        assert (await reader.snapshot(N_BARS)).symbols == tuple(universe)
        await rig.venue.advance(31)  # the gateway stopped publishing: 31 s without a cycle
        with pytest.raises(MarketDataStale, match="younger than 30 s"):
            await reader.snapshot(N_BARS)
        with pytest.raises(MarketDataStale, match="31 s old"):
            await reader.quote(universe[0])
        with pytest.raises(MarketDataStale, match="no market data"):
            await reader.quote(rig.venue.symbols[10])  # never published
        # one symbol refreshed: the snapshot holds it alone, the stale ones are left out
        assert await publisher.publish_symbol(universe[1])
        snap = await reader.snapshot(N_BARS)
        assert snap.symbols == (universe[1],)
        assert (await reader.quote(universe[1])).price > 0


async def test_held_symbols_trades_reach_their_quotes(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    def services(rig: Rig) -> list[Service]:
        return [partial(realtime, holders_of=rig.holders_of, held_poll_s=0.05)]

    async with fanout_rig(redis_client, prefix, "real", services=services) as rig:
        m = rig.venue.running.venue.market
        symbol = max(
            rig.venue.symbols[:20], key=lambda s: m.quote(s, rig.venue.clock.now(), 0).volume
        )
        await rig.publisher([symbol]).cycle()
        rig.held[symbol] = "w1"
        reader = rig.reader(max_age_s=3600.0)  # the clock runs on below; no cycle follows
        before = await reader.quote(symbol)

        async def traded() -> Any:
            await rig.venue.advance(30)
            raw = await redis_client.hget(rig.keys.md_trades, symbol)
            return raw is not None and decode_trade(raw).trade.volume > before.volume

        await eventually(traded)
        truth = m.quote(symbol, rig.venue.clock.now(), 0)  # the clock stands still from here

        async def caught_up() -> bool:  # the exchange pushed the trade of the current state
            raw = await redis_client.hget(rig.keys.md_trades, symbol)
            return raw is not None and decode_trade(raw).trade.volume == truth.volume

        await eventually(caught_up)
        quote = await reader.quote(symbol)
        assert quote.at > before.at  # the trade, newer than the REST row
        assert (quote.price, quote.volume, quote.traded_value) == (truth.price, truth.volume,
                                                                   truth.traded_value)  # fmt: skip
        assert (quote.bid, quote.ask) == (truth.bid, truth.ask)
        # one WebSocket session for the app key: the gateway's
        assert len(rig.venue.running.ws.bound) == 1
        # the symbol no longer held: unsubscribed
        rig.held.clear()
        session = next(iter(rig.venue.running.ws.bound.values()))

        async def unsubscribed() -> bool:
            return ("H0STCNT0", symbol) not in session.subs

        await eventually(unsubscribed)


async def test_a_fill_notice_reaches_the_stream_of_the_worker_holding_the_symbol(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    def services(rig: Rig) -> list[Service]:
        return [partial(realtime, holders_of=rig.holders_of, held_poll_s=0.05)]

    async with fanout_rig(redis_client, prefix, "mock", services=services) as rig:
        m, now = rig.venue.running.venue.market, rig.venue.clock.now()
        ours, other, nobodys = sorted(rig.venue.symbols, key=lambda s: -m.quote(s, now, 0).ask_qty)[
            :3
        ]
        rig.held.update({ours: "w1", other: "w2"})
        broker = await rig.worker("w1")
        fills = GatewayFills(redis_client, rig.keys)
        got: list[Any] = []

        async def collect() -> None:
            async for hint in fills.hints("w1"):
                got.append(hint)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await eventually(lambda: _true(len(rig.venue.running.ws.bound) == 1))
            session = next(iter(rig.venue.running.ws.bound.values()))
            await eventually(lambda: _true(any(t == "H0STCNI9" for t, _ in session.subs)))
            ack = await broker.submit_order(OrderRequest(ours, Side.BUY, 3, OrderType.MARKET))
            stray = await broker.submit_order(OrderRequest(nobodys, Side.BUY, 1, OrderType.MARKET))
            await eventually(lambda: _true(any(h.executed for h in got)))
            tg.cancel_scope.cancel()
        assert {h.broker_order_id for h in got} == {ack.broker_order_id}
        assert {h.symbol for h in got} == {ours}
        assert await redis_client.xlen(rig.keys.fills("w2")) == 0
        assert stray.broker_order_id not in {h.broker_order_id for h in got}


async def _true(value: bool) -> bool:
    return value


async def test_a_kis_worker_sends_no_quotation_request_and_opens_no_websocket(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    from worker.app import Plan, _venue
    from worker.settings import load_settings

    async with fanout_rig(redis_client, prefix, "mock") as rig:
        universe = rig.venue.symbols[:4]
        await rig.publisher(universe).cycle()
        settings = load_settings(
            broker="kis", kis_app_key=APP_KEY, kis_account=ACCOUNT, kis_domain="mock",
            kis_hts_id=HTS_ID, fleet_prefix=prefix, worker_id="w-footprint",
        )  # fmt: skip
        asked = rig.quotations()
        sessions = len(rig.venue.running.ws.sessions)
        async with AsyncExitStack() as stack:
            plan = Plan(SESSION, rig.venue.clock)
            keys = Keyspace(prefix)
            broker, market, instruments = await _venue(settings, redis_client, keys, plan, stack,
                                                        False)  # fmt: skip
            assert isinstance(broker, HintedBroker)
            assert isinstance(market, GatewayMarketData)
            assert [i.symbol for i in instruments] == universe
            snap = await market.snapshot(settings.n_bars)
            assert snap.symbols == tuple(universe)
            quote = await market.quote(universe[0], settings.short_ma_bars)
            lower = rig.venue.running.venue.market.limits(universe[0])[0]
            ack = await broker.submit_order(OrderRequest(universe[0], Side.BUY, 1,
                                                         OrderType.LIMIT, lower))  # fmt: skip
            assert (await broker.order_status(ack.broker_order_id)).qty == 1
            assert quote.price > 0
        assert rig.quotations() == asked  # every quotation the exchange saw was the gateway's
        assert len(rig.venue.running.ws.sessions) == sessions == 0


class PacedClock(ManualClock):
    """The exchange's manual clock, whose `sleep` takes real time: the tracker's poll interval
    is then a real interval, which a notice has to beat."""

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        self.t += timedelta(seconds=max(0.0, seconds))


async def test_a_fill_notice_makes_the_tracker_apply_the_fill_before_its_poll(
    ledger: Ledger, redis_client: aioredis.Redis, prefix: str
) -> None:
    poll_s = 60.0
    clock = PacedClock(START)
    locks = RedisSymbolLock(redis_client, Keyspace(prefix), "reader")

    def holders_of(ctx: GatewayContext) -> Holders:
        async def holders() -> Mapping[str, str]:
            return {i.symbol: i.worker_id for i in await locks.live_locks()}

        return holders

    def services(rig: Rig) -> list[Service]:
        return [partial(realtime, holders_of=holders_of, held_poll_s=0.05)]

    async with fanout_rig(redis_client, prefix, "real", services=services, clock=clock) as rig:
        venue = rig.venue
        m, now = venue.running.venue.market, clock.now()
        # a BUY twice the visible asks: part fills at once, the rest
        # over the next minutes of the exchange's clock
        symbol, qty = next(
            (s, q)
            for s, q, price, lower, upper in (
                (i.symbol, 2 * sum(n for _, n in m.book(i.symbol, now, WALK_LEVELS)[1]),
                 *(lambda q: (q.price, q.lower_limit, q.upper_limit))(m.quote(i.symbol, now, 0)))
                for i in m.instruments
            )
            if step(lower, 40) < price < step(upper, -40) and q * upper < 500_000_000
        )  # fmt: skip
        trading = TradingRig(ledger, redis_client, Keyspace(prefix), clock=clock)  # type: ignore[arg-type]
        hinted = HintedBroker(await rig.worker("A"), GatewayFills(redis_client, rig.keys))
        trading.broker = hinted  # type: ignore[assignment]
        a = trading.party("A")
        a.tracker.poll_s = poll_s
        a.placer.limits = Limits(Decimal(500_000_000), Decimal(50_000_000))
        noticed: list[tuple[str, int, float]] = []  # (odno, qty, when) of each fill notice
        venue.running.venue.listen(
            lambda n: (
                noticed.append((n.odno, n.qty, time.monotonic())) if n.kind == "fill" else None
            )
        )
        applied: list[tuple[int, float]] = []  # (cumulative filled, when) in the ledger
        apply = a.tracker.apply

        async def recording_apply(cid: str, status: OrderStatus) -> OrderRecord:
            record = await apply(cid, status)
            if not applied or applied[-1][0] != record.filled_qty:
                applied.append((record.filled_qty, time.monotonic()))
            return record

        a.tracker.apply = recording_apply  # type: ignore[method-assign]
        lease = await a.lock.acquire(symbol)
        assert lease is not None
        session = await eventually(lambda: _true(len(venue.running.ws.bound) == 1))
        session = next(iter(venue.running.ws.bound.values()))
        await eventually(lambda: _true(("H0STCNT0", symbol) in session.subs))

        async def market_moves() -> None:
            while True:
                await anyio.sleep(0.1)
                clock.set(clock.now() + timedelta(seconds=30))
                await venue.running.venue.sync()

        upper = m.quote(symbol, now, 0).upper_limit
        placement = Placement(symbol, Side.BUY, qty, OrderType.LIMIT, upper, lease.fence,
                              "test", upper)  # fmt: skip
        started = time.monotonic()
        async with running(a), Tenure.open(a.ctx, lease) as tenure, anyio.create_task_group() as tg:
            tg.start_soon(market_moves)
            with anyio.fail_after(poll_s / 2):  # the poll alone would take at least poll_s
                record = await tenure.place(placement, clock.now() + timedelta(hours=5))
            tg.cancel_scope.cancel()
        took = time.monotonic() - started
        assert record.status is OrderState.FILLED
        (row,) = venue.placed()
        assert (record.filled_qty, record.filled_amount) == (row.filled_qty, row.filled_amount)
        assert a.tracker.hinted_passes >= 1
        # notice to ledger: each fill notice's cumulative quantity, from the moment the exchange
        # emitted it to the moment the ledger held it
        latencies, cum = [], 0
        for _, n, when in noticed:
            cum += n
            first = next(at for filled, at in applied if filled >= cum)
            latencies.append(max(0.0, first - when))
        print(f"notice_to_ledger_ms max={1000 * max(latencies):.0f} "
              f"median={1000 * sorted(latencies)[len(latencies) // 2]:.0f} fills={len(noticed)} "
              f"order_poll_ms={1000 * poll_s:.0f} took_s={took:.1f}")  # fmt: skip
        assert len(noticed) >= 2  # filled in parts: the later ones reached the ledger by notice
        assert max(latencies) < poll_s / 4


async def test_a_gateway_taking_over_reuses_the_days_universe(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with fanout_rig(redis_client, prefix, "real") as rig:
        first = rig.publisher(None)  # no fixed universe: today's volume ranking, described
        await first.cycle()
        ranked = [i.symbol for i in await rig.reader().instruments()]
        assert len(ranked) == 30
        asked = rig.quotations()
        second = rig.publisher(None)  # the standby, active now: no ranking, no description
        cycle = await second.cycle()
        assert cycle.requests == rig.quotations() - asked == 30 * requests_per_symbol(N_BARS, True)
        assert [i.symbol for i in await rig.reader().instruments()] == ranked


async def test_no_universe_is_published_when_none_of_it_can_be_described(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with fanout_rig(redis_client, prefix, "mock") as rig:
        publisher = rig.publisher(["999990", "999991"])  # not listed at the exchange
        with pytest.raises(BrokerUnavailable, match="none of 2 symbols"):
            await publisher.cycle()
        assert await redis_client.get(rig.keys.md_universe) is None  # the service retries

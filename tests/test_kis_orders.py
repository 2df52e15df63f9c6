"""KisBroker's orders, through the real adapter against the project's KIS-compatible exchange
on loopback (tests/kis_rig.py), on both KIS domains: paging across many pages, partial fills,
late listing, ambiguous replies, cancels, cash and holdings refusals, and fill notices over
the WebSocket, decrypted.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal

import anyio
import pytest
import redis.asyncio as aioredis
from kis_rig import DAILY_CCLD, ORDER_CASH, KisVenue, kis_venue

from broker.errors import OrderOutcomeUnknown, OrderRejected, UnknownOrder
from broker.kis import FillNotice, KisBroker, KisNoticeFeed
from broker.kis.errors import KNOWN_REFUSALS
from broker.paper import WALK_LEVELS
from broker.port import BrokerOrderId, OrderRequest, OrderStatus, OrderType, Side
from exchange import errors as exchange_errors
from exchange.wire import KEY_WIDTH
from market.ticks import step
from market.types import Tier

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["real", "mock"])
async def venue(
    request: pytest.FixtureRequest, redis_client: aioredis.Redis, prefix: str
) -> AsyncIterator[KisVenue]:
    async with kis_venue(redis_client, prefix, request.param) as v:
        yield v


def market(symbol: str, side: Side, qty: int) -> OrderRequest:
    return OrderRequest(symbol, side, qty, OrderType.MARKET)


def resting(venue: KisVenue, symbol: str, qty: int) -> OrderRequest:
    """A BUY at the lower limit: accepted, and it rests."""
    lower = venue.running.venue.market.limits(symbol)[0]
    return OrderRequest(symbol, Side.BUY, qty, OrderType.LIMIT, lower)


def thin(venue: KisVenue) -> tuple[str, int]:
    """A thin symbol away from its limits, and a quantity (three times the visible asks) that a
    market BUY fills in parts over several minutes."""
    m, now = venue.running.venue.market, venue.clock.now()
    for inst in m.instruments:
        q = m.quote(inst.symbol, now, 0)
        if inst.tier == Tier.THIN and step(q.lower_limit, 40) < q.price < step(q.upper_limit, -40):
            _, asks = m.book(inst.symbol, now, WALK_LEVELS)
            return inst.symbol, 3 * sum(size for _, size in asks)
    raise AssertionError("no thin symbol away from its limits")


def deep(venue: KisVenue) -> str:
    """The symbol with the most shares offered at the best ask: a small market BUY fills."""
    m, now = venue.running.venue.market, venue.clock.now()
    return max(venue.symbols, key=lambda s: m.quote(s, now, 0).ask_qty)


async def until(broker: KisBroker, venue: KisVenue, odno: BrokerOrderId) -> list[OrderStatus]:
    """Statuses a minute apart until the order is done."""
    seen = [await broker.order_status(odno)]
    while not seen[-1].done and len(seen) < 60:
        await venue.advance(60)
        seen.append(await broker.order_status(odno))
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(("domain", "orders", "pages"), [("mock", 40, 3), ("real", 250, 3)])
async def test_daily_fills_paging_across_many_pages(
    redis_client: aioredis.Redis, prefix: str, domain: str, orders: int, pages: int
) -> None:
    async with kis_venue(redis_client, prefix, domain) as venue:
        broker = await venue.broker()
        symbol = deep(venue)
        t = venue.clock.now()
        acks = []
        for n in range(orders):
            venue.clock.set(t + timedelta(seconds=n))
            # filled at once: the exchange re-matches every working order on each request
            acks.append(await broker.submit_order(market(symbol, Side.BUY, 2)))
            if n % 10 == 0:  # a cancel row every so often: not an order, skipped
                await broker.submit_order(resting(venue, symbol, 3))
        await broker.cancel_order(
            (await broker.find_orders(symbol, Side.BUY, 3, t))[0].broker_order_id
        )
        recorder = venue.recorders[0]
        before = len(recorder.to(DAILY_CCLD))
        found = await broker.find_orders(symbol, Side.BUY, 2, t)
        assert [s.broker_order_id for s in found] == [a.broker_order_id for a in acks]
        assert [s.ordered_at for s in found] == [t + timedelta(seconds=n) for n in range(orders)]
        asked = recorder.to(DAILY_CCLD)[before:]
        assert len(asked) == pages
        assert [s.headers.get("tr_cont", "") for s in asked] == ["", *["N"] * (pages - 1)]
        assert [s.reply_headers["tr_cont"] for s in asked] == ["F", *["M"] * (pages - 2), "E"]
        for prev, nxt in itertools.pairwise(asked):
            for key in ("CTX_AREA_FK100", "CTX_AREA_NK100"):
                sent = nxt.params[key]
                assert sent == prev.reply[key.lower()]  # byte for byte, padding and all
                assert len(sent) == KEY_WIDTH
                assert sent != sent.rstrip()


async def test_partial_fills_are_cumulative_and_match_the_exchange(venue: KisVenue) -> None:
    broker = await venue.broker()
    symbol, qty = thin(venue)
    ack = await broker.submit_order(market(symbol, Side.BUY, qty))
    seen = await until(broker, venue, ack.broker_order_id)
    assert any(0 < s.filled_qty < qty for s in seen)  # really in parts
    for before, after in itertools.pairwise(seen):
        assert after.filled_qty >= before.filled_qty
        assert after.filled_amount >= before.filled_amount
        assert after.filled_qty + after.remaining_qty == qty
    final = seen[-1]
    (row,) = [o for o in venue.placed() if o.odno == ack.broker_order_id]
    assert final.filled_qty == row.filled_qty == qty
    assert final.filled_amount == row.filled_amount  # to the won
    assert final.avg_price == row.filled_amount / qty


async def test_a_late_listing_is_unknown_until_listed(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    async with kis_venue(redis_client, prefix, "mock", listing_lag_s=30.0) as venue:
        broker = await venue.broker()
        symbol = venue.symbols[0]
        t = venue.clock.now()
        ack = await broker.submit_order(resting(venue, symbol, 3))
        with pytest.raises(UnknownOrder):
            await broker.order_status(ack.broker_order_id)
        assert await broker.find_orders(symbol, Side.BUY, 3, t) == []
        await venue.advance(29)
        with pytest.raises(UnknownOrder):
            await broker.order_status(ack.broker_order_id)
        await venue.advance(2)
        status = await broker.order_status(ack.broker_order_id)
        assert (status.qty, status.remaining_qty, status.ordered_at) == (3, 3, ack.accepted_at)
        assert [s.broker_order_id for s in await broker.find_orders(symbol, Side.BUY, 3, t)] == [
            ack.broker_order_id
        ]


def _once(
    error: Callable[[], exchange_errors.ExchangeError],
) -> Callable[[], exchange_errors.ExchangeError | None]:
    """A fault draw that answers the next order with `error`, then never again."""
    fired = False

    def draw() -> exchange_errors.ExchangeError | None:
        nonlocal fired
        if fired:
            return None
        fired = True
        return error()

    return draw


@pytest.mark.parametrize("fault", ["routing_error", "processing_timeout", "reply_lost"])
async def test_an_ambiguous_reply_leaves_the_order_unknown_then_found(
    redis_client: aioredis.Redis, prefix: str, fault: str
) -> None:
    async with kis_venue(redis_client, prefix, "real", listing_lag_s=10.0) as venue:
        broker = await venue.broker()
        recorder = venue.recorders[0]
        symbol = venue.symbols[0]
        if fault == "reply_lost":  # the exchange took it; the reply never came
            recorder.lose_next_order_reply = True
        else:  # HTTP 500 EGW00203, or HTTP 200 rt_cd "1" with a code we do not list
            venue.running.venue.faults.draw = _once(getattr(exchange_errors, fault))  # type: ignore[method-assign]
        t = venue.clock.now()
        with pytest.raises(OrderOutcomeUnknown) as info:
            await broker.submit_order(market(symbol, Side.BUY, 7))
        assert not isinstance(info.value, OrderRejected)
        assert len(recorder.to(ORDER_CASH)) == 1  # never resent
        (placed,) = venue.placed()  # ... and it was placed
        if fault != "reply_lost":
            assert recorder.to(ORDER_CASH)[0].msg_cd not in KNOWN_REFUSALS
        assert await broker.find_orders(symbol, Side.BUY, 7, t) == []  # not listed yet: unknown
        await venue.advance(11)
        found = await broker.find_orders(symbol, Side.BUY, 7, t)
        assert [s.broker_order_id for s in found] == [placed.odno]
        assert len(recorder.to(ORDER_CASH)) == 1


async def test_cancel_from_another_process(venue: KisVenue) -> None:
    a, b = await venue.broker(), await venue.broker()
    symbol = venue.symbols[0]
    t = venue.clock.now()
    ack = await a.submit_order(resting(venue, symbol, 10))
    await venue.advance(30)
    # b never saw the submit reply: the org number comes from the inquiry row
    status = await b.cancel_order(ack.broker_order_id)
    assert status.canceled
    assert (status.filled_qty, status.remaining_qty, status.done) == (0, 0, True)
    cancels = venue.recorders[1].to("/uapi/domestic-stock/v1/trading/order-rvsecncl")
    assert len(cancels) == 1
    assert cancels[0].params["ORGN_ODNO"] == ack.broker_order_id
    assert cancels[0].headers["tr_id"] == venue.tr("TTTC0013U")
    # the cancel row is not an order of ours
    found = await a.find_orders(symbol, Side.BUY, 10, t)
    assert [s.broker_order_id for s in found] == [ack.broker_order_id]
    assert await b.cancel_order(ack.broker_order_id) == status  # done: no second cancel
    assert await a.cancel_order(ack.broker_order_id) == status
    assert len(venue.recorders[0].to(cancels[0].path) + venue.recorders[1].to(cancels[0].path)) == 1


async def test_cancel_after_a_partial_fill_keeps_the_fills(venue: KisVenue) -> None:
    broker = await venue.broker()
    symbol, qty = thin(venue)
    ack = await broker.submit_order(market(symbol, Side.BUY, qty))
    status = await broker.order_status(ack.broker_order_id)
    while status.filled_qty == 0:
        await venue.advance(60)
        status = await broker.order_status(ack.broker_order_id)
    assert status.filled_qty < qty
    canceled = await broker.cancel_order(ack.broker_order_id)
    assert canceled.canceled
    assert 0 < canceled.filled_qty < qty
    assert canceled.remaining_qty == 0
    (row,) = [o for o in venue.placed() if o.odno == ack.broker_order_id]
    assert (canceled.filled_qty, canceled.filled_amount) == (row.filled_qty, row.filled_amount)
    assert row.canceled_qty == qty - row.filled_qty


async def test_cash_and_holdings_refusals_are_final(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    for domain, cash_code, shares_code in (
        ("real", "APBK0952", "APBK0400"),
        ("mock", "40250000", "40270000"),
    ):
        async with kis_venue(redis_client, prefix, domain, cash=Decimal(1_000_000)) as venue:
            broker = await venue.broker()
            symbol = venue.symbols[0]
            t = venue.clock.now()
            price = venue.running.venue.market.quote(symbol, t, 0).price
            too_many = int(Decimal(1_000_000) / price) + 1
            with pytest.raises(OrderRejected, match=cash_code):
                await broker.submit_order(
                    OrderRequest(symbol, Side.BUY, too_many, OrderType.LIMIT, price)
                )
            with pytest.raises(OrderRejected, match=shares_code):
                await broker.submit_order(market(symbol, Side.SELL, 1))
            assert venue.placed() == []
            assert await broker.find_orders(symbol, Side.BUY, too_many, t) == []
            assert cash_code in KNOWN_REFUSALS
            assert shares_code in KNOWN_REFUSALS


async def test_tr_ids_follow_the_domain(venue: KisVenue) -> None:
    broker = await venue.broker()
    symbol = venue.symbols[0]
    ack = await broker.submit_order(resting(venue, symbol, 1))
    await broker.order_status(ack.broker_order_id)
    recorder = venue.recorders[0]
    assert recorder.to(ORDER_CASH)[0].headers["tr_id"] == venue.tr("TTTC0012U")
    assert recorder.to(DAILY_CCLD)[0].headers["tr_id"] == venue.tr("TTTC0081R")
    assert venue.tr("TTTC0012U") == ("VTTC0012U" if venue.domain == "mock" else "TTTC0012U")


async def _notices_of_one_fill(venue: KisVenue) -> None:
    broker = await venue.broker()
    feed = KisNoticeFeed(broker.client)
    ws = venue.running.ws
    pongs: list[str] = []
    request = ws._request

    async def spy(session: object, text: str) -> bool:  # what the exchange hears from us
        if "PINGPONG" in text:
            pongs.append(text)
        return await request(session, text)  # type: ignore[arg-type]

    ws._request = spy  # type: ignore[method-assign]
    notices: list[FillNotice] = []
    send, receive = anyio.create_memory_object_stream[FillNotice](100)

    async def collect() -> None:
        async with receive:
            async for notice in receive:
                notices.append(notice)

    symbol, _ = thin(venue)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run, send)
        tg.start_soon(collect)
        with anyio.fail_after(10):
            await feed.subscribed.wait()
        ack = await broker.submit_order(market(symbol, Side.BUY, 30))
        with anyio.fail_after(10):
            while sum(n.qty for n in notices if n.executed) < 30 or len(pongs) < 3:
                await venue.advance(60)
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    mine = [n for n in notices if n.broker_order_id == ack.broker_order_id]
    accepted = [n for n in mine if not n.executed]
    fills = [n for n in mine if n.executed]
    assert len(accepted) == 1
    assert (accepted[0].symbol, accepted[0].side, accepted[0].order_qty) == (symbol, Side.BUY, 30)
    (row,) = venue.placed()
    assert sum(n.qty for n in fills) == row.filled_qty == 30
    assert sum(n.qty * n.price for n in fills) == row.filled_amount
    assert feed.connections == 1  # one session throughout, every PINGPONG echoed back
    assert venue.running.ws.refused == 0


async def test_fill_notices_are_decrypted(redis_client: aioredis.Redis, prefix: str) -> None:
    for domain in ("real", "mock"):  # H0STCNI0 / H0STCNI9, AES-256-CBC, PINGPONG every 50 ms
        async with kis_venue(redis_client, prefix, domain, ping_interval_s=0.05) as venue:
            await _notices_of_one_fill(venue)


async def test_a_notice_makes_the_adapter_ask_the_inquiry_now(venue: KisVenue) -> None:
    broker = await venue.broker()
    heard: list[OrderStatus] = []

    async def listener(status: OrderStatus) -> None:
        heard.append(status)

    broker.on_status(listener)
    feed = KisNoticeFeed(broker.client)
    symbol = deep(venue)
    recorder = venue.recorders[0]
    async with anyio.create_task_group() as tg:
        tg.start_soon(broker.follow_notices, feed)
        with anyio.fail_after(10):
            await feed.subscribed.wait()
        ack = await broker.submit_order(market(symbol, Side.BUY, 5))
        asked = len(recorder.to(DAILY_CCLD))
        with anyio.fail_after(10):  # nobody polls: the notices alone make the adapter ask
            while not heard or heard[-1].filled_qty < 5:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert len(recorder.to(DAILY_CCLD)) > asked
    assert {s.broker_order_id for s in heard} == {ack.broker_order_id}
    assert heard[-1] == await broker.order_status(ack.broker_order_id)  # the inquiry's answer


async def test_a_second_notice_session_of_the_app_key_is_refused(venue: KisVenue) -> None:
    a, b = await venue.broker(), await venue.broker()
    first, second = KisNoticeFeed(a.client), KisNoticeFeed(b.client, reconnect_s=0.05)
    send1, receive1 = anyio.create_memory_object_stream[FillNotice](10)
    send2, receive2 = anyio.create_memory_object_stream[FillNotice](10)
    async with anyio.create_task_group() as tg, receive1, receive2:
        tg.start_soon(first.run, send1)
        with anyio.fail_after(10):
            await first.subscribed.wait()
        tg.start_soon(second.run, send2)
        with anyio.fail_after(10):
            while venue.running.ws.refused < 2:  # refused, and it tried again later
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert not second.subscribed.is_set()
    assert first.connections == 1

"""PaperBroker: matching, auction, expiry, rejects and fault injection (broker/paper.py)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import anyio
import pytest

from broker.errors import BrokerUnavailable, OrderOutcomeUnknown, OrderRejected, UnknownOrder
from broker.paper import WALK_LEVELS, PaperBroker
from broker.port import BrokerOrderId, OrderRequest, OrderType, Side
from market.calendar import Session
from market.clock import KST, ManualClock
from market.sim import SimulatedMarket
from market.ticks import step, tick_size
from market.types import Tier

pytestmark = pytest.mark.anyio

DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=21, session=SESSION, n_symbols=200)


def at_minute(m: float) -> datetime:
    return SESSION.open + timedelta(minutes=m)


def make(market: SimulatedMarket, at: datetime, **kw: int) -> tuple[PaperBroker, ManualClock]:
    clock = ManualClock(at)
    return PaperBroker(market, clock, **kw), clock


def pick(market: SimulatedMarket, tier: Tier, at: datetime, margin: int = 40) -> str:
    """A symbol of `tier` trading well away from its daily limits at `at`."""
    for inst in market.instruments:
        if inst.tier != tier:
            continue
        q = market.quote(inst.symbol, at)
        if step(q.lower_limit, margin) < q.price < step(q.upper_limit, -margin):
            return inst.symbol
    raise AssertionError(f"no {tier.name} symbol away from its limits")


def market_order(symbol: str, side: Side, qty: int) -> OrderRequest:
    return OrderRequest(symbol, side, qty, OrderType.MARKET)


def limit_order(symbol: str, side: Side, qty: int, price: Decimal) -> OrderRequest:
    return OrderRequest(symbol, side, qty, OrderType.LIMIT, price)


async def test_market_buy_walks_the_book(market: SimulatedMarket) -> None:
    t = at_minute(60.25)
    sym = pick(market, Tier.LOW, t)
    broker, _ = make(market, t)
    _, asks = market.book(sym, t, WALK_LEVELS)
    qty = asks[0][1] + asks[1][1] + 3  # two full levels and three shares of the third
    ack = await broker.submit_order(market_order(sym, Side.BUY, qty))
    assert ack.accepted_at == t
    fills = [(e.price, e.qty) for e in broker.executions(ack.broker_order_id)]
    assert fills == [asks[0], asks[1], (asks[2][0], 3)]
    status = await broker.order_status(ack.broker_order_id)
    assert (status.filled_qty, status.remaining_qty) == (qty, 0)
    assert status.filled_amount == sum(p * q for p, q in fills)
    assert status.done
    assert asks[0][0] < status.avg_price < asks[2][0]


async def test_market_order_larger_than_depth_fills_partially_then_later(
    market: SimulatedMarket,
) -> None:
    t = at_minute(30.5)
    sym = pick(market, Tier.THIN, t)
    broker, clock = make(market, t)
    _, asks = market.book(sym, t, WALK_LEVELS)
    depth = sum(q for _, q in asks)
    ack = await broker.submit_order(market_order(sym, Side.BUY, depth * 3))
    first = await broker.order_status(ack.broker_order_id)
    assert first.filled_qty == depth
    assert first.remaining_qty == depth * 2
    # Polling again inside the same minute finds no new depth.
    clock.set(t + timedelta(seconds=20))
    assert (await broker.order_status(ack.broker_order_id)).filled_qty == depth
    # Fresh depth each minute keeps filling the rest.
    clock.set(t + timedelta(minutes=1))
    second = await broker.order_status(ack.broker_order_id)
    assert second.filled_qty > depth
    clock.set(t + timedelta(minutes=10))
    final = await broker.order_status(ack.broker_order_id)
    assert final.filled_qty == depth * 3
    assert final.remaining_qty == 0
    minutes = {
        e.at.replace(second=0, microsecond=0) for e in broker.executions(ack.broker_order_id)
    }
    assert len(minutes) >= 3


@pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
async def test_slippage_grows_with_size(market: SimulatedMarket, side: Side) -> None:
    t = at_minute(120.4)
    sym = pick(market, Tier.MID, t)
    bids, asks = market.book(sym, t, WALK_LEVELS)
    top = (asks if side is Side.BUY else bids)[0][1]
    averages = []
    for qty in (1, top, top + 1, 2 * top, 4 * top, 8 * top):
        broker, _ = make(market, t)
        ack = await broker.submit_order(market_order(sym, side, qty))
        status = await broker.order_status(ack.broker_order_id)
        assert status.filled_qty > 0
        assert status.avg_price is not None
        averages.append(status.avg_price)
    if side is Side.SELL:
        averages = [-a for a in averages]
    assert averages == sorted(averages)
    assert averages[-1] > averages[0]


async def test_workers_sharing_a_broker_do_not_take_the_same_depth(
    market: SimulatedMarket,
) -> None:
    t = at_minute(90.1)
    sym = pick(market, Tier.LOW, t)
    broker, _ = make(market, t)
    _, asks = market.book(sym, t, WALK_LEVELS)
    a = await broker.submit_order(market_order(sym, Side.BUY, asks[0][1]))
    b = await broker.submit_order(market_order(sym, Side.BUY, asks[1][1]))
    assert [e.price for e in broker.executions(a.broker_order_id)] == [asks[0][0]]
    assert [e.price for e in broker.executions(b.broker_order_id)] == [asks[1][0]]


async def test_concurrent_submits_get_distinct_ids(market: SimulatedMarket) -> None:
    t = at_minute(45)
    broker, _ = make(market, t)
    symbols = market.symbols[:20]
    acks: list[BrokerOrderId] = []

    async def submit(sym: str) -> None:
        ack = await broker.submit_order(market_order(sym, Side.BUY, 1))
        acks.append(ack.broker_order_id)

    async with anyio.create_task_group() as tg:
        for sym in symbols:
            tg.start_soon(submit, sym)
    assert len(set(acks)) == 20
    assert all(len(a) == 10 and a.isdigit() for a in acks)
    assert sorted(acks) == [f"{n:010d}" for n in range(1, 21)]


async def test_limit_rests_then_fills_when_traded_through(market: SimulatedMarket) -> None:
    m0 = 100
    t = at_minute(m0 + 0.2)
    sym = pick(market, Tier.MID, t)
    i = market.index(sym)
    bids, _ = market.book(sym, t)
    lows = market._p.low[i, m0 + 1 : m0 + 60]
    limit = Decimal(int(lows.min()))
    assert limit < bids[0][0]  # not marketable now
    touch = m0 + 1 + int(lows.argmin())
    touched = [m for m in range(m0 + 1, touch + 1) if market._p.low[i, m] <= float(limit)]
    first_touch = touched[0]
    broker, clock = make(market, t)
    ack = await broker.submit_order(limit_order(sym, Side.BUY, 10, limit))
    assert (await broker.order_status(ack.broker_order_id)).filled_qty == 0
    clock.set(at_minute(first_touch))  # every minute before the touch: still resting
    resting = await broker.order_status(ack.broker_order_id)
    assert (resting.filled_qty, resting.remaining_qty) == (0, 10)
    clock.set(at_minute(first_touch + 1))
    filled = await broker.order_status(ack.broker_order_id)
    assert filled.filled_qty > 0
    executions = broker.executions(ack.broker_order_id)
    assert all(e.price <= limit for e in executions)
    assert all(e.at >= at_minute(first_touch) for e in executions)


async def test_marketable_limit_fills_up_to_its_price_and_rests(market: SimulatedMarket) -> None:
    t = at_minute(200.7)
    sym = pick(market, Tier.LOW, t)
    _, asks = market.book(sym, t, WALK_LEVELS)
    limit = asks[1][0]
    broker, _ = make(market, t)
    qty = asks[0][1] + asks[1][1] + asks[2][1]
    ack = await broker.submit_order(limit_order(sym, Side.BUY, qty, limit))
    status = await broker.order_status(ack.broker_order_id)
    assert status.filled_qty == asks[0][1] + asks[1][1]
    assert status.remaining_qty == asks[2][1]
    assert max(e.price for e in broker.executions(ack.broker_order_id)) == limit


async def test_cancel(market: SimulatedMarket) -> None:
    t = at_minute(10.5)
    sym = pick(market, Tier.HIGH, t)
    lower, _ = market.limits(sym)
    broker, clock = make(market, t)
    ack = await broker.submit_order(limit_order(sym, Side.BUY, 5, lower))
    clock.set(t + timedelta(seconds=30))
    status = await broker.cancel_order(ack.broker_order_id)
    assert status.canceled
    assert (status.filled_qty, status.remaining_qty) == (0, 0)
    assert status.updated_at == clock.now()
    clock.set(SESSION.close + timedelta(minutes=5))
    again = await broker.cancel_order(ack.broker_order_id)  # done already: not an error
    assert again == status


async def test_unknown_order_id(market: SimulatedMarket) -> None:
    broker, _ = make(market, at_minute(5))
    with pytest.raises(UnknownOrder):
        await broker.order_status(BrokerOrderId("0000000001"))
    with pytest.raises(UnknownOrder):
        await broker.cancel_order(BrokerOrderId("0000000001"))


async def test_rejects(market: SimulatedMarket) -> None:
    t = at_minute(50)
    sym = pick(market, Tier.MID, t)
    lower, upper = market.limits(sym)
    price = market.quote(sym, t).price
    off_grid = price + 1 if tick_size(price) > 1 else price + Decimal("0.5")
    broker, clock = make(market, t)
    cases = [
        (OrderRequest(sym, Side.BUY, 0, OrderType.MARKET), "qty must be positive"),
        (OrderRequest(sym, Side.BUY, -3, OrderType.MARKET), "qty must be positive"),
        (OrderRequest("999999", Side.BUY, 1, OrderType.MARKET), "unknown symbol"),
        (OrderRequest(sym, Side.BUY, 1, OrderType.LIMIT), "needs a price"),
        (limit_order(sym, Side.BUY, 1, off_grid), "not on the tick grid"),
        (limit_order(sym, Side.BUY, 1, step(upper, 1)), "outside the daily limits"),
        (limit_order(sym, Side.SELL, 1, step(lower, -1)), "outside the daily limits"),
        (OrderRequest(sym, Side.BUY, 1, OrderType.MARKET, price), "must not carry a price"),
    ]
    for request, reason in cases:
        with pytest.raises(OrderRejected, match=reason) as info:
            await broker.submit_order(request)
        assert reason in info.value.reason
    clock.set(SESSION.open - timedelta(seconds=1))
    with pytest.raises(OrderRejected, match="outside the session: market opens at 09:00"):
        await broker.submit_order(market_order(sym, Side.BUY, 1))
    clock.set(SESSION.close)
    with pytest.raises(OrderRejected, match="outside the session: market closed at 15:30"):
        await broker.submit_order(market_order(sym, Side.BUY, 1))
    assert await broker.find_orders(sym, Side.BUY, 1, SESSION.open - timedelta(hours=1)) == []


async def test_closing_auction_executes_at_one_price(market: SimulatedMarket) -> None:
    t = at_minute(370.5)
    sym = pick(market, Tier.THIN, t)
    auction = market.auction_price(sym)
    lower, upper = market.limits(sym)
    broker, clock = make(market, t)
    # Working since continuous trading, far too big to finish before 15:20.
    _, asks = market.book(sym, t, WALK_LEVELS)
    big = await broker.submit_order(market_order(sym, Side.BUY, sum(q for _, q in asks) * 50))
    clock.set(SESSION.continuous_close + timedelta(minutes=2))
    carried = await broker.order_status(big.broker_order_id)
    assert carried.remaining_qty > 0
    before = carried.filled_qty
    buy = await broker.submit_order(market_order(sym, Side.BUY, 7))
    sell = await broker.submit_order(limit_order(sym, Side.SELL, 4, lower))  # crosses
    away = await broker.submit_order(limit_order(sym, Side.BUY, 9, lower))  # does not cross
    for ack in (buy, sell, away):
        assert (await broker.order_status(ack.broker_order_id)).filled_qty == 0
    clock.set(SESSION.close - timedelta(microseconds=1))
    assert (await broker.order_status(buy.broker_order_id)).filled_qty == 0
    clock.set(SESSION.close)
    for ack, qty in ((buy, 7), (sell, 4)):
        status = await broker.order_status(ack.broker_order_id)
        assert (status.filled_qty, status.remaining_qty) == (qty, 0)
        assert status.filled_amount == qty * auction
        assert [(e.at, e.price) for e in broker.executions(ack.broker_order_id)] == [
            (SESSION.close, auction)
        ]
    final = await broker.order_status(big.broker_order_id)
    assert final.remaining_qty == 0
    assert final.filled_qty == final.qty
    assert final.filled_amount - carried.filled_amount == (final.qty - before) * auction
    expired = await broker.order_status(away.broker_order_id)
    assert (expired.filled_qty, expired.remaining_qty, expired.canceled) == (0, 0, False)
    assert lower < auction < upper


async def test_remaining_quantity_expires_after_close(market: SimulatedMarket) -> None:
    t = at_minute(300)
    sym = pick(market, Tier.MID, t)
    lower, _ = market.limits(sym)
    broker, clock = make(market, t)
    ack = await broker.submit_order(limit_order(sym, Side.BUY, 3, lower))
    clock.set(SESSION.close - timedelta(minutes=1))
    assert (await broker.order_status(ack.broker_order_id)).remaining_qty == 3
    clock.set(SESSION.close + timedelta(hours=2))
    status = await broker.order_status(ack.broker_order_id)
    assert (status.filled_qty, status.remaining_qty, status.canceled) == (0, 0, False)
    assert status.done
    assert status.updated_at == SESSION.close


async def test_find_orders(market: SimulatedMarket) -> None:
    t = at_minute(20)
    a, b = market.symbols[:2]
    broker, clock = make(market, t)
    first = await broker.submit_order(market_order(a, Side.BUY, 10))
    clock.set(t + timedelta(minutes=1))
    await broker.submit_order(market_order(a, Side.SELL, 10))
    await broker.submit_order(market_order(a, Side.BUY, 11))
    await broker.submit_order(market_order(b, Side.BUY, 10))
    clock.set(t + timedelta(minutes=2))
    third = await broker.submit_order(market_order(a, Side.BUY, 10))
    found = await broker.find_orders(a, Side.BUY, 10, t)
    assert [s.broker_order_id for s in found] == [first.broker_order_id, third.broker_order_id]
    assert [s.ordered_at for s in found] == [t, t + timedelta(minutes=2)]
    later = await broker.find_orders(a, Side.BUY, 10, t + timedelta(seconds=1))
    assert [s.broker_order_id for s in later] == [third.broker_order_id]


async def test_outcome_unknown_places_the_order(market: SimulatedMarket) -> None:
    t = at_minute(33)
    sym = pick(market, Tier.HIGH, t)
    broker, _ = make(market, t, outcome_unknown=1)
    with pytest.raises(OrderOutcomeUnknown):
        await broker.submit_order(market_order(sym, Side.BUY, 2))
    found = await broker.find_orders(sym, Side.BUY, 2, t)
    assert len(found) == 1
    assert found[0].filled_qty == 2
    ack = await broker.submit_order(market_order(sym, Side.BUY, 2))  # the fault is used up
    assert ack.broker_order_id == "0000000002"


async def test_unavailable_places_nothing(market: SimulatedMarket) -> None:
    t = at_minute(33)
    sym = pick(market, Tier.HIGH, t)
    broker, _ = make(market, t)
    broker.inject_faults(unavailable=2)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            await broker.submit_order(market_order(sym, Side.SELL, 2))
    assert await broker.find_orders(sym, Side.SELL, 2, t) == []
    ack = await broker.submit_order(market_order(sym, Side.SELL, 2))
    assert ack.broker_order_id == "0000000001"
    with pytest.raises(ValueError, match=">= 0"):
        broker.inject_faults(unavailable=-1)


async def test_market_data_follows_the_clock(market: SimulatedMarket) -> None:
    broker, clock = make(market, at_minute(15.5))
    sym = market.symbols[9]
    assert await broker.quote(sym) == market.quote(sym, clock.now())
    snap = await broker.snapshot(30)
    assert snap.at == clock.now()
    assert snap.closes.shape == (200, 30)
    assert list(await broker.instruments()) == list(market.instruments)

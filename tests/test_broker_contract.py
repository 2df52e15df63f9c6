"""The `Broker` contract, one suite run against every adapter: PaperBroker over the simulated
market, and KisBroker through the real adapter against the project's KIS-compatible exchange
(`exchange.serve_exchange`) on loopback, on both KIS domains (real and mock).

Each adapter comes with a rig: a symbol, a price at which a BUY rests without filling, a
quantity that fills in several parts, and `settle()` which lets the market move on (a simulated
minute). The exchange checks cash and holdings as KIS does, so its rig first buys the shares the
suite later sells.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from kis_rig import SESSION, START, kis_venue

from broker.errors import OrderRejected, UnknownOrder
from broker.paper import WALK_LEVELS, PaperBroker
from broker.port import Broker, BrokerOrderId, OrderRequest, OrderStatus, OrderType, Side
from market.clock import ManualClock
from market.sim import SimulatedMarket
from market.ticks import step
from market.types import Tier

pytestmark = pytest.mark.anyio
SEED, N_SYMBOLS = 21, 200


@dataclass
class Rig:
    broker: Broker
    clock: ManualClock
    symbol: str
    resting: Decimal  # a BUY limit that stays unfilled
    off_grid: Decimal
    big_qty: int  # fills in several parts
    settle: Callable[[], Awaitable[None]]


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=SEED, session=SESSION, n_symbols=N_SYMBOLS)


@dataclass(frozen=True)
class Pick:
    symbol: str
    resting: Decimal
    off_grid: Decimal
    big_qty: int


def _pick(market: SimulatedMarket) -> Pick:
    """A thin symbol away from its limits: a BUY at the lower limit rests, a market BUY of three
    times the visible asks fills in parts."""
    for inst in market.instruments:
        q = market.quote(inst.symbol, START)
        if inst.tier == Tier.THIN and step(q.lower_limit, 40) < q.price < step(q.upper_limit, -40):
            break
    else:
        raise AssertionError("no thin symbol away from its limits")
    _, asks = market.book(inst.symbol, START, WALK_LEVELS)
    lower, _ = market.limits(inst.symbol)
    return Pick(inst.symbol, lower, q.price + 1, sum(size for _, size in asks) * 3)


def _paper(market: SimulatedMarket) -> Rig:
    clock = ManualClock(START)
    pick = _pick(market)

    async def settle() -> None:
        clock.set(clock.now() + timedelta(minutes=1))

    broker = PaperBroker(market, clock)
    return Rig(broker, clock, pick.symbol, pick.resting, pick.off_grid, pick.big_qty, settle)


@pytest.fixture(params=["paper", "kis-real", "kis-mock"])
async def rig(
    request: pytest.FixtureRequest,
    market: SimulatedMarket,
    redis_client: aioredis.Redis,
    prefix: str,
) -> AsyncIterator[Rig]:
    if request.param == "paper":
        yield _paper(market)
        return
    domain = request.param.removeprefix("kis-")
    pick = _pick(market)
    async with kis_venue(redis_client, prefix, domain, seed=SEED, n_symbols=N_SYMBOLS) as venue:
        broker = await venue.broker(universe=[pick.symbol])

        async def settle() -> None:
            await venue.advance(60)

        rig = Rig(
            broker, venue.clock, pick.symbol, pick.resting, pick.off_grid, pick.big_qty, settle
        )
        # The exchange checks holdings as KIS does: own the shares the suite sells.
        bought = await broker.submit_order(
            OrderRequest(pick.symbol, Side.BUY, 20, OrderType.MARKET)
        )
        assert (await until_done(rig, bought.broker_order_id))[-1].filled_qty == 20
        await settle()
        yield rig


def buy_limit(rig: Rig, qty: int, price: Decimal) -> OrderRequest:
    return OrderRequest(rig.symbol, Side.BUY, qty, OrderType.LIMIT, price)


def buy_market(rig: Rig, qty: int) -> OrderRequest:
    return OrderRequest(rig.symbol, Side.BUY, qty, OrderType.MARKET)


async def until_done(rig: Rig, broker_id: BrokerOrderId) -> list[OrderStatus]:
    seen = [await rig.broker.order_status(broker_id)]
    while not seen[-1].done and len(seen) < 40:
        await rig.settle()
        seen.append(await rig.broker.order_status(broker_id))
    return seen


async def test_submit_and_ack(rig: Rig) -> None:
    now = rig.clock.now()
    ack = await rig.broker.submit_order(buy_limit(rig, 3, rig.resting))
    assert isinstance(ack.broker_order_id, str)
    assert ack.broker_order_id.isdigit()
    assert ack.accepted_at.tzinfo is not None
    assert timedelta(0) <= now - ack.accepted_at < timedelta(seconds=1)
    status = await rig.broker.order_status(ack.broker_order_id)
    assert status.broker_order_id == ack.broker_order_id
    assert (status.symbol, status.side, status.qty) == (rig.symbol, Side.BUY, 3)
    assert (status.filled_qty, status.filled_amount, status.remaining_qty) == (0, 0, 3)
    assert not status.canceled
    assert not status.done
    assert status.ordered_at == ack.accepted_at


async def test_status_is_cumulative_and_monotone(rig: Rig) -> None:
    ack = await rig.broker.submit_order(buy_market(rig, rig.big_qty))
    seen = await until_done(rig, ack.broker_order_id)
    for before, after in itertools.pairwise(seen):
        assert after.filled_qty >= before.filled_qty
        assert after.filled_amount >= before.filled_amount
        assert after.remaining_qty <= before.remaining_qty
        assert after.updated_at >= before.updated_at
    for s in seen:
        assert s.filled_qty + s.remaining_qty == s.qty == rig.big_qty
        assert (s.filled_amount > 0) == (s.filled_qty > 0)
    assert any(0 < s.filled_qty < rig.big_qty for s in seen)  # really came in parts
    final = seen[-1]
    assert final.done
    assert final.filled_qty == rig.big_qty
    assert final.avg_price is not None
    assert final.avg_price > 0


async def test_cancel_working_then_again(rig: Rig) -> None:
    ack = await rig.broker.submit_order(buy_limit(rig, 5, rig.resting))
    await rig.settle()
    canceled = await rig.broker.cancel_order(ack.broker_order_id)
    assert canceled.canceled
    assert (canceled.filled_qty, canceled.remaining_qty) == (0, 0)
    assert canceled.done
    assert await rig.broker.cancel_order(ack.broker_order_id) == canceled
    assert await rig.broker.order_status(ack.broker_order_id) == canceled


async def test_cancel_of_a_filled_order_returns_its_state(rig: Rig) -> None:
    ack = await rig.broker.submit_order(buy_market(rig, 2))
    filled = (await until_done(rig, ack.broker_order_id))[-1]
    assert filled.filled_qty == 2
    status = await rig.broker.cancel_order(ack.broker_order_id)
    assert status == filled
    assert not status.canceled


async def test_unknown_order(rig: Rig) -> None:
    await rig.broker.submit_order(buy_limit(rig, 1, rig.resting))
    with pytest.raises(UnknownOrder):
        await rig.broker.order_status(BrokerOrderId("0000099999"))
    with pytest.raises(UnknownOrder):
        await rig.broker.cancel_order(BrokerOrderId("0000099999"))


async def test_find_orders_by_symbol_side_qty_since(rig: Rig) -> None:
    t = rig.clock.now()
    first = await rig.broker.submit_order(buy_limit(rig, 10, rig.resting))
    rig.clock.set(t + timedelta(minutes=1))
    sell = OrderRequest(rig.symbol, Side.SELL, 10, OrderType.MARKET)
    await rig.broker.submit_order(sell)
    await rig.broker.submit_order(buy_limit(rig, 11, rig.resting))
    rig.clock.set(t + timedelta(minutes=2))
    third = await rig.broker.submit_order(buy_limit(rig, 10, rig.resting))
    found = await rig.broker.find_orders(rig.symbol, Side.BUY, 10, t)
    assert [s.broker_order_id for s in found] == [first.broker_order_id, third.broker_order_id]
    assert [s.ordered_at for s in found] == [first.accepted_at, third.accepted_at]
    later = await rig.broker.find_orders(rig.symbol, Side.BUY, 10, t + timedelta(seconds=1))
    assert [s.broker_order_id for s in later] == [third.broker_order_id]
    assert await rig.broker.find_orders(rig.symbol, Side.BUY, 10, t + timedelta(minutes=3)) == []


async def test_off_grid_price_is_rejected_and_nothing_placed(rig: Rig) -> None:
    t = rig.clock.now()
    with pytest.raises(OrderRejected, match="not on the tick grid") as info:
        await rig.broker.submit_order(buy_limit(rig, 1, rig.off_grid))
    assert str(rig.off_grid) in info.value.reason
    assert await rig.broker.find_orders(rig.symbol, Side.BUY, 1, t) == []

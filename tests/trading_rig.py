"""A rig for the trading core's interleaving tests: real Redis and Postgres, a paper broker over
the simulated market, and one `Party` per worker (lock, keeper, tracker, placer, tenure context)
built exactly as `trading.loop.Worker` builds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial

import anyio
import redis.asyncio as aioredis
from loguru import logger

from broker.errors import UnknownOrder
from broker.paper import PaperBroker
from broker.port import BrokerOrderId, OrderAck, OrderRequest, OrderStatus, Side
from coordination.fences import FenceSeeder
from coordination.heartbeat import LeaseKeeper
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from ledger.repository import Ledger
from market.calendar import Session
from market.clock import KST, ManualClock
from market.orders import OrderType
from market.sim import SimulatedMarket
from market.types import Tier
from trading.metrics import NULL_METRICS
from trading.orders import Limits, OrderPlacer, Placement
from trading.tenure import TenureContext
from trading.tracker import OrderTracker

DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)
START = datetime(2026, 3, 10, 10, 0, tzinfo=KST)
TTL_MS = 2_000


class SteppingClock(ManualClock):
    """A manual clock whose sleep also yields for a moment of real time, so background loops
    (the tracker) advance the market without spinning the event loop."""

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(0.002)
        self.t += timedelta(seconds=max(0.0, seconds))


@dataclass
class Submit:
    symbol: str
    side: Side
    qty: int
    at: datetime
    overlapping: bool  # another order on the symbol was still working at the broker


class RecordingBroker(PaperBroker):
    """A paper broker that writes down every submit, whether another order on the same
    symbol was still working when it arrived, and can list orders late."""

    def __init__(self, market: SimulatedMarket, clock: ManualClock) -> None:
        super().__init__(market, clock)
        self.clock = clock
        self.submits: list[Submit] = []
        self.listing_lag = timedelta(0)
        self.lookups = 0

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        working = [
            o
            for o in self._orders.values()
            if o.request.symbol == request.symbol and not o.status().done
        ]
        self.submits.append(Submit(request.symbol, request.side, request.qty, self.clock.now(),
                                   bool(working)))  # fmt: skip
        return await super().submit_order(request)

    def _listed(self, ordered_at: datetime) -> bool:
        return self.clock.now() >= ordered_at + self.listing_lag

    async def order_status(self, broker_order_id: BrokerOrderId) -> OrderStatus:
        status = await super().order_status(broker_order_id)
        if not self._listed(status.ordered_at):
            raise UnknownOrder(f"{broker_order_id} not listed yet")
        return status

    async def find_orders(
        self, symbol: str, side: Side, qty: int, since: datetime
    ) -> list[OrderStatus]:
        self.lookups += 1
        found = await super().find_orders(symbol, side, qty, since)
        return [s for s in found if self._listed(s.ordered_at)]


@dataclass
class Party:
    """One worker's trading parts."""

    worker_id: str
    lock: RedisSymbolLock
    keeper: LeaseKeeper
    tracker: OrderTracker
    placer: OrderPlacer
    ctx: TenureContext


@dataclass
class Rig:
    ledger: Ledger
    redis: aioredis.Redis
    keys: Keyspace
    clock: SteppingClock = field(default_factory=lambda: SteppingClock(START))
    market: SimulatedMarket = field(
        default_factory=lambda: SimulatedMarket(seed=7, session=SESSION, n_symbols=40)
    )
    listing_lag_s: float = 30.0
    broker: RecordingBroker = field(init=False)

    def __post_init__(self) -> None:
        self.broker = RecordingBroker(self.market, self.clock)

    def party(self, worker_id: str) -> Party:
        log = logger.bind(worker=worker_id)
        lock = RedisSymbolLock(self.redis, self.keys, worker_id, ttl_ms=TTL_MS)
        keeper = LeaseKeeper(lock, interval_s=TTL_MS / 3000)
        tracker = OrderTracker(
            worker_id=worker_id, broker=self.broker, ledger=self.ledger,
            notices=Notices(self.redis, self.keys), clock=self.clock,
            boards={i.symbol: i.board for i in self.market.instruments}, trading_day=DAY,
            poll_s=2.0, listing_lag_s=self.listing_lag_s, log=log,
        )  # fmt: skip
        placer = OrderPlacer(
            worker_id=worker_id, broker=self.broker, ledger=self.ledger, tracker=tracker,
            clock=self.clock, trading_day=SESSION.open,
            limits=Limits(Decimal(10_000_000), Decimal(2_000_000)), log=log,
        )  # fmt: skip
        seeder = FenceSeeder(self.redis, self.keys)
        ctx = TenureContext(worker_id, lock, keeper, self.ledger, tracker, placer, self.clock,
                            NULL_METRICS, log,
                            partial(seeder.ensure, self.ledger.max_fences))  # fmt: skip
        return Party(worker_id, lock, keeper, tracker, placer, ctx)

    def liquid_symbol(self) -> str:
        """A symbol whose book is deep enough that a marketable BUY fills at once."""
        for inst in self.market.instruments:
            q = self.market.quote(inst.symbol, self.clock.now())
            if Decimal(5_000) <= q.price <= Decimal(100_000) and inst.tier is Tier.HIGH:
                return inst.symbol
        return self.market.symbols[0]

    def buy(self, symbol: str, fence: int, qty: int = 10) -> Placement:
        q = self.market.quote(symbol, self.clock.now())
        return Placement(symbol, Side.BUY, qty, OrderType.LIMIT, q.upper_limit, fence, "test",
                         q.price)  # fmt: skip

    def sell(self, symbol: str, fence: int, qty: int, *, resting: bool) -> Placement:
        q = self.market.quote(symbol, self.clock.now())
        price = q.upper_limit if resting else q.lower_limit
        return Placement(symbol, Side.SELL, qty, OrderType.LIMIT, price, fence, "test", q.price)


@asynccontextmanager
async def running(*parties: Party, keepers: bool = True) -> AsyncIterator[anyio.abc.TaskGroup]:
    """Run the parties' trackers (and keepers) for the block."""
    async with anyio.create_task_group() as tg:
        for p in parties:
            tg.start_soon(p.tracker.run)
            if keepers:
                tg.start_soon(p.keeper.run)
        yield tg
        tg.cancel_scope.cancel()

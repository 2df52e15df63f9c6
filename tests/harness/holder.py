"""A lock holder in its own process, for tests that SIGKILL or SIGSTOP it.

    python tests/harness/holder.py REDIS_URL DATABASE_URL PREFIX SYMBOL WORKER_ID TTL_MS MODE
        [SUBMITS]

Connects, acquires SYMBOL with `RedisSymbolLock`, keeps it with a `LeaseKeeper`, records the
grant in the ledger (`Ledger.lock_acquired`) and prints ``ready {fence} {symbol}``
(SYMBOL ``auto``: the first symbol of the simulated market the paper broker trades). Then:

* MODE ``hold``: sleeps until killed.
* MODE ``order``: waits for a line on stdin, then places a 1-share BUY with the fence it was
  granted through `trading.orders.OrderPlacer` (its `OrderTracker` following it), over a broker
  that appends every submit it receives to SUBMITS (one JSON line each) before passing it to a
  `PaperBroker`. Prints
  ``refused {reason}``, ``placed`` or ``not-placed`` and exits. The keeper is not consulted: this
  is a worker resuming mid-order-path after a stall, where only the ledger's fence stands
  between it and the broker.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import orjson
from loguru import logger

from broker.paper import PaperBroker
from broker.port import OrderAck, OrderRequest, OrderType, Side
from coordination.connection import connect
from coordination.heartbeat import LeaseKeeper
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from ledger.db import create_engine
from ledger.orders import OrderState
from ledger.repository import Ledger
from market.calendar import Session
from market.clock import KST, SimClock
from market.costs import CostModel
from market.sim import SimulatedMarket
from trading.orders import LeaseInvalid, Limits, OrderPlacer, Placement
from trading.tracker import OrderTracker

DAY = date(2026, 3, 10)
SESSION = Session(
    DAY,
    datetime(2026, 3, 10, 9, 0, tzinfo=KST),
    datetime(2026, 3, 10, 15, 20, tzinfo=KST),
    datetime(2026, 3, 10, 15, 30, tzinfo=KST),
)


class RecordingBroker(PaperBroker):
    """A paper broker that first writes down every submit it receives."""

    def __init__(self, market: SimulatedMarket, clock: Any, path: Path) -> None:
        super().__init__(market, clock)
        self.path = path

    async def submit_order(self, request: OrderRequest) -> OrderAck:
        with self.path.open("ab") as f:
            f.write(orjson.dumps({"symbol": request.symbol, "qty": request.qty}) + b"\n")
        return await super().submit_order(request)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(argv: list[str]) -> None:
    redis_url, database_url, prefix, symbol, worker_id, ttl, mode = argv[:7]
    ttl_ms = int(ttl)
    redis = await connect(redis_url)
    engine = create_engine(database_url)
    ledger = Ledger(engine, CostModel())
    keys = Keyspace(prefix)
    lock = RedisSymbolLock(redis, keys, worker_id, ttl_ms=ttl_ms)
    keeper = LeaseKeeper(lock, interval_s=ttl_ms / 3000)
    market = SimulatedMarket(seed=7, session=SESSION, n_symbols=20)
    if symbol == "auto":  # a symbol the paper broker trades
        symbol = market.symbols[0]
    lease = await lock.acquire(symbol)
    if lease is None:
        say("busy")
        return
    keeper.add(lease)
    await ledger.lock_acquired(symbol, worker_id, lease.fence, ttl_ms, datetime.now(UTC))
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        say(f"ready {lease.fence} {symbol}")
        if mode == "hold":
            await anyio.sleep_forever()
        await anyio.to_thread.run_sync(sys.stdin.readline)
        clock = SimClock(SESSION.open.replace(hour=10), 1.0)
        broker = RecordingBroker(market, clock, Path(argv[7]))
        log = logger.bind(worker=worker_id)
        tracker = OrderTracker(
            worker_id=worker_id,
            broker=broker,
            ledger=ledger,
            notices=Notices(redis, keys),
            clock=clock,
            boards={i.symbol: i.board for i in market.instruments},
            trading_day=DAY,
            poll_s=0.05,
            listing_lag_s=1.0,
            log=log,
        )
        tg.start_soon(tracker.run)
        placer = OrderPlacer(
            worker_id=worker_id,
            broker=broker,
            ledger=ledger,
            tracker=tracker,
            clock=clock,
            trading_day=SESSION.open,
            limits=Limits(Decimal(10_000_000), Decimal(2_000_000)),
            log=log,
        )
        quote = market.quote(symbol, clock.now())
        placement = Placement(
            symbol, Side.BUY, 1, OrderType.LIMIT, quote.price, lease.fence, "stale", quote.price
        )
        try:
            final = await placer.place(placement, clock.now(), lambda: True)
        except LeaseInvalid as exc:
            say(f"refused {exc}")
        else:
            not_placed = final.status in (OrderState.REJECTED, OrderState.WITHDRAWN)
            say("not-placed" if not_placed else "placed")
        tg.cancel_scope.cancel()
    await engine.dispose()
    await redis.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])

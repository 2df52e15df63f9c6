"""Forced liquidation of a thin holding with partial fills, adopted from a dead worker."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
import redis.asyncio as aioredis
from support import libpq

from broker.paper import PaperBroker
from broker.port import ClientOrderId, OrderRequest, OrderType, Side
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from ledger.db import create_engine
from ledger.records import OrderIntent
from ledger.repository import Ledger
from market.calendar import default_calendar
from market.clock import SimClock
from market.sim import SimulatedMarket
from market.types import Tier
from worker.app import cost_model, run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # processes or a whole simulated day

DAY = date(2026, 11, 24)
SEED = 7
SPEED = 600.0
QTY = 12_000  # several minutes of a thin name's book: partial fills, then the auction


async def _ghost_buys(database_url: str, redis_url: str, prefix: str, clock: SimClock) -> str:
    """A worker that bought a thin name, then died: its lock is gone, its position orphaned."""
    session = default_calendar().session(DAY)
    assert session is not None
    market = SimulatedMarket(SEED, session, 300)
    broker = PaperBroker(market, clock)
    thin = next(i for i in market.instruments if i.tier is Tier.THIN and i.prev_close > 5_000)
    engine = create_engine(database_url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        ledger = Ledger(engine, cost_model(load_settings(), default_calendar()))
        lock = RedisSymbolLock(redis, Keyspace(prefix), "ghost", ttl_ms=5_000)
        lease = await lock.acquire(thin.symbol)
        assert lease is not None
        await ledger.lock_acquired(thin.symbol, "ghost", lease.fence, 5_000, datetime.now(UTC))
        cid = ClientOrderId(str(uuid.uuid4()))
        await ledger.create_order(
            OrderIntent(
                cid,
                "ghost",
                thin.symbol,
                Side.BUY,
                OrderType.MARKET,
                QTY,
                None,
                lease.fence,
                "setup",
                None,
                DAY,
                clock.now(),
            )
        )
        await ledger.begin_submit(cid, "ghost", lease.fence)
        ack = await broker.submit_order(OrderRequest(thin.symbol, Side.BUY, QTY, OrderType.MARKET))
        await ledger.mark_order_sent(cid, ack.broker_order_id, clock.now())
        while True:
            status = await broker.order_status(ack.broker_order_id)
            await ledger.apply_order_status(cid, status, thin.board, clock.now())
            if status.done:
                break
            await clock.sleep(20)
        assert status.filled_qty == QTY
        await ledger.mark_position_orphaned(thin.symbol, "ghost", lease.fence)
        await lock.release(lease)
        await ledger.lock_released(thin.symbol, "ghost", lease.fence, datetime.now(UTC))
        return thin.symbol
    finally:
        await redis.aclose()
        await engine.dispose()


@pytest.mark.anyio
async def test_thin_position_is_liquidated_by_the_close(
    database_url: str, redis_url: str, prefix: str
) -> None:
    session = default_calendar().session(DAY)
    assert session is not None
    start = datetime(2026, 11, 24, 14, 45, tzinfo=session.open.tzinfo)
    epoch = time.time() - (start - session.open).total_seconds() / SPEED
    clock = SimClock(session.open, SPEED, epoch)
    symbol = await _ghost_buys(database_url, redis_url, prefix, clock)

    settings = load_settings(
        database_url=database_url, redis_url=redis_url, fleet_prefix=prefix,
        worker_id="liq", paper_seed=SEED, paper_symbols=300, paper_day=DAY,
        lock_ttl_ms=3_000, liquidation_lead_min=15, thin_liquidation_lead_min=25,
    )  # fmt: skip
    thin_start = session.liquidation_start(timedelta(minutes=25))
    await clock.sleep_until(thin_start + timedelta(minutes=3))
    await run_fleet(settings, database_url=database_url, redis_url=redis_url, workers=1,
                    speed=SPEED, epoch=epoch, handle_signals=False)  # fmt: skip

    with psycopg.connect(libpq(database_url)) as conn:
        (status, qty, closed_at, worker) = conn.execute(
            "SELECT status, qty, closed_at, worker_id FROM positions WHERE symbol = %s",
            (symbol,),
        ).fetchone()
        assert (status, qty) == ("CLOSED", 0)
        assert worker.startswith("liq")  # adopted by the live worker
        assert closed_at <= session.close + timedelta(minutes=2)
        exit_reason, trade_qty = conn.execute(
            "SELECT exit_reason, qty FROM trades WHERE symbol = %s", (symbol,)
        ).fetchone()
        assert exit_reason == "forced_liquidation"
        assert trade_qty == QTY
        sells = conn.execute(
            "SELECT o.order_type, o.signal_price, sum(f.qty) FROM orders o"
            " JOIN fills f ON f.order_id = o.id WHERE o.symbol = %s AND o.side = 'SELL'"
            " GROUP BY o.id ORDER BY o.id",
            (symbol,),
        ).fetchall()
        assert sum(row[2] for row in sells) == QTY
        n_fills = conn.execute(
            "SELECT count(*) FROM fills WHERE symbol = %s AND side = 'SELL'", (symbol,)
        ).fetchone()[0]
        assert n_fills >= 2, "a thin name this size cannot leave in one fill"
        assert all(row[1] is not None and row[1] > Decimal(0) for row in sells)
        # no buy after the liquidation start; no thin buy after the thin start
        late = conn.execute(
            "SELECT count(*) FROM orders WHERE side = 'BUY' AND worker_id <> 'ghost'"
            " AND created_at >= %s",
            (session.liquidation_start(timedelta(minutes=15)),),
        ).fetchone()
        assert late == (0,)
        assert conn.execute("SELECT count(*) FROM stock_locks").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)

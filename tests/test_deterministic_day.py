"""A fleet on virtual time: the same seed and settings give the same ledger, trade for trade and
won for won, and the day opens at the session open with every worker in place.

Real Redis and Postgres, two workers in one process over a small universe, the whole session
(open to close, closing auction included) run twice, each on a database and key prefix of its
own; random ids (client order ids) are left out of the comparison.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import anyio
import psycopg
import pytest
import redis as syncredis
from support import libpq

from market.vclock import VirtualClock
from trading.loop import Worker
from trading.state import WorkerState
from worker.app import Plan, run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # two whole simulated days (about 4 s of wall time each)

DAY = date(2026, 11, 24)

#: the trading-relevant columns, in an order that does not depend on insertion ids
QUERIES = {
    "orders": "SELECT worker_id, symbol, side, order_type, qty, price, status, fence, reason,"
    " signal_price, tier, filled_qty, filled_amount, broker_order_id, created_at, updated_at"
    " FROM orders ORDER BY created_at, worker_id, symbol, side, broker_order_id",
    "fills": "SELECT f.worker_id, f.symbol, f.side, f.qty, f.price, f.amount, f.fee, f.tax,"
    " f.transaction_tax, f.rural_tax, f.cum_qty, f.filled_at, o.broker_order_id"
    " FROM fills f JOIN orders o ON o.id = f.order_id"
    " ORDER BY f.filled_at, o.broker_order_id, f.cum_qty",
    "trades": "SELECT worker_id, symbol, qty, buy_amount, sell_amount, fees, taxes, pnl,"
    " opened_at, closed_at, entry_reason, exit_reason FROM trades"
    " ORDER BY closed_at, worker_id, symbol",
    "positions": "SELECT worker_id, symbol, qty, avg_price, buy_qty, buy_amount, sell_qty,"
    " sell_amount, fees, taxes, status, opened_at, closed_at FROM positions"
    " ORDER BY opened_at, worker_id, symbol",
    "summary": "SELECT date, pnl, trades_count, wins, fees, taxes, max_loss FROM daily_summaries",
    "per_worker": "SELECT worker_id, pnl, trades_count, wins, fees, taxes, max_loss FROM"
    " daily_worker_summaries ORDER BY worker_id",
}


@pytest.fixture
def second_database(database_url: str, database_pool: Any) -> Iterator[str]:
    name = database_pool.take()
    try:
        yield database_url.rsplit("/", 1)[0] + "/" + name
    finally:
        database_pool.give_back(name)


def _run_day(database_url: str, redis_url: str) -> tuple[Plan, dict[str, Any]]:
    """One virtual day; the plan and what was seen when the clock first moved."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        fleet_prefix=prefix,
        worker_id="det",
        paper_seed=11,
        paper_symbols=12,
        paper_day=DAY,
        # sparse pacing keeps the day short in wall time; the schedule is the same either way
        scan_interval_s=60.0,
        hold_interval_s=30.0,
        order_poll_s=5.0,
    )
    seen: dict[str, Any] = {}
    fleet: list[Worker] = []

    def started(workers: Any, plan: Plan, _ledger: Any) -> None:
        fleet.extend(workers)
        assert isinstance(plan.clock, VirtualClock)
        seen["clock"] = plan.clock
        seen["at_start"] = plan.clock.now()

    async def first_move() -> None:
        """Not a participant: woken when virtual time first passes the open."""
        while "clock" not in seen:
            await anyio.sleep(0.01)
        clock: VirtualClock = seen["clock"]
        await clock.sleep_until(seen["at_start"] + timedelta(microseconds=1))
        seen["moved_at"] = clock.now()
        seen["states"] = [w.state for w in fleet]
        seen["registered"] = [w.worker_id for w in await fleet[0].d.registry.list_workers()]

    async def main() -> Plan:
        with anyio.fail_after(120):
            return await fleet_day()

    async def fleet_day() -> Plan:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_move)
            plan = await run_fleet(
                settings,
                database_url=database_url,
                redis_url=redis_url,
                workers=2,
                virtual=True,
                handle_signals=False,
                on_started=started,
            )
            tg.cancel_scope.cancel()
        return plan

    try:
        plan = anyio.run(main)
    finally:
        client = syncredis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return plan, seen


def _ledger(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(libpq(database_url)) as conn:
        return {name: conn.execute(q).fetchall() for name, q in QUERIES.items()}


def test_same_seed_same_ledger_and_the_day_opens_with_the_fleet_in_place(
    database_url: str, second_database: str, redis_url: str
) -> None:
    plan, seen = _run_day(database_url, redis_url)
    first = _ledger(database_url)
    _, seen_again = _run_day(second_database, redis_url)
    second = _ledger(second_database)

    # the day opens at the session open, every worker registered and trading at that instant
    session = plan.session
    assert seen["at_start"] == session.open
    assert seen["moved_at"] > session.open
    assert all(s is not WorkerState.IDLE for s in seen["states"]), seen["states"]
    assert sorted(seen["registered"]) == ["det-w1", "det-w2"]
    assert plan.clock.now() >= session.close  # the whole session ran

    # something worth comparing was traded, by both workers, and flat at the close
    assert len(first["trades"]) >= 4, first["trades"]
    assert {t[0] for t in first["trades"]} == {"det-w1", "det-w2"}
    assert all(p[10] == "CLOSED" for p in first["positions"])

    # trade for trade, fill for fill, won for won
    for table in QUERIES:
        assert first[table] == second[table], table
    assert seen_again["moved_at"] == seen["moved_at"]

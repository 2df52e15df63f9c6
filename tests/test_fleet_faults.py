"""Faults are transient, not fatal: a Postgres outage mid-day costs no worker and no position,
and one worker's failure in a multi-worker process is its own."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time

import anyio
import pytest
from support import GearClock, ServerProxy, sql

from market.clock import KST
from trading.loop import Worker
from trading.state import WorkerState
from worker.app import Plan, WorkerFailed, epoch_soon, run_fleet
from worker.settings import load_settings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DAY = date(2026, 11, 24)
SPEED = 600.0  # the outage and the last hour, liquidation included
FAST = 2_400.0  # the stretches around them


def _flat_and_reconciled(database_url: str) -> None:
    assert sql(database_url, "SELECT count(*) FROM positions WHERE status <> 'CLOSED'") == [(0,)]
    unfinished = "('NEW', 'SUBMITTING', 'SENT', 'PARTIALLY_FILLED', 'UNKNOWN')"
    assert sql(database_url, f"SELECT count(*) FROM orders WHERE status IN {unfinished}") == [(0,)]
    [(pnl, trades, from_fills)] = sql(
        database_url,
        """SELECT (SELECT pnl FROM daily_summaries), (SELECT sum(pnl) FROM trades),
                  (SELECT sum(CASE WHEN side='SELL' THEN amount ELSE -amount END)
                          - sum(fee) - sum(tax) FROM fills)""",
    )
    assert pnl == trades == from_fills


async def test_postgres_restart_mid_day_costs_no_worker_and_no_position(
    database_url: str, redis_url: str, prefix: str
) -> None:
    proxy = ServerProxy(database_url)
    fleet: list[Worker] = []
    outage: dict[str, datetime] = {}
    gear: list[GearClock] = []

    def started(workers: Sequence[Worker], _plan: Plan, _ledger: object) -> None:
        fleet.extend(workers)

    def geared(plan: Plan) -> GearClock:
        gear.append(GearClock(plan.session.open, FAST, epoch_soon(0.3)))
        return gear[0]

    async def until(when: time) -> None:
        while not gear or gear[0].now().time() < when:
            await anyio.sleep(0.02)

    async def restart_postgres() -> None:
        await until(time(10, 30))
        [clock] = gear
        held = lambda: [w for w in fleet if w.state is WorkerState.HOLD]  # noqa: E731
        while not held():  # the outage must meet a worker holding a position
            await anyio.sleep(0.02)
        clock.shift(SPEED)  # the outage and the close at the speed the fleet is tested at
        proxy.cut()
        outage["from"] = clock.now()
        # the server stays away for 20 simulated minutes of trading
        while (clock.now() - outage["from"]).total_seconds() < 20 * 60:
            await anyio.sleep(0.02)
        proxy.resume()
        outage["to"] = clock.now()
        clock.shift(FAST)
        await until(time(14, 30))
        clock.shift(SPEED)

    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        via_proxy = proxy.url_for(database_url)
        settings = load_settings(
            database_url=via_proxy, redis_url=redis_url, fleet_prefix=prefix, worker_id="pgo",
            paper_seed=5, paper_symbols=200, paper_day=DAY, lock_ttl_ms=2_000,
        )  # fmt: skip
        tg.start_soon(restart_postgres)
        await run_fleet(settings, database_url=via_proxy, redis_url=redis_url, workers=3,
                        speed=SPEED, clock_factory=geared, on_started=started,
                        handle_signals=False)  # fmt: skip
        tg.cancel_scope.cancel()
    assert "to" in outage, "the outage never happened"
    assert all(w.crashed is None for w in fleet)
    assert all(w.state is WorkerState.EXIT for w in fleet)
    _flat_and_reconciled(database_url)
    # the holders kept their leases through Redis: no lease was lost during the outage
    lost = sql(database_url, "SELECT count(*) FROM lock_events WHERE event = 'lost'")
    assert lost == [(0,)]


async def test_worker_failing_in_a_multi_worker_process_fails_alone(
    database_url: str, redis_url: str, prefix: str
) -> None:
    settings = load_settings(
        database_url=database_url, redis_url=redis_url, fleet_prefix=prefix, worker_id="alone",
        paper_seed=5, paper_symbols=200, paper_day=DAY,
    )  # fmt: skip
    fleet: list[Worker] = []

    def started(workers: Sequence[Worker], _plan: Plan, _ledger: object) -> None:
        fleet.extend(workers)
        doomed = workers[0]
        scan = doomed._scan_tick

        async def fail_at_ten_thirty(started_at: datetime) -> None:
            if started_at.astimezone(KST).time() >= time(10, 30):
                raise RuntimeError("a bug in one worker")
            await scan(started_at)

        doomed._scan_tick = fail_at_ten_thirty  # type: ignore[method-assign]

    with pytest.raises(WorkerFailed, match="1 of 3 worker"):
        await run_fleet(settings, database_url=database_url, redis_url=redis_url, workers=3,
                        virtual=True, on_started=started, handle_signals=False)  # fmt: skip
    doomed, *siblings = fleet
    assert isinstance(doomed.crashed, RuntimeError)
    assert all(w.crashed is None for w in siblings)
    # the siblings traded the whole day, up to the close
    assert all(w.state is WorkerState.EXIT for w in siblings)
    [(last_close,)] = sql(database_url, "SELECT max(closed_at) FROM trades")
    assert last_close is not None
    assert last_close.astimezone(KST).time() >= time(14, 0)  # type: ignore[attr-defined]
    _flat_and_reconciled(database_url)

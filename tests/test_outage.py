"""Redis goes away while a worker holds a position: no buying, the position is still protected
through the broker under the ledger's fence, and ownership is re-verified once Redis is back."""

from __future__ import annotations

import time
from datetime import date

import anyio
import psycopg
import pytest
from support import RedisProcess, free_port, libpq

from worker.app import run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # processes or a whole simulated day

SPEED = 300.0
DAY = date(2026, 11, 24)


def _holding(database_url: str) -> str | None:
    """The symbol the worker is in HOLD on (its state as persisted in the ledger)."""
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute("SELECT current_symbol FROM workers WHERE status = 'HOLD'").fetchone()
    return row[0] if row else None


@pytest.mark.anyio
async def test_position_is_protected_while_redis_is_unreachable(database_url: str) -> None:
    server = RedisProcess(free_port())
    server.start()
    redis_url = f"redis://127.0.0.1:{server.port}/0"
    settings = load_settings(
        database_url=database_url, redis_url=redis_url, worker_id="outage", paper_seed=3,
        paper_day=DAY, lock_ttl_ms=1_500, max_hold_min=8, take_profit_pct=50, stop_loss_pct=40,
        trend_break_pct=40,
    )  # fmt: skip
    # join the session at 14:00; the day ends 1.5 h later = 18 s of wall time at 300x
    epoch = time.time() + 0.5 - 5 * 3600 / SPEED
    outage: dict[str, float] = {}

    async def unplug_redis_while_holding() -> None:
        while _holding(database_url) is None:
            await anyio.sleep(0.05)
        server.pause()  # every Redis call now times out
        outage["start"] = time.time()
        await anyio.sleep(8.0)  # 40 simulated minutes: the 8-minute time exit fires inside
        server.resume()
        outage["end"] = time.time()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(unplug_redis_while_holding)
            await run_fleet(settings, database_url=database_url, redis_url=redis_url,
                            workers=1, speed=SPEED, epoch=epoch, handle_signals=False)  # fmt: skip
            tg.cancel_scope.cancel()
    finally:
        server.resume() if server.proc and server.proc.poll() is None else None
        server.kill()

    assert set(outage) == {"start", "end"}, "the worker never held a position"
    with psycopg.connect(libpq(database_url)) as conn:
        first_trade = conn.execute(
            "SELECT symbol, exit_reason, extract(epoch FROM recorded_at)"
            " FROM trades ORDER BY recorded_at LIMIT 1"
        ).fetchone()
        symbol, exit_reason, closed = first_trade
        # the position held when Redis went away was sold during the outage, on its time exit
        assert exit_reason == "time_exit"
        assert outage["start"] < float(closed) < outage["end"]
        # no BUY was placed while Redis was away
        buys = conn.execute(
            "SELECT count(*) FROM orders WHERE side = 'BUY'"
            " AND recorded_at > to_timestamp(%s) AND recorded_at < to_timestamp(%s)",
            (outage["start"], outage["end"]),
        ).fetchone()
        assert buys == (0,)
        # and the day still ended flat with every lock released
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM stock_locks").fetchone() == (0,)
        assert symbol

"""A whole simulated trading day, three workers in one process, real Redis and Postgres."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import date, datetime, time
from decimal import Decimal

import psycopg
import pytest
import redis as syncredis
from support import GearClock, libpq

from worker.app import Plan, epoch_soon, run_fleet
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # processes or a whole simulated day

FAST = 2_500.0  # the session until LAST_HOUR: 5.5 h in ~8 s of wall time
SPEED = 600.0  # the last hour, liquidation included: slow enough for a loaded machine to sell
LAST_HOUR = time(14, 30)


def _overlaps(intervals: list[tuple[datetime, datetime, str]]) -> list[tuple[str, str]]:
    """Pairs of different owners whose [start, end) intervals intersect (all pairs checked)."""
    return [
        (o1, o2)
        for (s1, e1, o1), (s2, e2, o2) in itertools.combinations(intervals, 2)
        if o1 != o2 and s1 < e2 and s2 < e1
    ]


@pytest.fixture
def day_result(database_url: str, redis_url: str, prefix: str):
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url,
        fleet_prefix=prefix,
        worker_id="day",
        paper_seed=7,
        paper_symbols=300,
        paper_day=date(2026, 11, 24),
        lock_ttl_ms=3_000,
    )
    import anyio

    gear: list[GearClock] = []

    def geared(plan: Plan) -> GearClock:
        gear.append(GearClock(plan.session.open, FAST, epoch_soon(0.3)))
        return gear[0]

    async def last_hour_slower() -> None:
        while not gear or gear[0].now().time() < LAST_HOUR:
            await anyio.sleep(0.02)
        gear[0].shift(SPEED)

    async def day() -> Plan:
        async with anyio.create_task_group() as tg:
            tg.start_soon(last_hour_slower)
            plan = await run_fleet(settings, database_url=database_url, redis_url=redis_url,
                                   workers=3, speed=FAST, clock_factory=geared,
                                   handle_signals=False)  # fmt: skip
            tg.cancel_scope.cancel()
        return plan

    return anyio.run(day), settings


def test_full_day_three_workers(day_result, database_url: str, redis_url: str, prefix: str):
    plan, settings = day_result
    day = plan.session.day
    with psycopg.connect(libpq(database_url)) as conn:
        trades = conn.execute(
            "SELECT worker_id, symbol, pnl, opened_at, closed_at FROM trades WHERE trading_day=%s",
            (day,),
        ).fetchall()
        assert len(trades) >= 10, "the strategy should trade during a whole day"
        assert len({t[0] for t in trades}) == 3, "every worker traded"

        # 1. no symbol ever held by two workers: holding intervals from the ledger
        by_symbol: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        for worker_id, symbol, _pnl, opened, closed in conn.execute(
            "SELECT worker_id, symbol, pnl, opened_at, closed_at FROM trades"
        ):
            by_symbol[symbol].append((opened, closed, worker_id))
        for symbol, intervals in by_symbol.items():
            assert _overlaps(intervals) == [], symbol
        # ... and from the lock audit: acquired -> released per (symbol, fence), never overlapping
        spans: dict[tuple[str, int], dict[str, object]] = defaultdict(dict)
        for symbol, worker_id, fence, event, at in conn.execute(
            "SELECT symbol, worker_id, fence, event, at FROM lock_events ORDER BY id"
        ):
            spans[(symbol, fence)][event] = at
            spans[(symbol, fence)]["worker"] = worker_id
        lock_intervals: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        for (symbol, fence), ev in spans.items():
            assert "acquired" in ev, (symbol, fence)
            end = ev.get("released") or ev.get("lost") or ev.get("expired")
            assert end is not None, f"lock {symbol}:{fence} never ended"
            lock_intervals[symbol].append((ev["acquired"], end, f"{ev['worker']}:{fence}"))
        for symbol, intervals in lock_intervals.items():
            assert _overlaps(intervals) == [], symbol

        # 2. flat at the close, every lock released (mirror and Redis)
        open_positions = conn.execute(
            "SELECT symbol, qty, status FROM positions WHERE status <> 'CLOSED' OR qty <> 0"
        ).fetchall()
        assert open_positions == []
        assert conn.execute("SELECT count(*) FROM stock_locks").fetchone() == (0,)
        working = conn.execute(
            "SELECT count(*) FROM orders"
            " WHERE status IN ('NEW', 'SENT', 'PARTIALLY_FILLED', 'UNKNOWN')"
        ).fetchone()
        assert working == (0,)

        # 3. summary PnL == sells - buys - fees - taxes from fills, to the won
        sells, buys, fees, taxes = conn.execute(
            """SELECT coalesce(sum(amount) FILTER (WHERE side='SELL'), 0),
                      coalesce(sum(amount) FILTER (WHERE side='BUY'), 0),
                      coalesce(sum(fee), 0), coalesce(sum(tax), 0)
               FROM fills WHERE trading_day=%s""",
            (day,),
        ).fetchone()
        from_fills = sells - buys - fees - taxes
        summary_pnl, count = conn.execute(
            "SELECT pnl, trades_count FROM daily_summaries WHERE date=%s", (day,)
        ).fetchone()
        assert summary_pnl == from_fills
        assert summary_pnl == sum((t[2] for t in trades), Decimal(0))
        assert count == len(trades)

        # tuning views: every trade lands in exactly one exit-reason and one entry-signal row
        by_exit = conn.execute(
            "SELECT sum(pnl), sum(trades) FROM tuning_exit_reasons WHERE trading_day=%s", (day,)
        ).fetchone()
        by_entry = conn.execute(
            "SELECT sum(pnl), sum(trades) FROM tuning_entry_signals WHERE trading_day=%s",
            (day,),
        ).fetchone()
        assert by_exit == by_entry == (summary_pnl, len(trades))
        sides = conn.execute(
            "SELECT DISTINCT side FROM tuning_slippage WHERE trading_day=%s AND tier IS NOT NULL",
            (day,),
        ).fetchall()
        assert {s[0] for s in sides} == {"BUY", "SELL"}

        # 4. nothing is bought after the liquidation start
        late_buys = conn.execute(
            "SELECT count(*) FROM orders WHERE side='BUY' AND created_at >= %s",
            (plan.session.liquidation_start(_minutes(settings.liquidation_lead_min)),),
        ).fetchone()
        assert late_buys == (0,)

    client = syncredis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{prefix}:lock:*")) == []
        assert list(client.scan_iter(match=f"{prefix}:worker:*")) == []
    finally:
        client.close()

    # the operator's view of the same day: `summary` as a table and as JSON
    env = {**os.environ, "DATABASE_URL": database_url}
    table = subprocess.run(
        [sys.executable, "-m", "worker", "summary", "--date", day.isoformat()],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "TOTAL" in table
    assert "matches the summary" in table
    as_json = subprocess.run(
        [sys.executable, "-m", "worker", "summary", "--date", day.isoformat(), "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    data = json.loads(as_json)
    assert Decimal(data["total"]["pnl"]) == summary_pnl == Decimal(data["pnl_from_fills"])
    assert data["total"]["trades_count"] == len(trades)
    assert sorted(data["workers"]) == sorted({t[0] for t in trades})


def _minutes(n: int):
    from datetime import timedelta

    return timedelta(minutes=n)

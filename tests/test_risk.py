"""Risk limits across real worker processes sharing one simulated session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import orjson
import psycopg
import pytest
import redis as syncredis
from support import libpq, start_exchange, venue_env

pytestmark = pytest.mark.slow  # processes or a whole simulated day

LOSS_LIMIT = Decimal(300_000)
SPEED = 1000.0


def test_loss_limit_stops_every_buy_across_three_processes(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # The three processes start in ~1-2 s and share one clock that reaches 12:30 KST then;
    # the afternoon runs at 1,000x (3 h in ~11 s).
    # open 1.5 h ago: 5 simulated hours (~18 s) left, so a loaded 2-core host still trades enough
    # to reach the limit with time to spare
    epoch = time.time() + 2.0 - (3600 + 1800) / SPEED
    env = {
        **os.environ,
        **venue_env(prefix),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "PAPER_SPEED": str(SPEED),
        "PAPER_EPOCH": str(epoch),
        "PAPER_SEED": "11",
        "PAPER_DAY": "2026-11-24",
        "DAILY_LOSS_LIMIT": str(LOSS_LIMIT),
        "CAPITAL_LIMIT": "20000000",
        "LOCK_TTL_MS": "3000",
        # a deliberately twitchy strategy, so the day reaches the loss limit early
        "STOP_LOSS_PCT": "0.3",
        "TAKE_PROFIT_PCT": "50",
        "MAX_HOLD_MIN": "2",
        "TREND_BREAK_PCT": "0",
        "TREND_MIN_HOLD_MIN": "0",
        "LOG_LEVEL": "INFO",
    }
    # one venue for the three processes, as a fleet has at a broker
    exchange, env["PAPER_VENUE"] = start_exchange(env, tmp_path / "exchange.log")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env={**env, "WORKER_ID": f"risk-{n}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in (1, 2, 3)
    ]
    try:
        logs = []
        for p in procs:
            _out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err.decode()[-2000:]
            logs.append(err.decode())
    finally:
        for p in (*procs, exchange):
            if p.poll() is None:
                p.kill()
                p.wait()

    with psycopg.connect(libpq(database_url)) as conn:
        trades = conn.execute(
            "SELECT pnl, recorded_at, worker_id FROM trades ORDER BY recorded_at"
        ).fetchall()
        running = Decimal(0)
        halted_at = None
        for pnl, recorded_at, _worker in trades:
            running += pnl
            if running <= -LOSS_LIMIT:
                halted_at = recorded_at
                break
        assert halted_at is not None, "the day never reached the loss limit: test is moot\n" + (
            "\n".join(log[-3000:] for log in logs)
        )

        # Once reached, the limit latches: a later winning trade that lifts the day back above
        # -limit does not let BUYs in again (the failure this test used to show under load)
        late_buys = conn.execute(
            "SELECT id, worker_id, symbol, recorded_at FROM orders"
            " WHERE side = 'BUY' AND recorded_at > %s",
            (halted_at,),
        ).fetchall()
        assert late_buys == [], (
            f"a BUY entered the ledger after the loss limit was reached at {halted_at}: "
            f"{late_buys}; trades (pnl, recorded_at): {[t[:2] for t in trades]}"
        )
        buys_before = conn.execute(
            "SELECT count(*) FROM orders WHERE side = 'BUY' AND recorded_at <= %s", (halted_at,)
        ).fetchone()[0]
        assert buys_before >= 3

        # holdings still sell: every position open when the limit was reached (simulated
        # time of the halting trade) was closed afterwards by SELL fills
        halt_sim = conn.execute(
            "SELECT closed_at FROM trades WHERE recorded_at = %s", (halted_at,)
        ).fetchone()[0]
        unsold = conn.execute(
            """SELECT count(*) FROM positions p
               WHERE p.opened_at <= %(t)s AND (p.closed_at IS NULL OR p.closed_at > %(t)s)
                 AND NOT EXISTS (SELECT 1 FROM fills f
                                 WHERE f.symbol = p.symbol AND f.side = 'SELL'
                                   AND f.filled_at > %(t)s)""",
            {"t": halt_sim},
        ).fetchone()[0]
        assert unsold == 0
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)
        # the day's halt is recorded once, by one of the workers
        halt_rows = conn.execute("SELECT worker_id, loss_limit FROM risk_halts").fetchall()
        assert len(halt_rows) == 1
        [(recorder, limit)] = halt_rows
        assert limit == LOSS_LIMIT

    client = syncredis.Redis.from_url(redis_url)
    try:
        halts = [
            fields
            for _id, fields in client.xrange(f"{prefix}:events")
            if fields[b"type"] == b"risk.halt"
        ]
    finally:
        client.close()
    # ... and announced once, by the worker that recorded it
    assert [h[b"worker_id"].decode() for h in halts] == [recorder]
    assert recorder in {"risk-1", "risk-2", "risk-3"}
    assert "why" in orjson.loads(halts[0][b"data"])

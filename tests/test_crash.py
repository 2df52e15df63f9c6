"""Invariant 4 end to end: a `run` worker SIGKILLed while holding loses nothing. Its lock
expires and is reaped, a live worker adopts the position and closes it, and the day ends flat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import time as dtime
from pathlib import Path

import psycopg
import pytest
from support import eventually, libpq, start_exchange, venue_env

pytestmark = pytest.mark.slow  # processes or a whole simulated day

SPEED = 300.0


def _holding(database_url: str, worker_id: str) -> str | None:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT current_symbol FROM workers WHERE worker_id = %s AND status = 'HOLD'",
            (worker_id,),
        ).fetchone()
    return row[0] if row else None


def test_sigkilled_holder_is_adopted_by_a_live_worker(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **venue_env(prefix),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "PAPER_SPEED": str(SPEED),
        # both processes share one clock: the session at 14:00 when they are up
        "PAPER_EPOCH": str(time.time() + 1.5 - 5 * 3600 / SPEED),
        "PAPER_SEED": "3",
        "PAPER_DAY": "2026-11-24",
        "LOCK_TTL_MS": "1500",
        "MAX_HOLD_MIN": "300",  # the victim's position stays open until someone sells it
        "TAKE_PROFIT_PCT": "50",
        "STOP_LOSS_PCT": "40",
        "TREND_BREAK_PCT": "40",
    }

    # both workers trade on one venue: the survivor must see the victim's orders
    exchange, env["PAPER_VENUE"] = start_exchange(env, tmp_path / "exchange.log")

    def start(worker_id: str, stderr: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env={**env, "WORKER_ID": worker_id},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    victim = start("victim", subprocess.DEVNULL)
    try:
        symbol = eventually(lambda: _holding(database_url, "victim"), timeout=30)
        survivor = start("survivor", subprocess.PIPE)  # joins once the victim holds a symbol
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        _out, err = survivor.communicate(timeout=60)
        assert survivor.returncode == 0, err.decode()[-2000:]
    finally:
        for proc in (victim, locals().get("survivor"), exchange):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    with psycopg.connect(libpq(database_url)) as conn:
        # the victim's position was adopted and closed by the survivor
        trade = conn.execute(
            "SELECT t.worker_id, t.qty, t.exit_reason FROM trades t"
            " JOIN positions p ON p.id = t.position_id"
            " WHERE t.symbol = %s ORDER BY t.id LIMIT 1",
            (symbol,),
        ).fetchone()
        assert trade is not None
        assert trade[0] == "survivor"
        bought_by_victim = conn.execute(
            "SELECT coalesce(sum(f.qty), 0) FROM fills f JOIN orders o ON o.id = f.order_id"
            " WHERE f.symbol = %s AND f.side = 'BUY' AND o.worker_id = 'victim'",
            (symbol,),
        ).fetchone()[0]
        assert bought_by_victim > 0
        # the audit: the victim's lease expired (reaped), then the survivor took the symbol
        events = conn.execute(
            "SELECT worker_id, fence, event FROM lock_events WHERE symbol = %s ORDER BY fence, id",
            (symbol,),
        ).fetchall()
        victim_fences = [f for w, f, e in events if w == "victim" and e == "acquired"]
        assert ("victim", victim_fences[-1], "expired") in events
        takeover = [f for w, f, e in events if w == "survivor" and e == "acquired"]
        assert takeover
        assert min(takeover) > victim_fences[-1]
        # nothing lost: flat, no lock, no order left working
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM stock_locks").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM orders"
            " WHERE status IN ('NEW', 'SUBMITTING', 'SENT', 'PARTIALLY_FILLED', 'UNKNOWN')"
        ).fetchone() == (0,)


def _clock_at(env: dict[str, str], speed: float) -> float:
    """Simulated seconds since the open, on the processes' shared clock."""
    return (time.time() - float(env["PAPER_EPOCH"])) * speed


def test_holder_killed_in_the_liquidation_window_is_flat_by_the_close_with_no_restart(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    speed = 120.0
    liquidation_start = (6 * 60 + 5) * 60  # the survivor's: 15:05, clock seconds since 09:00
    env = {
        **os.environ,
        **venue_env(prefix),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "PAPER_SPEED": str(speed),
        # the clock reads 14:57 when the processes are up: entries until 15:05, then only exits
        "PAPER_EPOCH": str(time.time() + 2.0 - (5 * 3600 + 57 * 60) / speed),
        "PAPER_SEED": "3",
        "PAPER_DAY": "2026-11-24",
        "LOCK_TTL_MS": "1500",
        "MAX_HOLD_MIN": "300",
        "TAKE_PROFIT_PCT": "50",
        "STOP_LOSS_PCT": "40",
        "TREND_BREAK_PCT": "40",
    }
    exchange, env["PAPER_VENUE"] = start_exchange(env, tmp_path / "exchange.log")

    def start(worker_id: str, lead_min: int) -> subprocess.Popen[bytes]:
        lead = {"LIQUIDATION_LEAD_MIN": str(lead_min), "THIN_LIQUIDATION_LEAD_MIN": str(lead_min)}
        with open(tmp_path / f"{worker_id}.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env={**env, **lead, "WORKER_ID": worker_id},
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    # the survivor's liquidation window opens at 15:05: from then on it only sells and adopts;
    # the victim's opens at 15:29, so it still holds a position well inside the survivor's
    victim, survivor = "victim", "survivor"
    procs = {victim: start(victim, 1), survivor: start(survivor, 15)}
    try:

        def victim_holds_while_survivor_idles_in_window() -> str | None:
            if _clock_at(env, speed) < liquidation_start + 180:  # a few idle scans after 15:05
                return None
            if _holding(database_url, survivor):
                return None
            return _holding(database_url, victim)

        symbol = eventually(victim_holds_while_survivor_idles_in_window, timeout=60, every=0.02)
        assert procs[survivor].poll() is None, "the idle survivor left in the liquidation window"
        procs[victim].send_signal(signal.SIGKILL)  # nothing restarts it
        procs[victim].wait(timeout=10)
        procs[survivor].wait(timeout=120)
        log = (tmp_path / f"{survivor}.log").read_text()
        assert procs[survivor].returncode == 0, log[-2000:]
    finally:
        for proc in (*procs.values(), exchange):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    with psycopg.connect(libpq(database_url)) as conn:
        closed = conn.execute(
            "SELECT worker_id, closed_at AT TIME ZONE 'Asia/Seoul' FROM trades"
            " WHERE symbol = %s ORDER BY id DESC LIMIT 1",
            (symbol,),
        ).fetchone()
        assert closed is not None
        assert closed[0] == survivor  # adopted and sold by the live worker
        assert closed[1].time() <= dtime(15, 30)  # by the close
        assert conn.execute(
            "SELECT count(*) FROM positions WHERE status <> 'CLOSED'"
        ).fetchone() == (0,)

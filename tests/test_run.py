"""`python -m worker run` as a process: live inspection, SIGTERM handoff, restart adoption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis as syncredis
from support import eventually, libpq

pytestmark = pytest.mark.slow  # processes or a whole simulated day


@pytest.fixture
def fleet_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "FLEET_PREFIX": prefix,
        "WORKER_ID": "runner-1",
        "PAPER_SPEED": "60",
        "PAPER_EPOCH": str(time.time() - 1800 / 60),  # join the session at 09:30
        "PAPER_SEED": "3",
        "PAPER_DAY": "2026-11-24",
        "LOCK_TTL_MS": "2000",
        "MAX_HOLD_MIN": "300",
        "TAKE_PROFIT_PCT": "50",
        "STOP_LOSS_PCT": "40",
        "LOG_LEVEL": "INFO",
    }


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout


def _holding(database_url: str) -> tuple[str, str] | None:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT symbol, status FROM positions WHERE status <> 'CLOSED' AND qty > 0"
        ).fetchone()
    return (row[0], row[1]) if row else None


def test_sigterm_hands_off_and_a_restart_adopts(
    fleet_env: dict[str, str], database_url: str, redis_url: str, prefix: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"], env=fleet_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        symbol, _ = eventually(lambda: _holding(database_url))
        # live inspection while it holds
        value = client.get(f"{prefix}:lock:{symbol}")
        assert value is not None
        assert value.startswith("runner-1:")
        locks = _cli(fleet_env, "locks")
        assert symbol in locks
        assert "runner-1" in locks
        assert "ok" in locks
        workers = _cli(fleet_env, "workers")
        assert "runner-1" in workers
        assert "HOLD" in workers

        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert client.get(f"{prefix}:lock:{symbol}") is None
        assert client.exists(f"{prefix}:worker:runner-1") == 0
        with psycopg.connect(libpq(database_url)) as conn:
            assert conn.execute(
                "SELECT status, worker_id FROM positions WHERE symbol=%s AND status <> 'CLOSED'",
                (symbol,),
            ).fetchone() == ("ORPHANED", "runner-1")
            assert conn.execute(
                "SELECT status FROM workers WHERE worker_id='runner-1'"
            ).fetchone() == ("EXIT",)
            assert conn.execute("SELECT count(*) FROM stock_locks").fetchone() == (0,)

        # the same worker restarted adopts its own position again
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=fleet_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        eventually(lambda: (client.get(f"{prefix}:lock:{symbol}") or "").startswith("runner-1:"))
        eventually(lambda: _holding(database_url) == (symbol, "OPEN"))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()

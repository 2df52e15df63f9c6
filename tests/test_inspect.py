"""The inspection commands (`locks`, `workers`, `summary`) as an operator runs them: real
subprocesses against real Redis and Postgres, `--json` documents, `--watch` stopped by a signal,
and the summary's default day from a given clock."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from support import RedisProcess, free_port

from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.registry import WorkerRegistry
from ledger.migrate import head_revision
from ledger.repository import Ledger
from market.calendar import default_calendar
from market.clock import KST, ManualClock
from worker import inspect
from worker.settings import load_settings

_SERVERS = {"DATABASE_URL", "REDIS_URL", "FLEET_PREFIX", "CONNECT_ATTEMPTS"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SERVERS}
    env.update(extra)
    return env


async def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process(
            [sys.executable, "-m", "worker", *args], env=env, check=False
        )


# --- locks and workers --json against live state ----------------------------------------------


@pytest.mark.anyio
async def test_locks_json_shows_live_locks_and_drift_against_the_mirror(
    redis_client: aioredis.Redis, redis_url: str, prefix: str, ledger: Ledger, database_url: str
) -> None:
    keys = Keyspace(prefix)
    held = await RedisSymbolLock(redis_client, keys, "w-held", ttl_ms=60_000).acquire("005930")
    unmirrored = await RedisSymbolLock(redis_client, keys, "w-new", ttl_ms=60_000).acquire("000660")
    assert held is not None
    assert unmirrored is not None
    now = datetime.now(UTC)
    await ledger.lock_acquired("005930", "w-held", held.fence, 60_000, now)
    await ledger.lock_acquired("035420", "w-gone", 7, 60_000, now)  # no Redis lock: stale

    result = await _cli(
        ["locks", "--json"],
        _env(DATABASE_URL=database_url, REDIS_URL=redis_url, FLEET_PREFIX=prefix),
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert datetime.fromisoformat(doc["at"]).tzinfo is not None
    rows = {r["symbol"]: r for r in doc["locks"]}
    assert rows.keys() == {"005930", "000660", "035420"}
    ok = rows["005930"]
    assert (ok["worker_id"], ok["fence"], ok["mirror"]) == ("w-held", held.fence, "ok")
    assert 0 < ok["pttl_ms"] <= 60_000
    assert (rows["000660"]["worker_id"], rows["000660"]["mirror"]) == ("w-new", "missing")
    stale = rows["035420"]
    assert (stale["worker_id"], stale["fence"], stale["pttl_ms"], stale["mirror"]) == (
        "w-gone",
        7,
        None,
        "stale",
    )

    table = await _cli(
        ["locks"], _env(DATABASE_URL=database_url, REDIS_URL=redis_url, FLEET_PREFIX=prefix)
    )
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert "MISSING in stock_locks" in text
    assert "STALE in stock_locks (no Redis lock)" in text


@pytest.mark.anyio
async def test_locks_json_without_a_database_does_not_check_the_mirror(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    lease = await RedisSymbolLock(redis_client, Keyspace(prefix), "w-1").acquire("005930")
    assert lease is not None
    result = await _cli(["locks", "--json"], _env(REDIS_URL=redis_url, FLEET_PREFIX=prefix))
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["locks"]
    assert (row["symbol"], row["worker_id"], row["fence"], row["mirror"]) == (
        "005930",
        "w-1",
        lease.fence,
        None,
    )


@pytest.mark.anyio
async def test_workers_json_lists_registered_workers(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=60_000)
    beat = datetime.now(UTC)
    await registry.update(
        "w-1", state="HOLD", symbol="005930", pid=4242, host="box-1", heartbeat_at=beat
    )
    result = await _cli(["workers", "--json"], _env(REDIS_URL=redis_url, FLEET_PREFIX=prefix))
    assert result.returncode == 0, result.stderr
    (w,) = json.loads(result.stdout)["workers"]
    assert (w["worker_id"], w["state"], w["symbol"], w["pid"], w["host"]) == (
        "w-1",
        "HOLD",
        "005930",
        4242,
        "box-1",
    )
    assert datetime.fromisoformat(w["heartbeat_at"]) == beat.replace(
        microsecond=beat.microsecond // 1000 * 1000  # stored to the millisecond
    )
    assert 0 <= w["heartbeat_age_s"] < 30
    assert w["stale"] is False


@pytest.mark.anyio
async def test_workers_json_when_none_is_registered(redis_url: str, prefix: str) -> None:
    result = await _cli(["workers", "--json"], _env(REDIS_URL=redis_url, FLEET_PREFIX=prefix))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["workers"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("command", ["locks", "workers"])
async def test_inspection_honours_connect_attempts(command: str) -> None:
    port = free_port()
    result = await _cli(
        [command], _env(REDIS_URL=f"redis://127.0.0.1:{port}/0", CONNECT_ATTEMPTS="2")
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "attempt 1/2" in err  # retried once, as `run` would
    assert "attempt 2/2" not in err
    last = err.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last
    assert "after 2 attempts" in last
    assert "Traceback" not in err


@pytest.mark.anyio
@pytest.mark.parametrize("command", [["locks"], ["summary", "--json"]])
async def test_inspection_refuses_a_schema_behind_the_code(
    command: list[str], empty_database_url: str, redis_url: str, prefix: str
) -> None:
    env = _env(DATABASE_URL=empty_database_url, REDIS_URL=redis_url, FLEET_PREFIX=prefix)
    result = await _cli(command, env)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"python -m worker: error: database schema base is behind {head_revision()}: "
        "run 'python -m worker migrate'"
    ]


# --- --watch -----------------------------------------------------------------------------------


class _Watch:
    """`python -m worker ARGS` in the background, its stdout lines read on a thread so the
    test can wait for one with a deadline (no sleeps)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)

    def line(self, timeout: float = 60) -> str:
        return self._lines.get(timeout=timeout)

    def stop(self, signum: signal.Signals) -> tuple[int, str]:
        """Send `signum`; the exit code and stderr once the process has gone."""
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._pump.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_watch_refreshes_until_a_signal_and_exits_0(
    redis_url: str, prefix: str, signum: signal.Signals
) -> None:
    watch = _Watch(
        ["workers", "--watch", "0.2", "--json"], _env(REDIS_URL=redis_url, FLEET_PREFIX=prefix)
    )
    try:
        docs: list[dict[str, Any]] = [json.loads(watch.line()) for _ in range(2)]
        assert all(d["workers"] == [] for d in docs)  # JSON Lines: one document per refresh
        assert docs[0]["at"] < docs[1]["at"]
        code, err = watch.stop(signum)
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        watch.close()


def test_watch_text_frames_carry_a_header(redis_url: str, prefix: str) -> None:
    watch = _Watch(["locks", "--watch", "0.2"], _env(REDIS_URL=redis_url, FLEET_PREFIX=prefix))
    try:
        header, body = watch.line(), watch.line()
        assert header.startswith("locks at ")
        assert "Ctrl-C to stop" in header
        assert body.strip() == "no live locks"
        code, err = watch.stop(signal.SIGINT)
        assert code == 0, err
    finally:
        watch.close()


@pytest.mark.slow
def test_watch_reports_a_redis_outage_and_carries_on(prefix: str) -> None:
    redis = RedisProcess(free_port())
    redis.start()
    watch = _Watch(
        ["workers", "--watch", "0.2", "--json"],
        _env(REDIS_URL=f"redis://127.0.0.1:{redis.port}/0", FLEET_PREFIX=prefix),
    )
    try:
        assert json.loads(watch.line())["workers"] == []
        redis.kill()
        while "error" not in (doc := json.loads(watch.line())):
            assert doc["workers"] == []  # frames read before the kill
        assert f"127.0.0.1:{redis.port}" in doc["error"]
        redis.start()
        while "workers" not in (doc := json.loads(watch.line())):
            assert "error" in doc
        code, err = watch.stop(signal.SIGINT)
        assert code == 0, err
    finally:
        watch.close()
        redis.kill()


# --- summary -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 29, 12, 0, tzinfo=KST), date(2026, 11, 27)),  # Sunday -> Friday
        (datetime(2026, 11, 28, 12, 0, tzinfo=KST), date(2026, 11, 27)),  # Saturday -> Friday
        (datetime(2026, 11, 27, 7, 0, tzinfo=KST), date(2026, 11, 27)),  # a session day itself
        # Friday 20:00 UTC is already Saturday in Seoul: still Friday's session
        (datetime(2026, 11, 27, 20, 0, tzinfo=UTC), date(2026, 11, 27)),
        # Monday 23:30 UTC is Tuesday in Seoul: Tuesday's session
        (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), date(2026, 12, 1)),
        (datetime(2026, 1, 1, 12, 0, tzinfo=KST), date(2025, 12, 30)),  # New Year; 31 Dec closed
    ],
)
def test_summary_defaults_to_the_latest_session_on_or_before_today(
    now: datetime, expected: date
) -> None:
    assert inspect.latest_session_day(now, default_calendar()) == expected


def test_summary_json_on_a_weekend_without_trades(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(database_url=database_url)
    sunday = ManualClock(datetime(2026, 11, 29, 15, 0, tzinfo=KST))
    assert inspect.summary(settings, None, as_json=True, clock=sunday) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["date"] == "2026-11-27"
    assert doc["total"]["trades_count"] == 0
    assert doc["total"]["pnl"] == "0"
    assert doc["workers"] == {}
    assert doc["note"] == "no trades recorded for 2026-11-27"


@pytest.mark.anyio
async def test_summary_json_with_no_trades_prints_json(database_url: str) -> None:
    result = await _cli(
        ["summary", "--date", "2026-01-05", "--json"], _env(DATABASE_URL=database_url)
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["date"] == "2026-01-05"
    assert doc["total"]["trades_count"] == 0
    assert "no trades recorded for 2026-01-05" in doc["note"]

"""Recovery in depth (Invariants 1 and 4): a holder SIGKILLed or SIGSTOPped in its own process,
concurrent reapers, and fences across a Redis restart. Real Redis, real Postgres, real signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import anyio
import psycopg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from coordination.reaper import LeaseReaper
from ledger.db import create_engine
from ledger.repository import Ledger
from market.costs import CostModel
from worker.mirror import LockMirror
from worker.reaper import reap_once

pytestmark = pytest.mark.anyio

HOLDER = Path(__file__).parent / "harness" / "holder.py"
SYM = "005930"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def ledger(engine: AsyncEngine) -> Ledger:
    return Ledger(engine, CostModel())


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sql(database_url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


def lock_events(database_url: str, symbol: str) -> list[tuple[object, ...]]:
    return sql(
        database_url,
        "SELECT event, fence, worker_id FROM lock_events WHERE symbol = %s ORDER BY id",
        symbol,
    )


@contextmanager
def holder(
    redis_url: str, database_url: str, prefix: str, args: list[str], log: Path
) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(HOLDER), redis_url, database_url, prefix, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


async def read_line(proc: subprocess.Popen[str], timeout_s: float, log: Path) -> str:
    assert proc.stdout is not None
    with anyio.fail_after(timeout_s):
        line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)
    assert line, f"holder exited early: {log.read_text()[-2000:]}"
    return line.strip()


async def ready(proc: subprocess.Popen[str], log: Path) -> tuple[int, str]:
    word, fence, symbol = (await read_line(proc, 20, log)).split()
    assert word == "ready"
    return int(fence), symbol


def open_position(database_url: str, worker_id: str, symbol: str) -> None:
    now = datetime.now(UTC)
    sql(
        database_url,
        "INSERT INTO positions (worker_id, symbol, qty, avg_price, buy_qty, buy_amount, sell_qty,"
        " sell_amount, fees, taxes, status, opened_at, updated_at, trading_day)"
        " VALUES (%s, %s, 10, 70000, 10, 700000, 0, 0, 0, 0, 'OPEN', %s, %s, %s)",
        worker_id,
        symbol,
        now,
        now,
        date.today(),
    )


async def test_sigkilled_holder_is_taken_over_within_ttl_plus_heartbeat(
    redis_url: str,
    database_url: str,
    prefix: str,
    redis_client: aioredis.Redis,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    ttl_ms, heartbeat_s = 1500, 0.5
    keys = Keyspace(prefix)
    log = tmp_path / "holder.log"
    with holder(redis_url, database_url, prefix, [SYM, "dead-1", str(ttl_ms), "hold"], log) as p:
        old_fence, _ = await ready(p, log)
        open_position(database_url, "dead-1", SYM)
        await anyio.sleep(0.6)  # let its keeper renew at least once
        p.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        p.wait(timeout=5)

    lock = RedisSymbolLock(redis_client, keys, "live-1", ttl_ms=ttl_ms)
    reaper = LeaseReaper(redis_client, keys)
    mirror = LockMirror(Notices(redis_client, keys), ledger, "m1", reaper=reaper, block_ms=50)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mirror.run)
        # What a live worker's reaper and adoption loop do, polled fast.
        with anyio.fail_after(ttl_ms / 1000 + heartbeat_s + 2):
            while True:
                await reap_once(reaper, ledger)
                lease = await lock.acquire(SYM)
                if lease is not None:
                    break
                await anyio.sleep(0.05)
        took = time.monotonic() - killed
        assert lease is not None
        new_fence = lease.fence
        await ledger.lock_acquired(SYM, "live-1", new_fence, ttl_ms, datetime.now(UTC))
        await reap_once(reaper, ledger)  # announces lock.recovered; the mirror records it
        with anyio.fail_after(3):
            while ("recovered", old_fence, "dead-1") not in lock_events(database_url, SYM):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()

    # Its last renewal was at most one heartbeat before the kill, so the lock lapsed between
    # TTL - heartbeat and TTL after it: not stolen early, recovered in time.
    assert ttl_ms / 1000 - heartbeat_s - 0.05 <= took <= ttl_ms / 1000 + heartbeat_s
    assert new_fence > old_fence
    events = lock_events(database_url, SYM)
    assert events[:3] == [
        ("acquired", old_fence, "dead-1"),
        ("expired", old_fence, "dead-1"),
        ("acquired", new_fence, "live-1"),
    ]
    assert ("recovered", old_fence, "dead-1") in events[3:]
    assert sql(database_url, "SELECT worker_id, status FROM positions") == [("dead-1", "ORPHANED")]
    assert sql(database_url, "SELECT symbol, worker_id, fence FROM stock_locks") == [
        (SYM, "live-1", new_fence)
    ]
    stream = await Notices(redis_client, keys).read(count=1000)
    kinds = [(n.type, n.worker_id) for n in stream if n.symbol == SYM]
    assert kinds.count(("lock.expired", "dead-1")) == 1
    assert kinds.count(("lock.recovered", "live-1")) == 1


async def test_stopped_holder_resumed_after_takeover_cannot_reach_the_broker(
    redis_url: str,
    database_url: str,
    prefix: str,
    redis_client: aioredis.Redis,
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    ttl_ms = 1000
    keys = Keyspace(prefix)
    log, submits = tmp_path / "holder.log", tmp_path / "submits.jsonl"
    args = ["auto", "stale-1", str(ttl_ms), "order", str(submits)]
    with holder(redis_url, database_url, prefix, args, log) as p:
        old_fence, symbol = await ready(p, log)
        p.send_signal(signal.SIGSTOP)
        try:
            lock = RedisSymbolLock(redis_client, keys, "fresh-1", ttl_ms=ttl_ms)
            with anyio.fail_after(ttl_ms / 1000 + 2):
                while (lease := await lock.acquire(symbol)) is None:
                    await anyio.sleep(0.05)
            await ledger.lock_acquired(symbol, "fresh-1", lease.fence, ttl_ms, datetime.now(UTC))
        finally:
            p.send_signal(signal.SIGCONT)
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
        outcome = await read_line(p, 20, log)
        p.wait(timeout=10)

    assert outcome.startswith("refused"), outcome
    assert "stale fence" in outcome or "not current" in outcome
    assert not submits.exists() or submits.read_text() == ""
    assert sql(database_url, "SELECT count(*) FROM orders") == [(0,)]
    assert lease.fence > old_fence


async def test_many_reapers_at_once_reap_each_lease_once(
    database_url: str, prefix: str, redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    keys = Keyspace(prefix)
    lock = RedisSymbolLock(redis_client, keys, "gone-1", ttl_ms=100)
    symbols = [f"S{i:02d}" for i in range(6)]
    for symbol in symbols:
        lease = await lock.acquire(symbol)
        assert lease is not None
        new_fence = lease.fence
        await ledger.lock_acquired(symbol, "gone-1", lease.fence, 100, datetime.now(UTC))
    live = RedisSymbolLock(redis_client, keys, "alive-1", ttl_ms=10_000)
    alive = await live.acquire("LIVE")
    assert alive is not None
    await anyio.sleep(0.2)

    counts: list[int] = []

    async def one() -> None:
        counts.append(await reap_once(LeaseReaper(redis_client, keys), ledger))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)

    assert sum(counts) == len(symbols)
    assert await reap_once(LeaseReaper(redis_client, keys), ledger) == 0
    stream = await Notices(redis_client, keys).read(count=1000)
    assert sorted(n.symbol or "" for n in stream if n.type == "lock.expired") == symbols
    rows = sql(database_url, "SELECT symbol FROM lock_events WHERE event = 'expired'")
    assert sorted(str(r[0]) for r in rows) == symbols
    assert sql(database_url, "SELECT count(*) FROM stock_locks") == [(0,)]
    assert await redis_client.exists(keys.lease("LIVE")) == 1  # a live lease is left alone

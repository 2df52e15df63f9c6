"""Recovery in depth (Invariants 1 and 4): a holder SIGKILLed or SIGSTOPped in its own process,
concurrent reapers, and fences across a Redis restart. Real Redis, real Postgres, real signals.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from support import RedisProcess, free_port, sql

from coordination.connection import connect
from coordination.errors import CoordinationError
from coordination.fences import FenceSeeder
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock
from coordination.notices import Notices
from coordination.reaper import LeaseReaper
from ledger.repository import Ledger
from worker.mirror import LockMirror
from worker.reaper import cleanup_expired_locks, reap_once

pytestmark = pytest.mark.anyio

HOLDER = Path(__file__).parent / "harness" / "holder.py"
SYM = "005930"


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


@pytest.mark.slow
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


@pytest.mark.slow
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


async def test_stale_mirror_rows_redis_forgot_are_cleaned(
    database_url: str, prefix: str, redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    keys = Keyspace(prefix)
    then = datetime.now(UTC) - timedelta(minutes=5)
    # a lease Redis forgot (restart): mirror row and position, no key, no lease meta
    await ledger.lock_acquired("FORGOT", "gone-2", 7, 3_000, then)
    open_position(database_url, "gone-2", "FORGOT")
    # a live holder whose ledger heartbeat is late: left alone
    live = RedisSymbolLock(redis_client, keys, "alive-2", ttl_ms=10_000)
    lease = await live.acquire("LATE")
    assert lease is not None
    await ledger.lock_acquired("LATE", "alive-2", lease.fence, 10_000, then)
    # a fresh row: left alone whatever Redis says
    await ledger.lock_acquired("FRESH", "busy-3", 4, 3_000, datetime.now(UTC))

    cleaned = await cleanup_expired_locks(LeaseReaper(redis_client, keys), ledger, 30.0)

    assert cleaned == 1
    assert sorted(lk.symbol for lk in await ledger.locks()) == ["FRESH", "LATE"]
    assert sql(database_url, "SELECT symbol, fence FROM lock_events WHERE event = 'expired'") == [
        ("FORGOT", 7)
    ]
    assert sql(database_url, "SELECT status FROM positions WHERE symbol = 'FORGOT'") == [
        ("ORPHANED",)
    ]
    assert await cleanup_expired_locks(LeaseReaper(redis_client, keys), ledger, 30.0) == 0


# -- fences across a Redis restart ----------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    symbol: str
    fence: int
    replied_at: float  # acquire's reply (monotonic)
    confirmed_until: float  # last instant Redis had confirmed it (a send time)
    accepted: bool  # the ledger's mirror moved to it


@pytest.mark.slow
async def test_fences_never_go_backwards_across_a_redis_restart(ledger: Ledger) -> None:
    server = RedisProcess(free_port())
    server.start()
    client = await connect(f"redis://127.0.0.1:{server.port}/0", attempts=1, timeout_s=0.5)
    keys = Keyspace("restart")
    symbols = ("AAA", "BBB")
    grants: list[Grant] = []
    seeded: list[bool] = []
    stop = anyio.Event()

    async def contender(n: int) -> None:
        worker_id = f"c{n}"
        lock = RedisSymbolLock(client, keys, worker_id, ttl_ms=2_000, timeout_s=0.5)
        seeder = FenceSeeder(client, keys, timeout_s=0.5)
        turn = n
        while not stop.is_set():
            symbol, turn = symbols[turn % 2], turn + 1
            try:
                # As the worker loop should: a cheap check before every acquire.
                seeded.append(await seeder.ensure(ledger.max_fences))
                sent = time.monotonic()
                lease = await lock.acquire(symbol)
                if lease is None:
                    await anyio.sleep(0.002)
                    continue
                replied = time.monotonic()
                at = datetime.now(UTC)
                accepted = await ledger.lock_acquired(symbol, worker_id, lease.fence, 2_000, at)
                await anyio.sleep(0.005)
                releasing = time.monotonic()
                try:
                    released = await lock.release(lease)
                except CoordinationError:
                    released = False
                until = releasing if released else sent
                grants.append(Grant(symbol, lease.fence, replied, until, accepted))
            except CoordinationError:
                await anyio.sleep(0.02)

    try:
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(contender, n)
            await anyio.sleep(0.8)
            killed_at = time.monotonic()
            server.kill()
            await anyio.sleep(0.3)
            server.start()
            await anyio.sleep(0.8)
            stop.set()
        info = await client.info("server")
        meta = await client.hget(keys.meta, "run_id")
    finally:
        await client.aclose()
        server.kill()

    before = [g for g in grants if g.replied_at < killed_at]
    after = [g for g in grants if g.replied_at >= killed_at]
    assert len(before) >= 5, len(before)
    assert len(after) >= 5, len(after)
    for symbol in symbols:
        old = [g.fence for g in before if g.symbol == symbol]
        new = [g.fence for g in after if g.symbol == symbol]
        assert old
        assert new
        assert min(new) > max(old), (symbol, max(old), sorted(new)[:5])
        # Ownership intervals confirmed by Redis never overlap (and the fences rise with time).
        owned = sorted((g for g in grants if g.symbol == symbol), key=lambda g: g.replied_at)
        for prev, cur in itertools.pairwise(owned):
            assert prev.confirmed_until < cur.replied_at
            assert prev.fence < cur.fence
    assert all(g.accepted for g in after)
    # Four contenders raced to seed each server; each server was seeded exactly once.
    assert seeded.count(True) == 2
    assert meta == info["run_id"].encode()

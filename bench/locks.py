"""Latency and throughput of the symbol lock next to its floor (PING) and simpler locks.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/locks.py

Prints one ``name=value`` line per figure (latencies in microseconds, throughput in lock/unlock
pairs per second), then ``lock_acquire_vs_rtt`` and ``lock_pair_vs_rtt``: our p50 over PING's p50.
Everything runs under a fresh key prefix that is deleted at the end. One Python process drives
all clients, so the throughput figures are bounded by the client's CPU as much as by Redis.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from coordination.connection import connect
from coordination.heartbeat import LeaseKeeper
from coordination.keys import Keyspace
from coordination.locks import Lease, RedisSymbolLock

N = 2_000
THROUGHPUT_S = 2.0
TTL_MS = 10_000

# The textbook unfenced unlock: delete only if the token is still ours.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def emit(name: str, value: object) -> None:
    print(f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}", flush=True)


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    us = sorted(s / 1000 for s in samples_ns)
    return statistics.median(us), us[min(len(us) - 1, int(len(us) * 0.99))]


async def timed(
    name: str,
    op: Callable[[], Awaitable[object]],
    n: int = N,
    after: Callable[[], Awaitable[object]] | None = None,
) -> float:
    """Run `op` n times (plus warm-up), `after` untimed after each; emit p50/p99; return p50."""
    for _ in range(50):
        await op()
        if after is not None:
            await after()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await op()
        samples.append(time.perf_counter_ns() - t0)
        if after is not None:
            await after()
    p50, p99 = percentiles(samples)
    emit(f"{name}_p50_us", p50)
    emit(f"{name}_p99_us", p99)
    return p50


async def throughput(name: str, pair: Callable[[int], Awaitable[None]], clients: int) -> None:
    done = 0
    stop_at = time.perf_counter() + THROUGHPUT_S

    async def client(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pair(i)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    emit(f"{name}_c{clients}_pairs_per_s", done / (time.perf_counter() - started))


async def latencies(client: aioredis.Redis, keys: Keyspace) -> dict[str, float]:
    """Per-operation p50/p99; returns the two ratios to PING."""
    prefix = keys.prefix
    lock = RedisSymbolLock(client, keys, "bench-w1", ttl_ms=TTL_MS)
    other = RedisSymbolLock(client, keys, "bench-w2", ttl_ms=TTL_MS)
    cad = client.register_script(COMPARE_AND_DELETE)

    ping = await timed("ping", client.ping)

    raw_key = f"{prefix}:raw:lat"

    async def raw_pair() -> None:
        await client.set(raw_key, "tok", nx=True, px=TTL_MS)
        await cad(keys=[raw_key], args=["tok"])

    await timed("raw_setnx_cad_pair", raw_pair)

    pylock = client.lock(f"{prefix}:redispy:lat", timeout=TTL_MS / 1000)
    await timed(
        "redispy_lock_acquire", lambda: pylock.acquire(blocking=False), after=pylock.release
    )

    async def pylock_pair() -> None:
        await pylock.acquire(blocking=False)
        await pylock.release()

    await timed("redispy_lock_pair", pylock_pair)

    held: list[Lease] = []

    async def ours_acquire() -> None:
        lease = await lock.acquire("LAT")
        assert lease is not None
        held.append(lease)

    async def ours_release_held() -> None:
        assert await lock.release(held.pop())

    acquire_p50 = await timed("ours_acquire", ours_acquire, after=ours_release_held)

    async def ours_pair() -> None:
        lease = await lock.acquire("LAT")
        assert lease is not None
        assert await lock.release(lease)

    pair_p50 = await timed("ours_pair", ours_pair)

    one = await lock.acquire("RN")
    assert one is not None
    await timed("ours_renew_1", lambda: lock.renew([one]))
    await lock.release(one)

    await ours_acquire()  # release needs something to release first
    await timed("ours_release", ours_release_held, after=ours_acquire)
    await ours_release_held()

    for size in (20, 100):
        taken = [f"AF{size}-{i:03d}" for i in range(size - 1)]
        for symbol in taken:
            assert await other.acquire(symbol) is not None
        ranked = [*taken, f"AF{size}-free"]

        async def first(ranked: list[str] = ranked) -> None:
            lease = await lock.acquire_first(ranked)
            assert lease is not None
            held.append(lease)

        await timed(
            f"ours_acquire_first_{size}_{size - 1}_taken", first, n=1_000, after=ours_release_held
        )

    batch = [await lock.acquire(f"RB-{i:03d}") for i in range(100)]
    leases = [lease for lease in batch if lease is not None]
    assert len(leases) == 100
    await timed("ours_renew_batch_100", lambda: lock.renew(leases), n=1_000)

    return {"lock_acquire_vs_rtt": acquire_p50 / ping, "lock_pair_vs_rtt": pair_p50 / ping}


async def throughputs(client: aioredis.Redis, keys: Keyspace) -> None:
    prefix = keys.prefix
    cad = client.register_script(COMPARE_AND_DELETE)
    # Throughput: each client locks and unlocks its own symbol, so we measure the lock's cost,
    # not contention.
    worker_locks = [RedisSymbolLock(client, keys, f"tp-{i}", ttl_ms=TTL_MS) for i in range(64)]

    async def ours_tp(i: int) -> None:
        lease = await worker_locks[i].acquire(f"TP-{i}")
        assert lease is not None
        await worker_locks[i].release(lease)

    async def raw_fenced_tp(i: int) -> None:
        key, token = f"{prefix}:raw:tp:{i}", f"tp-{i}"
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(f"{prefix}:raw:fence:{i}")
            pipe.set(key, token, nx=True, px=TTL_MS)
            fence, _ = await pipe.execute()
        await cad(keys=[key], args=[token])
        assert fence

    pylocks = [client.lock(f"{prefix}:redispy:tp:{i}", timeout=TTL_MS / 1000) for i in range(64)]

    async def redispy_tp(i: int) -> None:
        await pylocks[i].acquire(blocking=False)
        await pylocks[i].release()

    for clients in (8, 64):
        await throughput("ours_pair", ours_tp, clients)
        await throughput("raw_fenced_pair", raw_fenced_tp, clients)
        await throughput("redispy_lock_pair", redispy_tp, clients)


def idle_cost(client: aioredis.Redis, keys: Keyspace) -> None:
    """Redis load of an idle worker holding one symbol at default settings: one EVALSHA per
    heartbeat, which runs GET + PEXPIRE inside Redis."""
    keeper = LeaseKeeper(RedisSymbolLock(client, keys, "idle"))
    emit("idle_holder_heartbeat_interval_s", keeper.interval_s)
    emit("idle_holder_commands_per_s", 1 / keeper.interval_s)
    emit("idle_holder_redis_ops_per_s", 3 / keeper.interval_s)


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = await connect(url, timeout_s=5.0)
    keys = Keyspace(f"bench{uuid.uuid4().hex[:8]}")
    try:
        info = await client.info("server")
        emit("redis_version", info.get("redis_version", "?"))
        ratios = await latencies(client, keys)
        await throughputs(client, keys)
        idle_cost(client, keys)
        for name, value in ratios.items():  # the two headline ratios come last
            emit(name, value)
    finally:
        doomed = [k async for k in client.scan_iter(match=f"{keys.prefix}:*", count=1000)]
        for i in range(0, len(doomed), 500):
            await client.delete(*doomed[i : i + 500])
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())

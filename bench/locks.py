"""Latency and throughput of the symbol lock next to its floor (PING) and simpler locks.

    REDIS_URL=redis://127.0.0.1:6379/0 python bench/locks.py

Prints one ``name=value`` line per figure (latencies in microseconds, throughput in lock/unlock
pairs per second), then ``lock_acquire_vs_rtt`` and ``lock_pair_vs_rtt``: our p50 over PING's p50.
Everything runs under a fresh key prefix that is deleted at the end. One Python process drives
all clients, so the throughput figures are bounded by the client's CPU as much as by Redis.

Fairness: every figure uses one client (built by `connect` with its default 2 s timeouts, as the
worker does) and its one connection for the latency runs. Operations that are compared are
measured interleaved, one sample of each per round after a warm-up, so drift (CPU frequency,
other load on the machine) hits them alike; every p50 is over >= 2,000 samples. Throughput
runs alternate the three implementations over several short rounds and report the median.
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

N = 3_000
N_BATCH = 2_000
WARMUP = 200
THROUGHPUT_S = 1.0
THROUGHPUT_ROUNDS = 3
TTL_MS = 10_000

Op = Callable[[], Awaitable[object]]

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


async def interleaved(
    ops: dict[str, tuple[Op, Op | None, Op | None]], n: int = N
) -> dict[str, float]:
    """Time each op once per round, round-robin, `n` rounds after a warm-up.

    Each entry is (op, before, after): `before`/`after` run untimed around every call (to set up
    or undo what the op needs). Emits p50/p99 per op and returns the p50s.
    """
    samples: dict[str, list[int]] = {name: [] for name in ops}
    clock = time.perf_counter_ns
    for round_ in range(WARMUP + n):
        for name, (op, before, after) in ops.items():
            if before is not None:
                await before()
            t0 = clock()
            await op()
            elapsed = clock() - t0
            if after is not None:
                await after()
            if round_ >= WARMUP:
                samples[name].append(elapsed)
    p50s = {}
    for name, taken in samples.items():
        p50, p99 = percentiles(taken)
        emit(f"{name}_p50_us", p50)
        emit(f"{name}_p99_us", p99)
        p50s[name] = p50
    return p50s


async def throughput(pair: Callable[[int], Awaitable[None]], clients: int) -> float:
    """Pairs per second with `clients` tasks looping `pair` for THROUGHPUT_S."""
    done = 0
    stop_at = time.perf_counter() + THROUGHPUT_S

    async def client(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await pair(i)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - started)


async def latencies(client: aioredis.Redis, keys: Keyspace) -> dict[str, float]:
    """Per-operation p50/p99; returns the two ratios to PING."""
    prefix = keys.prefix
    lock = RedisSymbolLock(client, keys, "bench-w1", ttl_ms=TTL_MS)
    other = RedisSymbolLock(client, keys, "bench-w2", ttl_ms=TTL_MS)
    cad = client.register_script(COMPARE_AND_DELETE)
    await client.script_load(COMPARE_AND_DELETE)

    raw_key = f"{prefix}:raw:lat"

    async def raw_pair() -> None:
        await client.set(raw_key, "tok", nx=True, px=TTL_MS)
        await cad(keys=[raw_key], args=["tok"])

    pylock = client.lock(f"{prefix}:redispy:lat", timeout=TTL_MS / 1000)
    pylock_pair_lock = client.lock(f"{prefix}:redispy:lat2", timeout=TTL_MS / 1000)

    async def pylock_acquire() -> None:
        assert await pylock.acquire(blocking=False)

    async def pylock_pair() -> None:
        assert await pylock_pair_lock.acquire(blocking=False)
        await pylock_pair_lock.release()

    held: list[Lease] = []

    async def ours_acquire() -> None:
        lease = await lock.acquire("LAT")
        assert lease is not None
        held.append(lease)

    async def ours_release_held() -> None:
        assert await lock.release(held.pop())

    async def ours_pair() -> None:
        lease = await lock.acquire("PAIR")
        assert lease is not None
        assert await lock.release(lease)

    renewed = await lock.acquire("RN")
    assert renewed is not None
    released: list[Lease] = []

    async def take_for_release() -> None:
        lease = await lock.acquire("REL")
        assert lease is not None
        released.append(lease)

    async def ours_release() -> None:
        assert await lock.release(released.pop())

    p50 = await interleaved(
        {
            "ping": (client.ping, None, None),
            "raw_setnx_cad_pair": (raw_pair, None, None),
            "redispy_lock_acquire": (pylock_acquire, None, pylock.release),
            "redispy_lock_pair": (pylock_pair, None, None),
            "ours_acquire": (ours_acquire, None, ours_release_held),
            "ours_pair": (ours_pair, None, None),
            "ours_renew_1": (lambda: lock.renew([renewed]), None, None),
            "ours_release": (ours_release, take_for_release, None),
        }
    )
    await lock.release(renewed)

    batch: dict[str, tuple[Op, Op | None, Op | None]] = {
        "ping_batch_run": (client.ping, None, None)
    }
    for size in (20, 100):
        taken = [f"AF{size}-{i:03d}" for i in range(size - 1)]
        for symbol in taken:
            assert await other.acquire(symbol) is not None
        ranked = [*taken, f"AF{size}-free"]

        async def first(ranked: list[str] = ranked) -> None:
            lease = await lock.acquire_first(ranked)
            assert lease is not None
            held.append(lease)

        batch[f"ours_acquire_first_{size}_{size - 1}_taken"] = (first, None, ours_release_held)

    acquired = [await lock.acquire(f"RB-{i:03d}") for i in range(100)]
    leases = [lease for lease in acquired if lease is not None]
    assert len(leases) == 100
    batch["ours_renew_batch_100"] = (lambda: lock.renew(leases), None, None)
    await interleaved(batch, n=N_BATCH)

    ping = p50["ping"]
    return {
        "lock_acquire_vs_rtt": p50["ours_acquire"] / ping,
        "lock_pair_vs_rtt": p50["ours_pair"] / ping,
    }


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

    contenders = {
        "ours_pair": ours_tp,
        "raw_fenced_pair": raw_fenced_tp,
        "redispy_lock_pair": redispy_tp,
    }
    for clients in (8, 64):
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(THROUGHPUT_ROUNDS):  # alternate, so drift hits all three alike
            for name, pair in contenders.items():
                rates[name].append(await throughput(pair, clients))
        for name, measured in rates.items():
            emit(f"{name}_c{clients}_pairs_per_s", statistics.median(measured))
        emit(
            f"ours_vs_raw_fenced_c{clients}",
            statistics.median(rates["ours_pair"]) / statistics.median(rates["raw_fenced_pair"]),
        )


def idle_cost(client: aioredis.Redis, keys: Keyspace) -> None:
    """Redis load of one idle worker holding one symbol at default settings.

    Per heartbeat period (TTL / 3 = 3.33 s by default, for the lease keeper and for the worker's
    registry refresh alike): one EVALSHA renew.lua (MGET + PEXPIRE inside) and one EVALSHA
    register.lua (HSET + PEXPIRE inside). `commands` counts what the worker sends (the commands
    in INFO commandstats' EVALSHA line); `redis_ops` adds the commands the scripts run.
    """
    keeper = LeaseKeeper(RedisSymbolLock(client, keys, "idle"))
    per_beat_commands = 2  # renew + registry refresh, one EVALSHA each
    per_beat_ops = per_beat_commands * 3
    emit("idle_holder_heartbeat_interval_s", keeper.interval_s)
    emit("idle_holder_commands_per_s", per_beat_commands / keeper.interval_s)
    emit("idle_holder_redis_ops_per_s", per_beat_ops / keeper.interval_s)


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    client = await connect(url)  # default timeouts, as the worker connects
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

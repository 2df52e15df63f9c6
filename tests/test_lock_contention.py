"""Invariant 1 under real contention: several OS processes × many asyncio tasks fight over a few
symbols on one Redis. Every owner records when it held the symbol, measured *while* holding (right
after acquire returned, right before release was sent), so each recorded interval lies inside the
true ownership interval; no two may overlap, and fences must rise in acquisition order.

Times are `time.monotonic_ns()`, which on Linux (CLOCK_MONOTONIC) is one clock for every process
on the machine, so intervals from different processes compare directly.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import random
import time
import traceback
from collections import defaultdict
from typing import Any

import anyio
import pytest
import redis

from coordination.connection import connect
from coordination.keys import Keyspace
from coordination.locks import RedisSymbolLock

PROCESSES = 3
TASKS_PER_PROCESS = 8
SYMBOLS = ["005930", "000660", "035420"]
DURATION_S = 3.0

# (symbol, fence, t_acquired_ns, t_released_ns, released_ok, worker_id)
Record = tuple[str, int, int, int, bool, str]


async def _contend(redis_url: str, prefix: str, proc: int, stop_at: float) -> dict[str, Any]:
    client = await connect(redis_url)
    records: list[Record] = []
    misses = 0

    async def contender(i: int) -> None:
        nonlocal misses
        worker_id = f"p{proc}-t{i}"
        lock = RedisSymbolLock(client, Keyspace(prefix), worker_id, ttl_ms=5_000)
        rng = random.Random(proc * 1000 + i)
        while time.monotonic() < stop_at:
            if i % 2:
                lease = await lock.acquire(rng.choice(SYMBOLS))
            else:
                lease = await lock.acquire_first(rng.sample(SYMBOLS, len(SYMBOLS)))
            if lease is None:
                misses += 1
                await anyio.sleep(rng.uniform(0, 0.002))
                continue
            t_acquired = time.monotonic_ns()
            await anyio.sleep(rng.uniform(0, 0.003))  # the "work" while holding
            t_released = time.monotonic_ns()
            ok = await lock.release(lease)
            records.append((lease.symbol, lease.fence, t_acquired, t_released, ok, worker_id))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(TASKS_PER_PROCESS):
                tg.start_soon(contender, i)
    finally:
        await client.aclose()
    return {"records": records, "misses": misses}


def contend_in_process(redis_url: str, prefix: str, proc: int, barrier: Any, results: Any) -> None:
    """Child process body (module level so 'spawn' can import it)."""
    try:
        barrier.wait(timeout=30)  # every process imported and ready: start together
        stop_at = time.monotonic() + DURATION_S
        results.put((proc, anyio.run(_contend, redis_url, prefix, proc, stop_at)))
    except BaseException:
        results.put((proc, {"error": traceback.format_exc()}))


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_no_two_owners_overlap_and_fences_rise(redis_url: str, prefix: str) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=contend_in_process, args=(redis_url, prefix, p, barrier, results))
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = dict(results.get(timeout=45) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [o["error"] for o in outcomes.values() if "error" in o]
    assert not errors, errors[0]

    records: list[Record] = [r for o in outcomes.values() for r in o["records"]]
    misses = sum(o["misses"] for o in outcomes.values())
    by_symbol: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_symbol[record[0]].append(record)

    # Real contention happened, across processes, on every symbol.
    assert misses > 100
    assert set(by_symbol) == set(SYMBOLS)
    for recs in by_symbol.values():
        assert len({r[5].split("-")[0] for r in recs}) == PROCESSES

    assert all(r[4] for r in records), "a lease expired while held (TTL 5 s, holds of ms)"

    sync = redis.Redis.from_url(redis_url)
    try:
        issued = {sym: int(sync.get(f"{prefix}:fence:{sym}") or 0) for sym in SYMBOLS}
    finally:
        sync.close()

    for symbol, recs in by_symbol.items():
        recs.sort(key=lambda r: r[2])
        overlaps = [
            (a, b) for a, b in itertools.pairwise(recs) if b[2] < a[3]
        ]  # next owner started before the previous one stopped
        assert overlaps == [], f"{symbol}: {len(overlaps)} overlapping owners, e.g. {overlaps[0]}"
        fences = [r[1] for r in recs]
        assert all(a < b for a, b in itertools.pairwise(fences)), symbol
        # every fence issued was used by exactly one recorded owner
        assert fences == list(range(1, issued[symbol] + 1)), symbol

"""Invariant 1 under real contention: 4 OS processes x 16 asyncio tasks fight over 10 symbols
on one Redis for 10 s. Every owner records when it held the symbol, measured *while* holding
(right after acquire returned, right before release was sent), so each recorded interval lies
inside the true ownership interval; no two may overlap, and fences must rise in acquisition
order. An independent observer process polls the lock keys the whole time: whenever it sees a
key, the value must belong to whichever owner believed it held the symbol at that instant.

Times are `time.monotonic_ns()`, which on Linux (CLOCK_MONOTONIC) is one clock for every process
on the machine, so intervals from different processes compare directly.
"""

from __future__ import annotations

import bisect
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

PROCESSES = 4
TASKS_PER_PROCESS = 16
SYMBOLS = ["005930", "000660", "035420", "035720", "051910", "005380", "068270", "207940",
           "105560", "055550"]  # fmt: skip
DURATION_S = 10.0

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


# (t_sent_ns, t_received_ns, values of every lock key in SYMBOLS order)
Observation = tuple[int, int, tuple[str | None, ...]]


def observe_in_process(redis_url: str, prefix: str, barrier: Any, results: Any) -> None:
    """The independent observer: MGET every lock key, about every half millisecond."""
    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = [Keyspace(prefix).lock(s) for s in SYMBOLS]
        seen: list[Observation] = []
        barrier.wait(timeout=30)
        stop_at = time.monotonic() + DURATION_S
        while time.monotonic() < stop_at:
            sent = time.monotonic_ns()
            values = tuple(client.mget(keys))
            seen.append((sent, time.monotonic_ns(), values))
            time.sleep(0.0005)
        client.close()
        results.put(("observer", {"observations": seen}))
    except BaseException:
        results.put(("observer", {"error": traceback.format_exc()}))


def _contradictions(records: list[Record], observations: list[Observation]) -> list[str]:
    """Sightings that contradict an owner's belief: the owner held the symbol for the whole
    round trip of an MGET, yet the key showed another value (or none).

    Owners' intervals on one symbol are disjoint (checked before this), so the only owner that
    can cover a sighting is the last one that started before the MGET was sent: a bisection.
    """
    found = []
    by_symbol: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_symbol[r[0]].append(r)
    for col, symbol in enumerate(SYMBOLS):
        recs = sorted(by_symbol[symbol], key=lambda r: r[2])
        starts = [r[2] for r in recs]
        for sent, received, values in observations:
            i = bisect.bisect_right(starts, sent) - 1
            if i < 0:
                continue
            r = recs[i]
            if received <= r[3] and values[col] != f"{r[5]}:{r[1]}":
                found.append(f"{symbol}: {r[5]}:{r[1]} held, observer saw {values[col]}")
    return found


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_no_two_owners_overlap_and_fences_rise(redis_url: str, prefix: str) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=contend_in_process, args=(redis_url, prefix, p, barrier, results))
        for p in range(PROCESSES)
    ]
    procs.append(ctx.Process(target=observe_in_process, args=(redis_url, prefix, barrier, results)))
    for proc in procs:
        proc.start()
    try:
        outcomes = dict(results.get(timeout=75) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    errors = [o["error"] for o in outcomes.values() if "error" in o]
    assert not errors, errors[0]

    observations: list[Observation] = outcomes.pop("observer")["observations"]
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

    # The observer watched the whole run and caught owners in the act many times.
    assert len(observations) > 1_000
    held_sightings = sum(v is not None for _s, _r, values in observations for v in values)
    assert held_sightings > 1_000
    contradictions = _contradictions(records, observations)
    assert contradictions == [], f"{len(contradictions)}, e.g. {contradictions[:3]}"

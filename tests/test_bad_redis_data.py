"""Bad data in Redis is an alarm, not a stall (coordination.bad_data), against real Redis and
Postgres: garbage planted at lock, lease and fence keys and in the notice stream is logged at
ERROR, counted through the hook and repaired or skipped for that one key, while every other
symbol and entry goes on as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import anyio
import pytest
import redis.asyncio as aioredis
from loguru import logger
from support import sql

from coordination.fences import DEFAULT_HEADROOM, FenceSeeder
from coordination.keys import Keyspace
from coordination.locks import Lease, RedisSymbolLock
from coordination.notices import Notices
from coordination.reaper import LeaseReaper
from ledger.repository import Ledger
from worker.mirror import GROUP, LockMirror

pytestmark = pytest.mark.anyio

TTL_MS = 300


class Hook:
    """An `on_bad_data` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, kind: str, key: str) -> None:
        self.calls.append((kind, key))


@pytest.fixture
def errors() -> Iterator[list[str]]:
    """Messages logged at ERROR or above while the test runs."""
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="ERROR")
    yield seen
    logger.remove(sink)


async def plant(client: aioredis.Redis, key: str, kind: str) -> None:
    """Replace whatever `key` holds with a value of type `kind` and no TTL."""
    await client.delete(key)
    if kind == "hash":
        await client.hset(key, "chaos", "1")
    elif kind == "list":
        await client.rpush(key, "chaos")
    else:
        await client.set(key, kind)


async def acquire_when_free(lock: RedisSymbolLock, symbol: str, within_s: float = 3.0) -> Lease:
    with anyio.fail_after(within_s):
        while (lease := await lock.acquire(symbol)) is None:
            await anyio.sleep(0.02)
    return lease


@pytest.mark.parametrize("kind", ["hash", "list", "garbage"])
async def test_bad_lock_key_on_a_held_symbol_loses_the_lease_and_frees_the_symbol_after_a_ttl(
    redis_client: aioredis.Redis, prefix: str, errors: list[str], kind: str
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    w1 = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook)
    w2 = RedisSymbolLock(redis_client, keys, "w2", ttl_ms=TTL_MS, on_bad_data=hook)
    held, other = await w1.acquire("BAD"), await w1.acquire("OK")
    assert held is not None
    assert other is not None
    await plant(redis_client, keys.lock("BAD"), kind)

    renewed = await w1.renew([held, other])  # one batch: the bad key costs its lease alone
    assert renewed[0] is None
    assert renewed[1] is not None
    assert hook.calls == [("lock", keys.lock("BAD"))]
    assert any(keys.lock("BAD") in e for e in errors)
    # Quarantined for one TTL: nobody owns it, nobody can take it until w1 is past its deadline.
    assert await redis_client.get(keys.lock("BAD")) == b"quarantine:0"
    assert 0 < await redis_client.pttl(keys.lock("BAD")) <= TTL_MS
    assert await w2.acquire("BAD") is None
    assert await w2.acquire_first(["BAD"]) is None
    assert len(hook.calls) == 1  # the quarantine is no bad data

    taken = await acquire_when_free(w2, "BAD")
    assert taken.fence > held.fence
    assert taken.recovered_from == held.value
    assert time.monotonic() > held.valid_until  # w1 was past its own deadline first
    assert not await w1.release(held)


async def test_bad_lock_keys_met_by_acquire_first_are_skipped_and_the_next_candidate_taken(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook)
    await plant(redis_client, keys.lock("H"), "hash")
    await plant(redis_client, keys.lock("G"), "garbage")
    assert await RedisSymbolLock(redis_client, keys, "w2").acquire("T") is not None

    lease = await lock.acquire_first(["H", "G", "T", "FREE"])
    assert lease is not None
    assert (lease.symbol, lease.fence) == ("FREE", 1)
    assert hook.calls == [("lock", keys.lock("H")), ("lock", keys.lock("G"))]
    assert await redis_client.mget(keys.lock("H"), keys.lock("G")) == [b"quarantine:0"] * 2
    assert await redis_client.exists(keys.fence("H"), keys.fence("G")) == 0  # no fence burnt


async def test_a_lease_without_ttl_gets_one_and_keeps_its_value(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    await redis_client.set(keys.lock("P"), "ghost:7")  # never expires on its own
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook)
    assert await lock.acquire("P") is None
    assert hook.calls == [("lock", keys.lock("P"))]
    assert await redis_client.get(keys.lock("P")) == b"ghost:7"
    assert 0 < await redis_client.pttl(keys.lock("P")) <= TTL_MS
    assert (await acquire_when_free(lock, "P")).fence == 1


async def seed_ledger_floor(ledger: Ledger, symbol: str, fence: int) -> None:
    at = datetime.now(UTC)
    assert await ledger.lock_acquired(symbol, "old", fence, TTL_MS, at)
    await ledger.lock_released(symbol, "old", fence, at)


@pytest.mark.parametrize("kind", ["not-a-number", "hash", "-3"])
async def test_bad_fence_batch_acquire_takes_another_candidate_and_reseeds_from_the_ledger(
    redis_client: aioredis.Redis, prefix: str, ledger: Ledger, errors: list[str], kind: str
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    await seed_ledger_floor(ledger, "A", 41)
    await plant(redis_client, keys.fence("A"), kind)
    seeder = FenceSeeder(redis_client, keys)
    lock = RedisSymbolLock(
        redis_client,
        keys,
        "w1",
        ttl_ms=TTL_MS,
        on_bad_data=hook,
        reseed_fence=seeder.reseeder(ledger.max_fences),
    )
    lease = await lock.acquire_first(["A", "B"])
    assert lease is not None
    assert lease.symbol == "B"  # the best good candidate, in the same call
    assert hook.calls == [("fence", keys.fence("A"))]
    assert any(keys.fence("A") in e for e in errors)
    floor = 41 + DEFAULT_HEADROOM
    assert await redis_client.get(keys.fence("A")) == str(floor).encode()  # reseeded
    assert await redis_client.exists(keys.lock("A")) == 0

    again = await lock.acquire("A")
    assert again is not None
    assert again.fence == floor + 1  # above everything the ledger has seen
    assert len(hook.calls) == 1


async def test_bad_fence_alone_is_reseeded_and_retried_once(
    redis_client: aioredis.Redis, prefix: str, ledger: Ledger, errors: list[str]
) -> None:
    keys = Keyspace(prefix)
    await seed_ledger_floor(ledger, "A", 41)
    reseed = FenceSeeder(redis_client, keys, headroom=5).reseeder(ledger.max_fences)
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, reseed_fence=reseed)
    assert await RedisSymbolLock(redis_client, keys, "w2").acquire("T") is not None

    await plant(redis_client, keys.fence("A"), "garbage")
    first = await lock.acquire_first(["T", "A"])  # the only free one has a bad fence
    assert first is not None
    assert (first.symbol, first.fence) == ("A", 47)
    await seed_ledger_floor(ledger, "A", first.fence)  # what the worker's mirror write does
    assert await lock.release(first)

    await plant(redis_client, keys.fence("A"), "list")
    single = await lock.acquire("A")
    assert single is not None
    assert single.fence == 47 + 5 + 1  # the floor moved up with the ledger: never backwards


async def test_bad_fence_without_a_working_reseed_skips_the_symbol_alone(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()

    async def ledger_down(symbol: str) -> int:
        raise ConnectionError("ledger unreachable")

    await plant(redis_client, keys.fence("A"), "garbage")
    for reseed in (None, ledger_down):
        lock = RedisSymbolLock(
            redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook, reseed_fence=reseed
        )
        assert await lock.acquire("A") is None
        assert await lock.acquire_first(["A"]) is None
        lease = await lock.acquire_first(["A", "B"])
        assert lease is not None
        assert lease.symbol == "B"
        assert await lock.release(lease)
    assert hook.calls == [("fence", keys.fence("A"))] * 6
    assert await redis_client.get(keys.fence("A")) == b"garbage"  # left for a working reseed
    assert await redis_client.exists(keys.lock("A"), keys.lease("A")) == 0


async def test_bad_lease_meta_keys_are_replaced_or_dropped(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook)
    reaper = LeaseReaper(redis_client, keys, on_bad_data=hook)
    await plant(redis_client, keys.lease("M"), "hash")
    lease = await lock.acquire("M")  # the lock is taken as usual
    assert lease is not None
    assert lease.recovered_from is None
    assert await redis_client.get(keys.lease("M")) == lease.value.encode()
    assert hook.calls == [("lease", keys.lease("M"))]

    # The reaper drops bad meta keys and still reaps the good expired lease in the same pass.
    dead = await RedisSymbolLock(redis_client, keys, "w9", ttl_ms=50).acquire("E")
    assert dead is not None
    await plant(redis_client, keys.lease("X"), "list")
    await plant(redis_client, keys.lease("Y"), "garbage")
    await anyio.sleep(0.1)
    assert [(e.symbol, e.worker_id) for e in await reaper.expired()] == [("E", "w9")]
    assert await redis_client.exists(keys.lease("X"), keys.lease("Y")) == 0
    assert sorted(hook.calls[1:]) == [("lease", keys.lease("X")), ("lease", keys.lease("Y"))]
    # A garbage "recovered_from" is no lease to announce, not an error.
    assert await reaper.recovered("M", "w1", lease.fence, "garbage") is None


async def test_release_and_listing_meet_a_bad_lock_key(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=TTL_MS, on_bad_data=hook)
    held, other = await lock.acquire("R"), await lock.acquire("OK")
    assert held is not None
    assert other is not None
    await plant(redis_client, keys.lock("L"), "list")
    assert [i.symbol for i in await lock.live_locks()] == ["OK", "R"]  # L reported, left out
    assert await lock.holder("L") is None
    assert hook.calls == [("lock", keys.lock("L"))] * 2

    await plant(redis_client, keys.lock("R"), "hash")
    assert not await lock.release(held)
    assert await redis_client.get(keys.lock("R")) == b"quarantine:0"
    assert hook.calls[-1] == ("lock", keys.lock("R"))


async def test_a_bad_fence_key_does_not_stop_seeding_the_others(
    redis_client: aioredis.Redis, prefix: str, errors: list[str]
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    await plant(redis_client, keys.fence("H"), "hash")
    await plant(redis_client, keys.fence("G"), "1.5")
    await redis_client.set(keys.fence("HIGH"), 5_000)
    seeder = FenceSeeder(redis_client, keys, headroom=10, on_bad_data=hook)
    assert await seeder.seed({"H": 7, "G": 7, "OK": 7, "HIGH": 7}) == 3
    values = await redis_client.mget([keys.fence(s) for s in ("H", "G", "OK", "HIGH")])
    assert values == [b"17", b"17", b"17", b"5000"]  # never lowered
    assert sorted(hook.calls) == [("fence", keys.fence("G")), ("fence", keys.fence("H"))]


JUNK: list[dict[str, str | bytes]] = [
    {"type": "lock.acquired", "worker_id": "w1", "symbol": "J", "ts": "garbage", "data": "{}"},
    {"type": "lock.released", "worker_id": "w1", "symbol": "J", "data": "{}"},  # no ts
    {"type": "lock.acquired", "worker_id": "w1", "symbol": "J", "ts": "2026-01-05", "data": "{"},
    {"type": "lock.acquired", "worker_id": "w1", "symbol": "J", "ts": "2026-01-05", "data": "[]"},
    {"type": "lock.acquired", "worker_id": "w1", "symbol": "J", "ts": "2026-01-05", "data": "{}"},
    {"type": b"\xff\xfe", "worker_id": "w1", "symbol": "J", "ts": "2026-01-05", "data": "{}"},
]


async def test_mirror_applies_good_entries_once_and_dead_letters_the_junk_between_them(
    redis_client: aioredis.Redis,
    prefix: str,
    ledger: Ledger,
    database_url: str,
    errors: list[str],
) -> None:
    keys, hook = Keyspace(prefix), Hook()
    notices = Notices(redis_client, keys, on_bad_data=hook)
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=10_000)
    mirror = LockMirror(notices, ledger, "m1", batch=4, block_ms=50, claim_idle_ms=100)
    await mirror.setup()
    junk_ids = []
    for i, junk in enumerate(JUNK):
        lease = await lock.acquire(f"S{i}")
        assert lease is not None
        junk_ids.append((await redis_client.xadd(keys.events, junk)).decode())
        assert await lock.release(lease)

    # A consumer that died holding a batch: the junk in it reaches the mirror by XAUTOCLAIM.
    await redis_client.xreadgroup(GROUP, "dead", {keys.events: ">"}, count=3)
    with anyio.fail_after(10):
        while (await redis_client.xpending(keys.events, GROUP))["pending"] or mirror.applied < 12:
            await mirror.step()
    for _ in range(3):
        await mirror.step()

    rows = sql(database_url, "SELECT symbol, fence, event FROM lock_events ORDER BY symbol, event")
    assert rows == [(f"S{i}", 1, e) for i in range(len(JUNK)) for e in ("acquired", "released")]
    assert await redis_client.hget(keys.events_dead, GROUP) == str(len(JUNK)).encode()
    assert sorted(hook.calls) == sorted(("event", f"{keys.events} {i}") for i in junk_ids)
    for entry_id in junk_ids:  # logged once each, naming the entry ("1-1" is inside "1-10")
        assert sum(f" {entry_id}: " in e for e in errors) == 1
    # Each good entry handled once, and the one lock notice without a fence (dead-lettered by the
    # mirror itself); the unreadable ones never reached it.
    assert mirror.applied == 2 * len(JUNK) + 1

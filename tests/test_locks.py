"""RedisSymbolLock against a real Redis: ownership, fencing, TTL handling, the event stream."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from coordination.errors import BackendRejected, BackendUnavailable
from coordination.keys import Keyspace
from coordination.locks import Lease, RedisSymbolLock, script_source

pytestmark = pytest.mark.anyio

SYM = "005930"


def make_lock(client: aioredis.Redis, prefix: str, worker_id: str, **kw: int) -> RedisSymbolLock:
    return RedisSymbolLock(client, Keyspace(prefix), worker_id, **kw)


def s(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


async def events(client: aioredis.Redis, prefix: str) -> list[dict[str, str]]:
    entries = await client.xrange(Keyspace(prefix).events)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_acquire_sets_owner_value_with_ttl(redis_client: aioredis.Redis, prefix: str) -> None:
    lock = make_lock(redis_client, prefix, "w1", ttl_ms=5_000)
    before = time.monotonic()
    lease = await lock.acquire(SYM)
    assert lease is not None
    assert (lease.symbol, lease.worker_id, lease.fence, lease.ttl_ms) == (SYM, "w1", 1, 5_000)
    assert lease.value == "w1:1"
    assert s(await redis_client.get(f"{prefix}:lock:{SYM}")) == "w1:1"
    assert s(await redis_client.get(f"{prefix}:fence:{SYM}")) == "1"
    assert 4_000 < await redis_client.pttl(f"{prefix}:lock:{SYM}") <= 5_000
    assert before <= lease.acquired_at <= time.monotonic()
    # default safety margin: 10 % of the TTL
    assert lease.valid_until == pytest.approx(lease.acquired_at + 4.5)
    assert lease.recovered_from is None


async def test_contended_acquire_returns_none_and_burns_no_fence(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    first = await make_lock(redis_client, prefix, "w1").acquire(SYM)
    assert first is not None
    assert await make_lock(redis_client, prefix, "w2").acquire(SYM) is None
    assert await make_lock(redis_client, prefix, "w1").acquire(SYM) is None  # not re-entrant
    assert s(await redis_client.get(f"{prefix}:lock:{SYM}")) == "w1:1"
    assert s(await redis_client.get(f"{prefix}:fence:{SYM}")) == "1"


async def test_fence_strictly_rises_across_owners(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    locks = [make_lock(redis_client, prefix, w) for w in ("w1", "w2", "w3", "w1")]
    fences = []
    for lock in locks:
        lease = await lock.acquire(SYM)
        assert lease is not None
        assert (
            s(await redis_client.get(f"{prefix}:lock:{SYM}")) == f"{lock.worker_id}:{lease.fence}"
        )
        fences.append(lease.fence)
        assert await lock.release(lease)
    assert fences == [1, 2, 3, 4]
    assert s(await redis_client.get(f"{prefix}:fence:{SYM}")) == "4"


async def test_renew_replaces_the_ttl_instead_of_adding(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = make_lock(redis_client, prefix, "w1", ttl_ms=3_000)
    lease = await lock.acquire(SYM)
    assert lease is not None
    key = f"{prefix}:lock:{SYM}"
    await redis_client.pexpire(key, 500)
    (renewed,) = await lock.renew([lease])
    assert renewed is not None
    assert 2_500 < await redis_client.pttl(key) <= 3_000  # reset to the TTL, not 500 + 3000
    (again,) = await lock.renew([renewed])
    assert again is not None
    assert await redis_client.pttl(key) <= 3_000
    assert again.valid_until >= renewed.valid_until > lease.valid_until
    assert again.fence == lease.fence


async def test_renew_fails_for_a_non_owner_or_a_changed_value(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = make_lock(redis_client, prefix, "w1", ttl_ms=3_000)
    mine = await lock.acquire(SYM)
    other = await lock.acquire("000660")
    assert mine is not None
    assert other is not None
    impostor = Lease(SYM, "w2", mine.fence, 3_000, 0.0, 0.0)
    assert await make_lock(redis_client, prefix, "w2").renew([impostor]) == [None]

    key = f"{prefix}:lock:{SYM}"
    # same worker id, another fence: not our lease
    await redis_client.set(key, "w1:99", px=60_000)
    result = await lock.renew([mine, other])
    assert result[0] is None
    assert result[1] is not None
    assert result[1].symbol == "000660"
    assert await redis_client.pttl(key) > 50_000  # the foreign lease's TTL was not touched
    assert s(await redis_client.get(key)) == "w1:99"


async def test_release_by_owner_only(redis_client: aioredis.Redis, prefix: str) -> None:
    lock = make_lock(redis_client, prefix, "w1")
    lease = await lock.acquire(SYM)
    assert lease is not None
    thief = make_lock(redis_client, prefix, "w2")
    assert not await thief.release(Lease(SYM, "w2", lease.fence, lease.ttl_ms, 0.0, 0.0))
    assert not await lock.release(Lease(SYM, "w1", lease.fence + 1, lease.ttl_ms, 0.0, 0.0))
    assert s(await redis_client.get(f"{prefix}:lock:{SYM}")) == "w1:1"
    assert await lock.release(lease)
    assert await redis_client.exists(f"{prefix}:lock:{SYM}") == 0
    assert not await lock.release(lease)  # twice is a no-op


async def test_expiry_then_reacquire_with_higher_fence_reports_expired(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    dead = make_lock(redis_client, prefix, "w1", ttl_ms=100)
    lease = await dead.acquire(SYM)
    assert lease is not None
    assert await make_lock(redis_client, prefix, "w2").acquire(SYM) is None
    await anyio.sleep(0.25)  # let it expire
    taker = await make_lock(redis_client, prefix, "w2").acquire(SYM)
    assert taker is not None
    assert taker.fence == lease.fence + 1
    assert taker.recovered_from == "w1:1"
    assert not await dead.release(lease)  # too late: the lock is w2's
    assert s(await redis_client.get(f"{prefix}:lock:{SYM}")) == "w2:2"
    types = [(e["type"], e["worker_id"]) for e in await events(redis_client, prefix)]
    assert types == [("lock.acquired", "w1"), ("lock.expired", "w1"), ("lock.acquired", "w2")]
    expired = (await events(redis_client, prefix))[1]
    assert orjson.loads(expired["data"]) == {"fence": 1, "taken_over_by": "w2:2"}


async def test_acquire_first_skips_taken_symbols(redis_client: aioredis.Redis, prefix: str) -> None:
    other = make_lock(redis_client, prefix, "w2")
    assert await other.acquire("A") is not None
    assert await other.acquire("C") is not None
    lock = make_lock(redis_client, prefix, "w1")
    ranked = ["A", "B", "C", "D"]
    first = await lock.acquire_first(ranked)
    assert first is not None
    assert (first.symbol, first.fence, first.worker_id) == ("B", 1, "w1")
    second = await lock.acquire_first(ranked)
    assert second is not None
    assert second.symbol == "D"
    assert await lock.acquire_first(ranked) is None
    assert await lock.acquire_first([]) is None
    assert s(await redis_client.get(f"{prefix}:lock:B")) == "w1:1"
    assert await redis_client.exists(f"{prefix}:fence:A", f"{prefix}:fence:C") == 2
    assert s(await redis_client.get(f"{prefix}:fence:A")) == "1"  # skipped ones burn nothing


async def test_acquire_and_release_append_contract_notices(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = make_lock(redis_client, prefix, "w1", ttl_ms=4_000)
    lease = await lock.acquire(SYM)
    assert lease is not None
    assert await lock.release(lease)
    acquired, released = await events(redis_client, prefix)
    for entry in (acquired, released):
        assert set(entry) == {"type", "worker_id", "symbol", "ts", "data"}
        assert (entry["worker_id"], entry["symbol"]) == ("w1", SYM)
        ts = datetime.fromisoformat(entry["ts"])
        assert ts.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - ts) < timedelta(seconds=5)
    assert acquired["type"] == "lock.acquired"
    assert orjson.loads(acquired["data"]) == {"fence": 1, "ttl_ms": 4_000}
    assert released["type"] == "lock.released"
    assert orjson.loads(released["data"]) == {"fence": 1}
    # a failed release writes nothing
    assert not await lock.release(lease)
    assert len(await events(redis_client, prefix)) == 2


async def test_events_stream_is_trimmed_to_maxlen(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = make_lock(redis_client, prefix, "w1", events_maxlen=10)
    for _ in range(300):
        lease = await lock.acquire(SYM)
        assert lease is not None
        assert await lock.release(lease)
    # MAXLEN ~ trims whole macro nodes (100 entries by default), never below 10
    assert 10 <= await redis_client.xlen(f"{prefix}:events") < 600


async def test_ttl_at_or_below_zero_is_refused(redis_client: aioredis.Redis, prefix: str) -> None:
    for bad in (0, -5):
        with pytest.raises(ValueError, match="ttl_ms"):
            make_lock(redis_client, prefix, "w1", ttl_ms=bad)
    lock = make_lock(redis_client, prefix, "w1")
    lease = await lock.acquire(SYM)
    assert lease is not None
    with pytest.raises(ValueError, match="ttl_ms"):
        await lock.renew([Lease(SYM, "w1", lease.fence, 0, 0.0, 0.0)])

    # The scripts refuse it too, before touching anything.
    key = f"{prefix}:lock:{SYM}"
    pttl = await redis_client.pttl(key)
    with pytest.raises(rexc.ResponseError, match="ttl must be a positive integer"):
        await redis_client.eval(script_source("renew"), 1, key, lease.value, "0")
    assert 0 < await redis_client.pttl(key) <= pttl
    other = Keyspace(prefix)
    with pytest.raises(rexc.ResponseError, match="ttl must be a positive integer"):
        await redis_client.eval(
            script_source("acquire"),
            4,
            other.lock("X"),
            other.fence("X"),
            other.lease("X"),
            other.events,
            "w1",
            "-1",
            "2026-01-05T00:00:00.000+00:00",
            "100",
            "X",
        )
    assert await redis_client.exists(other.lock("X"), other.fence("X")) == 0


async def test_holder_and_live_locks(redis_client: aioredis.Redis, prefix: str) -> None:
    lock = make_lock(redis_client, prefix, "w1", ttl_ms=5_000)
    assert await lock.holder(SYM) is None
    assert await lock.live_locks() == []
    a = await lock.acquire(SYM)
    b = await make_lock(redis_client, prefix, "w:2").acquire("000660")  # ids may contain ':'
    assert a is not None
    assert b is not None
    info = await lock.holder(SYM)
    assert info is not None
    assert (info.symbol, info.worker_id, info.fence) == (SYM, "w1", 1)
    assert 4_000 < info.pttl_ms <= 5_000
    live = await lock.live_locks()
    assert [(i.symbol, i.worker_id, i.fence) for i in live] == [
        ("000660", "w:2", 1),
        (SYM, "w1", 1),
    ]
    assert await lock.release(a)
    assert [i.symbol for i in await lock.live_locks()] == ["000660"]


async def test_unreachable_redis_raises_backend_unavailable(prefix: str) -> None:
    dead = aioredis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        lock = RedisSymbolLock(dead, Keyspace(prefix), "w1", timeout_s=1.0)
        with pytest.raises(BackendUnavailable, match="acquire 005930") as caught:
            await lock.acquire(SYM)
        assert isinstance(caught.value.__cause__, rexc.ConnectionError)
        with pytest.raises(BackendUnavailable):
            await lock.renew([Lease(SYM, "w1", 1, 1_000, 0.0, 0.0)])
    finally:
        await dead.aclose()


async def test_script_error_raises_backend_rejected(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    # Bad data at a symbol's keys is reported, not raised (tests/test_bad_redis_data.py); a
    # notice stream that is no stream fails every acquire, and only a human can fix that.
    await redis_client.hset(f"{prefix}:events", "not", "a stream")
    lock = make_lock(redis_client, prefix, "w1")
    with pytest.raises(BackendRejected, match="acquire 005930") as caught:
        await lock.acquire(SYM)
    assert isinstance(caught.value.__cause__, rexc.ResponseError)
    assert "WRONGTYPE" in str(caught.value)


async def test_silent_redis_hits_the_call_deadline(prefix: str) -> None:
    # A port that accepts connections (kernel backlog) but never answers: only our own deadline
    # can end the call, since this client has no socket timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = aioredis.Redis(
            host="127.0.0.1", port=silent.getsockname()[1], retry=Retry(NoBackoff(), 0)
        )
        try:
            lock = RedisSymbolLock(client, Keyspace(prefix), "w1", timeout_s=0.3)
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match=r"no reply within 0\.3 s"):
                await lock.acquire(SYM)
            assert 0.25 < time.monotonic() - started < 1.0
        finally:
            await client.aclose()

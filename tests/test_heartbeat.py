"""LeaseKeeper against a real Redis: leases outlive their TTL while renewed, and a lost lease
(stolen key, or Redis cut off past the local deadline) is reported and cancels the holder's work.

Unreachable Redis is simulated for real: the keeper talks to Redis through a TCP relay on
loopback that the test cuts, closing every connection and the listening port.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis.asyncio as aioredis
from anyio.abc import SocketStream, TaskGroup
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from coordination.errors import LockLost
from coordination.heartbeat import LeaseKeeper
from coordination.keys import Keyspace
from coordination.locks import Lease, RedisSymbolLock

pytestmark = pytest.mark.anyio

SYM = "005930"


class Relay:
    """A TCP relay to Redis that can be cut: then Redis is unreachable through it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.local_port = 0
        self._cut = False
        self._scopes: list[anyio.CancelScope] = []

    async def start(self, tg: TaskGroup) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.local_port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def serve() -> None:
            with self._new_scope():
                async with listener:
                    await listener.serve(self._handle)

        tg.start_soon(serve)

    def _new_scope(self) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if self._cut:
            scope.cancel()
        self._scopes.append(scope)
        return scope

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            with self._new_scope():
                async with await anyio.connect_tcp(self.host, self.port) as upstream:

                    async def pump(src: SocketStream, dst: SocketStream) -> None:
                        async for chunk in src:
                            await dst.send(chunk)
                        tg.cancel_scope.cancel()  # one side closed: close both

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(pump, client, upstream)
                        tg.start_soon(pump, upstream, client)

    def cut(self) -> None:
        """Close the listening port and every relayed connection."""
        self._cut = True
        for scope in self._scopes:
            scope.cancel()


@asynccontextmanager
async def relayed_client(redis_url: str) -> AsyncIterator[tuple[Relay, aioredis.Redis]]:
    kwargs = aioredis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    relay = Relay(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)))
    async with anyio.create_task_group() as tg:
        await relay.start(tg)
        client = aioredis.Redis(
            host="127.0.0.1",
            port=relay.local_port,
            db=int(kwargs.get("db", 0)),
            password=kwargs.get("password"),
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            yield relay, client
        finally:
            await client.aclose()
            relay.cut()


class LostLog:
    def __init__(self) -> None:
        self.calls: list[tuple[Lease, str]] = []

    async def __call__(self, lease: Lease, reason: str) -> None:
        self.calls.append((lease, reason))


async def wait_for(cond: object, timeout: float = 3.0) -> float:
    """Poll `cond()` every 5 ms; returns time.monotonic() when it first held."""
    assert callable(cond)
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.005)
    return time.monotonic()


async def test_keeper_keeps_a_short_lease_alive_well_past_its_ttl(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = RedisSymbolLock(redis_client, Keyspace(prefix), "w1", ttl_ms=300)
    lost = LostLog()
    keeper = LeaseKeeper(lock, on_lost=lost)
    assert keeper.interval_s == pytest.approx(0.1)
    lease = await lock.acquire(SYM)
    assert lease is not None
    keeper.add(lease)
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        for _ in range(8):  # 1.2 s = 4 TTLs
            await anyio.sleep(0.15)
            assert keeper.valid(SYM)
            assert await RedisSymbolLock(redis_client, Keyspace(prefix), "w2").acquire(SYM) is None
        tg.cancel_scope.cancel()
    assert lost.calls == []
    current = keeper.lease(SYM)
    assert current is not None
    assert current.fence == lease.fence
    assert current.valid_until > lease.valid_until + 1.0
    assert await redis_client.get(f"{prefix}:lock:{SYM}") == b"w1:1"


async def test_stolen_lease_is_reported_lost_and_cancels_its_guard(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix)
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=2_000)
    lost = LostLog()
    keeper = LeaseKeeper(lock, interval_s=0.05, on_lost=lost)
    lease = await lock.acquire(SYM)
    assert lease is not None
    keeper.add(lease)
    outcome: dict[str, object] = {}

    async def hold_with_guard() -> None:
        try:
            async with keeper.guard(SYM) as held:
                assert held is lease
                await anyio.sleep(30)
            outcome["guard"] = "finished"  # must not happen
        except LockLost as exc:
            outcome["guard"] = exc.reason
            outcome["guard_at"] = time.monotonic()

    async def hold_with_scope() -> None:
        with keeper.scope(SYM) as scope:
            await anyio.sleep(30)
        outcome["scope"] = scope.cancelled_caught

    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        tg.start_soon(hold_with_guard)
        tg.start_soon(hold_with_scope)
        await anyio.sleep(0.2)
        assert "guard" not in outcome
        await redis_client.set(keys.lock(SYM), "thief:7", px=5_000)  # stolen
        stolen_at = time.monotonic()
        await wait_for(lambda: "guard" in outcome and "scope" in outcome)
        tg.cancel_scope.cancel()

    assert outcome["scope"] is True
    assert outcome["guard"] == "lock key gone or owned by another worker"
    assert isinstance(outcome["guard_at"], float)
    assert outcome["guard_at"] - stolen_at < 0.5  # one renew interval, plus slack
    assert not keeper.valid(SYM)
    assert keeper.lease(SYM) is None
    assert [(lost_lease.fence, reason) for lost_lease, reason in lost.calls] == [
        (1, "lock key gone or owned by another worker")
    ]
    entries = await redis_client.xrange(keys.events)
    types = [fields[b"type"] for _, fields in entries]
    assert types == [b"lock.acquired", b"lock.lost"]
    assert await redis_client.get(keys.lock(SYM)) == b"thief:7"  # the keeper did not touch it
    with pytest.raises(LockLost):
        async with keeper.guard(SYM):
            pass


async def test_renew_once_reports_a_deleted_key(redis_client: aioredis.Redis, prefix: str) -> None:
    keys = Keyspace(prefix)
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=5_000)
    lost = LostLog()
    keeper = LeaseKeeper(lock, on_lost=lost)
    a, b = await lock.acquire("A"), await lock.acquire("B")
    assert a is not None
    assert b is not None
    keeper.add(a)
    keeper.add(b)
    await redis_client.delete(keys.lock("A"))
    await keeper.renew_once()
    assert [lease.symbol for lease, _ in lost.calls] == ["A"]
    assert not keeper.valid("A")
    assert keeper.valid("B")
    assert keeper.scope("A").cancel_called  # a scope on a lost symbol starts cancelled


async def test_valid_turns_false_at_the_local_deadline_when_redis_is_cut_off(
    redis_client: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    keys = Keyspace(prefix)
    async with relayed_client(redis_url) as (relay, via_relay):
        lock = RedisSymbolLock(via_relay, keys, "w1", ttl_ms=600, safety_ms=150, timeout_s=0.3)
        lost = LostLog()
        keeper = LeaseKeeper(lock, interval_s=0.1, on_lost=lost)
        lease = await lock.acquire(SYM)
        assert lease is not None
        keeper.add(lease)
        outcome: dict[str, object] = {}

        async def hold() -> None:
            try:
                async with keeper.guard(SYM):
                    await anyio.sleep(30)
            except LockLost as exc:
                outcome["guard_at"] = time.monotonic()
                outcome["reason"] = exc.reason

        async with anyio.create_task_group() as tg:
            tg.start_soon(keeper.run)
            tg.start_soon(hold)
            await anyio.sleep(1.0)  # beyond the TTL: renewals through the relay work
            assert keeper.valid(SYM)
            relay.cut()
            current = keeper.lease(SYM)
            assert current is not None
            deadline = current.valid_until  # last successful renew + ttl - safety
            invalid_at = await wait_for(lambda: not keeper.valid(SYM))
            # The server-side key outlives the local deadline by at least the safety margin,
            # so the holder stops before anyone else can take the symbol.
            pttl = await redis_client.pttl(keys.lock(SYM))
            await wait_for(lambda: "guard_at" in outcome and lost.calls)
            tg.cancel_scope.cancel()

    assert deadline <= invalid_at < deadline + 0.1
    assert pttl > 0
    assert isinstance(outcome["guard_at"], float)
    assert outcome["guard_at"] < deadline + 0.1  # the guard's own deadline fired on time
    assert len(lost.calls) == 1
    assert lost.calls[0][1].startswith("local deadline passed without a renewal")
    # The keeper could not reach Redis, so it published no lock.lost notice.
    types = [fields[b"type"] for _, fields in await redis_client.xrange(keys.events)]
    assert types == [b"lock.acquired"]


async def test_interval_must_leave_room_before_the_deadline(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    lock = RedisSymbolLock(redis_client, Keyspace(prefix), "w1", ttl_ms=1_000)
    with pytest.raises(ValueError, match="interval_s"):
        LeaseKeeper(lock, interval_s=0.95)  # past ttl - safety (0.9 s)
    with pytest.raises(ValueError, match="interval_s"):
        LeaseKeeper(lock, interval_s=0)


async def test_removed_lease_is_no_longer_renewed(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix)
    lock = RedisSymbolLock(redis_client, keys, "w1", ttl_ms=5_000)
    keeper = LeaseKeeper(lock)
    lease = await lock.acquire(SYM)
    assert lease is not None
    keeper.add(lease)
    await redis_client.pexpire(keys.lock(SYM), 1_000)
    assert keeper.remove(SYM) is lease
    await keeper.renew_once()
    assert await redis_client.pttl(keys.lock(SYM)) <= 1_000
    assert not keeper.valid(SYM)


async def test_a_lock_key_turned_into_another_type_is_a_lost_lease_not_a_failed_batch(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix)
    bad: list[tuple[str, str]] = []
    lock = RedisSymbolLock(
        redis_client, keys, "w1", ttl_ms=5_000, on_bad_data=lambda k, key: bad.append((k, key))
    )
    lost = LostLog()
    keeper = LeaseKeeper(lock, on_lost=lost)
    a, b = await lock.acquire("A"), await lock.acquire("B")
    assert a is not None
    assert b is not None
    keeper.add(a)
    keeper.add(b)
    await redis_client.delete(keys.lock("A"))
    await redis_client.hset(keys.lock("A"), "chaos", "1")  # no TTL: would strand A for good
    await keeper.renew_once()
    assert [(lease.symbol, reason) for lease, reason in lost.calls] == [
        ("A", "lock key gone or owned by another worker")
    ]
    assert not keeper.valid("A")
    assert keeper.valid("B")
    current = keeper.lease("B")
    assert current is not None
    assert current.valid_until > b.valid_until  # B was renewed in the same batch
    assert bad == [("lock", keys.lock("A"))]
    assert await redis_client.get(keys.lock("A")) == b"quarantine:0"
    assert 0 < await redis_client.pttl(keys.lock("A")) <= 5_000  # repaired: it expires

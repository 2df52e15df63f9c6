"""WorkerRegistry against a real Redis: the contract's hash fields, TTL refresh, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis.asyncio as aioredis

from coordination.keys import Keyspace
from coordination.registry import WorkerRegistry

pytestmark = pytest.mark.anyio

KST = ZoneInfo("Asia/Seoul")
BEAT = datetime(2026, 1, 5, 9, 30, 0, 123000, tzinfo=KST)


async def test_update_writes_contract_fields_with_ttl(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=5_000)
    await registry.update(
        "w1", state="HOLD", symbol="005930", pid=4242, host="box-1", heartbeat_at=BEAT
    )
    key = f"{prefix}:worker:w1"
    raw = {k.decode(): v.decode() for k, v in (await redis_client.hgetall(key)).items()}
    assert raw == {
        "state": "HOLD",
        "symbol": "005930",
        "pid": "4242",
        "host": "box-1",
        "heartbeat_at": "2026-01-05T00:30:00.123+00:00",  # stored in UTC
    }
    assert 4_000 < await redis_client.pttl(key) <= 5_000

    (info,) = await registry.list_workers()
    assert (info.worker_id, info.state, info.symbol, info.pid, info.host) == (
        "w1",
        "HOLD",
        "005930",
        4242,
        "box-1",
    )
    assert info.heartbeat_at == BEAT  # same instant
    assert info.heartbeat_at.utcoffset() == timedelta(0)
    assert 4_000 < info.pttl_ms <= 5_000


async def test_update_replaces_fields_and_resets_the_ttl(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=5_000)
    await registry.update("w1", state="HOLD", symbol="005930", pid=1, host="h", heartbeat_at=BEAT)
    await redis_client.pexpire(f"{prefix}:worker:w1", 200)
    later = BEAT + timedelta(seconds=3)
    await registry.update("w1", state="SCAN", symbol=None, pid=1, host="h", heartbeat_at=later)
    (info,) = await registry.list_workers()
    assert (info.state, info.symbol, info.heartbeat_at) == ("SCAN", None, later)
    assert info.pttl_ms > 4_000


async def test_workers_listed_sorted_and_removed(redis_client: aioredis.Redis, prefix: str) -> None:
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=5_000)
    for wid in ("w3", "w1", "w2"):
        await registry.update(wid, state="IDLE", symbol=None, pid=1, host="h", heartbeat_at=BEAT)
    # keys of other kinds under the prefix are not workers
    await redis_client.set(f"{prefix}:lock:005930", "w1:1")
    assert [w.worker_id for w in await registry.list_workers()] == ["w1", "w2", "w3"]
    assert await registry.remove("w2")
    assert not await registry.remove("w2")
    assert [w.worker_id for w in await registry.list_workers()] == ["w1", "w3"]


async def test_silent_worker_expires(redis_client: aioredis.Redis, prefix: str) -> None:
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=100)
    await registry.update("w1", state="HOLD", symbol="A", pid=1, host="h", heartbeat_at=BEAT)
    assert len(await registry.list_workers()) == 1
    await anyio.sleep(0.25)
    assert await registry.list_workers() == []


async def test_bad_arguments_are_refused(redis_client: aioredis.Redis, prefix: str) -> None:
    with pytest.raises(ValueError, match="ttl_ms"):
        WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=0)
    registry = WorkerRegistry(redis_client, Keyspace(prefix), ttl_ms=1_000)
    with pytest.raises(ValueError, match="timezone-aware"):
        await registry.update(
            "w1", state="IDLE", symbol=None, pid=1, host="h", heartbeat_at=datetime(2026, 1, 5)
        )
    with pytest.raises(ValueError, match="worker_id"):
        await registry.update(
            "", state="IDLE", symbol=None, pid=1, host="h", heartbeat_at=datetime.now(UTC)
        )

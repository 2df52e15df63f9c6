"""Notices against a real Redis: publish/read, consumer groups, taking over a dead consumer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anyio
import pytest
import redis.asyncio as aioredis

from coordination.keys import Keyspace
from coordination.notices import Notices, NoticeType

pytestmark = pytest.mark.anyio


async def test_publish_then_read_in_order(redis_client: aioredis.Redis, prefix: str) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    first = await notices.publish(
        NoticeType.WORKER_STATE, "w1", None, {"from": "IDLE", "to": "SCAN"}
    )
    second = await notices.publish(
        NoticeType.ORDER_FILLED, "w1", "005930", {"qty": 10, "price": Decimal("71200")}
    )
    third = await notices.publish(NoticeType.RISK_HALT, "w2", None)

    got = await notices.read()
    assert [n.id for n in got] == [first, second, third]
    state, filled, halt = got
    assert state.type is NoticeType.WORKER_STATE
    assert (state.worker_id, state.symbol, dict(state.data)) == (
        "w1",
        None,
        {"from": "IDLE", "to": "SCAN"},
    )
    assert filled.type == "order.filled"
    assert filled.symbol == "005930"
    assert dict(filled.data) == {"qty": 10, "price": "71200"}  # money stays exact
    assert dict(halt.data) == {}
    for notice in got:
        assert notice.ts.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - notice.ts) < timedelta(seconds=5)

    assert [n.id for n in await notices.read(since_id=first)] == [second, third]
    assert [n.id for n in await notices.read(count=1)] == [first]
    assert await notices.read(since_id=third) == []

    raw = await redis_client.xrange(f"{prefix}:events", count=1)
    assert set(raw[0][1]) == {b"type", b"worker_id", b"symbol", b"ts", b"data"}


async def test_unknown_types_are_kept_as_strings(redis_client: aioredis.Redis, prefix: str) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    await redis_client.xadd(
        f"{prefix}:events",
        {
            "type": "fleet.future",
            "worker_id": "w9",
            "symbol": "",
            "ts": "2026-01-05T00:00:00.000+00:00",
            "data": "{}",
        },
    )
    (notice,) = await notices.read()
    assert notice.type == "fleet.future"
    assert not isinstance(notice.type, NoticeType)


async def test_stream_is_trimmed(redis_client: aioredis.Redis, prefix: str) -> None:
    notices = Notices(redis_client, Keyspace(prefix), maxlen=10)
    for i in range(400):
        await notices.publish(NoticeType.WORKER_STATE, f"w{i}", None)
    assert 10 <= await redis_client.xlen(f"{prefix}:events") < 400


async def test_consumer_group_consume_and_ack(redis_client: aioredis.Redis, prefix: str) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    assert await notices.ensure_group("ledger")
    assert not await notices.ensure_group("ledger")  # idempotent
    ids = [await notices.publish(NoticeType.LOCK_LOST, "w1", f"S{i}") for i in range(3)]

    batch = await notices.consume("ledger", "c1", count=2)
    assert [n.id for n in batch] == ids[:2]
    rest = await notices.consume("ledger", "c1", count=10)
    assert [n.id for n in rest] == ids[2:]
    assert await notices.consume("ledger", "c1") == []

    assert (await redis_client.xpending(f"{prefix}:events", "ledger"))["pending"] == 3
    assert await notices.ack("ledger", ids) == 3
    assert await notices.ack("ledger", ids) == 0
    assert await notices.ack("ledger", []) == 0
    assert (await redis_client.xpending(f"{prefix}:events", "ledger"))["pending"] == 0


async def test_consume_blocks_until_a_notice_arrives(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    await notices.ensure_group("g", start_id="$")
    got = []

    async def reader() -> None:
        got.extend(await notices.consume("g", "c1", block_ms=1_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.sleep(0.1)
        assert got == []
        await notices.publish(NoticeType.RISK_HALT, "w1", None, {"loss": "-500000"})
    assert [n.type for n in got] == [NoticeType.RISK_HALT]


async def test_block_longer_than_socket_timeout_is_refused(redis_url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
    try:
        notices = Notices(client, Keyspace(prefix))
        with pytest.raises(ValueError, match="socket timeout"):
            await notices.consume("g", "c1", block_ms=500)
    finally:
        await client.aclose()


async def test_autoclaim_takes_over_a_dead_consumers_pending_notices(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    await notices.ensure_group("g")
    ids = [await notices.publish(NoticeType.ORDER_FILLED, "w1", "A", {"n": i}) for i in range(3)]
    assert len(await notices.consume("g", "dead", count=10)) == 3  # read, never acked

    assert await notices.autoclaim("g", "alive", min_idle_ms=5_000) == []  # not idle long enough
    await anyio.sleep(0.15)
    claimed = await notices.autoclaim("g", "alive", min_idle_ms=100)
    assert [n.id for n in claimed] == ids
    assert [n.data["n"] for n in claimed] == [0, 1, 2]
    pending = await redis_client.xpending_range(f"{prefix}:events", "g", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"alive"}
    assert await notices.ack("g", [n.id for n in claimed]) == 3
    assert await notices.autoclaim("g", "alive", min_idle_ms=0) == []


async def test_autoclaim_respects_count(redis_client: aioredis.Redis, prefix: str) -> None:
    notices = Notices(redis_client, Keyspace(prefix))
    await notices.ensure_group("g")
    for i in range(5):
        await notices.publish(NoticeType.LOCK_EXPIRED, "w1", f"S{i}")
    await notices.consume("g", "dead", count=10)
    first = await notices.autoclaim("g", "alive", min_idle_ms=0, count=2)
    assert [n.symbol for n in first] == ["S0", "S1"]
    rest = await notices.autoclaim("g", "other", min_idle_ms=0, count=10)
    # everything is pending again for someone: a second claim takes all five, idle or not
    assert {n.symbol for n in rest} == {f"S{i}" for i in range(5)}


JUNK = [
    {"type": "order.filled", "worker_id": "w1", "symbol": "A", "ts": "garbage", "data": "{}"},
    {"type": "order.filled", "worker_id": "w1", "symbol": "A", "data": "{}"},
    {"type": "order.filled", "ts": "2026-01-05T00:00:00.000+00:00", "data": "not json"},
]


async def test_unreadable_entries_are_dead_lettered_once_and_never_fail_a_call(
    redis_client: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix)
    bad: list[tuple[str, str]] = []
    notices = Notices(redis_client, keys, on_bad_data=lambda kind, key: bad.append((kind, key)))
    await notices.ensure_group("g")
    good, junk = [], []
    for entry in JUNK:
        good.append(await notices.publish(NoticeType.RISK_HALT, "w1", None))
        junk.append((await redis_client.xadd(keys.events, entry)).decode())
    good.append(await notices.publish(NoticeType.RISK_HALT, "w2", None))

    assert [n.id for n in await notices.read(count=100)] == good  # skipped, nobody to ack for
    assert bad == []
    assert [n.id for n in await notices.consume("g", "c1", count=3)] == good[:2]
    assert bad == [("event", f"{keys.events} {junk[0]}")]
    rest = await notices.consume("g", "c1", count=100)
    assert [n.id for n in rest] == good[2:]
    assert [key for _, key in bad] == [f"{keys.events} {i}" for i in junk]
    assert await redis_client.hget(keys.events_dead, "g") == b"3"
    pending = await redis_client.xpending(keys.events, "g")
    assert pending["pending"] == len(good)  # the junk is acknowledged, the good awaits its ack

    # A second group dead-letters the same junk for itself; a claim does not count it again.
    await notices.ensure_group("h")
    await redis_client.xreadgroup("h", "dead", {keys.events: ">"})  # read raw, then died
    claimed = await notices.autoclaim("h", "alive", min_idle_ms=0)
    assert [n.id for n in claimed] == good
    assert await redis_client.hget(keys.events_dead, "h") == b"3"
    assert await notices.autoclaim("h", "alive", min_idle_ms=0) == claimed  # good ones, not acked
    assert await notices.dead_letter("h", [(junk[0], "again")]) == 0
    assert await redis_client.hget(keys.events_dead, "h") == b"3"
    assert len(bad) == 6

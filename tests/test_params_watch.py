"""The live parameters' watch (`RedisParams.watch`) against real Redis: while it runs, a worker's
step reads the version without a round trip until a change is announced on the notice stream,
a set published without a notice is seen after a quiet stream, and once it stops every read
goes to Redis again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from loguru import logger

from coordination.connection import connect
from coordination.keys import Keyspace
from coordination.notices import Notices, NoticeType
from coordination.params import RedisParams

pytestmark = pytest.mark.anyio


class Counted:
    """A real client to the real server whose GETs are counted (the round trips a step saves)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.gets = 0
        inner = client.execute_command

        async def execute(*args: Any, **options: Any) -> Any:
            if args and args[0] in ("GET", b"GET"):
                self.gets += 1
            return await inner(*args, **options)

        client.execute_command = execute  # type: ignore[method-assign]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = await connect(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.01)


async def test_a_watched_version_costs_no_get_until_a_change_is_announced(
    client: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix)
    counted = Counted(client)
    store = RedisParams(client, keys, watch_block_ms=1_500)
    notices = Notices(client, keys)
    await store.publish(1, {"STOP_LOSS_PCT": "0.8"})

    async def steps_without_get(n: int = 50) -> bool:
        before = counted.gets
        versions = {await store.version() for _ in range(n)}
        return counted.gets == before and len(versions) == 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.watch)
        tg.start_soon(store.watch)  # a second worker of the process: it waits to take over
        await eventually(steps_without_get)
        assert await store.version() == 1

        # announced: the first read after the watch heard it goes to Redis, then none again
        await store.publish(2, {"STOP_LOSS_PCT": "0.7"})
        await notices.publish(NoticeType.PARAMS_CHANGED, "", None, {"version": 2})
        await eventually(lambda: _is(store, 2))
        assert await steps_without_get()

        # other notices change nothing
        for _ in range(3):
            await notices.publish(NoticeType.WORKER_STATE, "w1", None, {"to": "SCAN"})
        assert await store.version() == 2

        # published without a notice (a republish after a Redis restart): seen once the stream
        # has been quiet for the watch's block time
        await store.publish(3, {})
        await eventually(lambda: _is(store, 3), timeout=5.0)
        tg.cancel_scope.cancel()

    # no watch: every read is a GET again
    before = counted.gets
    assert await store.version() == 3
    assert await store.version() == 3
    assert counted.gets == before + 2


async def _is(store: RedisParams, version: int) -> bool:
    return await store.version() == version


async def test_a_watch_on_a_broken_stream_leaves_every_read_to_redis_until_it_is_mended(
    client: aioredis.Redis, prefix: str
) -> None:
    """The notice stream's key holding something else (WRONGTYPE): the watch logs it once and
    retries; meanwhile every read is a GET (never a stale version) and nothing fails."""
    keys = Keyspace(prefix)
    await client.set(keys.events, "not a stream")
    counted = Counted(client)
    store = RedisParams(client, keys)
    await store.publish(5, {})
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.watch)
            with anyio.fail_after(10):
                while not any("watch stopped" in line for line in lines):
                    await anyio.sleep(0.01)
            before = counted.gets
            assert [await store.version() for _ in range(5)] == [5] * 5
            assert counted.gets == before + 5

            await client.delete(keys.events)  # mended: the watch is back at its next try
            await eventually(lambda: _free(store, counted))
            tg.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    assert sum("watch stopped" in line for line in lines) == 1


async def _free(store: RedisParams, counted: Counted) -> bool:
    before = counted.gets
    await store.version()
    return counted.gets == before

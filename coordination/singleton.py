"""`RedisSingleton`: one holder per fleet for a job that must run once (the account
reconciliation), with a standby in every other process that takes over when the holder dies.

The lease is ``{prefix}:singleton:{name}`` (string holder id, PX TTL). `hold` takes or extends
it (one script: free or ours -> ours, with the TTL replaced); `release` deletes it if it is still
ours. A holder renews every third of the TTL; one that dies (SIGKILL) or stalls stops renewing
and the key expires, so a standby's next `hold` takes it within one TTL plus one retry period.

`exclusive(body)` runs `body` only while this process holds the lease: it is started when the
lease is taken and cancelled as soon as a renewal fails (lost to another holder, or Redis away
past the TTL, when another process may have taken it). Every call is bounded by `timeout_s`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis
from loguru import logger

from coordination._wire import DEFAULT_TIMEOUT_S, LuaScript, bounded
from coordination.errors import CoordinationError
from coordination.keys import Keyspace

_RENEW = LuaScript("singleton_renew")
_RELEASE = LuaScript("singleton_release")


class RedisSingleton:
    """The fleet-wide lease of one singleton job (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        name: str,
        holder_id: str,
        *,
        ttl_ms: int = 10_000,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms!r}")
        self.redis = redis
        self.key = keys.singleton(name)
        self.name = name
        self.holder_id = holder_id
        self.ttl_ms = ttl_ms
        self.timeout_s = timeout_s

    async def hold(self) -> bool:
        """Take the lease if it is free, or extend it if it is ours; True when ours after."""
        async with bounded(f"hold {self.name}", self.timeout_s):
            return int(await _RENEW(self.redis, 1, self.key, self.holder_id, self.ttl_ms)) == 1

    async def release(self) -> bool:
        """Give the lease up if it is still ours (a standby takes it at once)."""
        async with bounded(f"release {self.name}", self.timeout_s):
            return int(await _RELEASE(self.redis, 1, self.key, self.holder_id)) == 1

    async def holder(self) -> str | None:
        async with bounded(f"holder of {self.name}", self.timeout_s):
            value = await self.redis.get(self.key)
        return None if value is None else value.decode() if isinstance(value, bytes) else value

    async def exclusive(self, body: Callable[[], Awaitable[object]]) -> None:
        """Run `body` whenever this process holds the lease, until cancelled (see the module
        docstring). `body` returning ends a tenure: the lease is released and taken again."""
        period = self.ttl_ms / 3000
        while True:
            try:
                held = await self.hold()
            except CoordinationError as exc:
                logger.warning("{} lease not checked, retrying: {}", self.name, exc)
                held = False
            if held:
                logger.info("{}: this process holds the lease ({})", self.name, self.holder_id)
                try:
                    await self._tenure(body, period)
                except Exception:  # the job's own failure: logged, the lease is taken again
                    logger.exception("{}: the job failed; retrying", self.name)
            await anyio.sleep(period)

    async def _tenure(self, body: Callable[[], Awaitable[object]], period: float) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def run_body() -> None:
                    await body()
                    tg.cancel_scope.cancel()

                tg.start_soon(run_body)
                # renewal failures are tolerated while the lease cannot have expired yet
                deadline = anyio.current_time() + self.ttl_ms / 1000
                while True:
                    await anyio.sleep(period)
                    try:
                        if not await self.hold():
                            logger.warning("{}: lease taken by another holder", self.name)
                            break
                        deadline = anyio.current_time() + self.ttl_ms / 1000
                    except CoordinationError as exc:
                        if anyio.current_time() + period >= deadline:
                            logger.error("{}: lease not renewed within its TTL, stopping: {}",
                                         self.name, exc)  # fmt: skip
                            break
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.release()
                except CoordinationError as exc:
                    logger.warning("{}: lease not released (it expires): {}", self.name, exc)

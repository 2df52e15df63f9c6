"""The worker registry: one hash per live worker, ``{prefix}:worker:{worker_id}``.

Fields: ``state``, ``symbol`` (empty when none), ``pid``, ``host``, ``heartbeat_at`` (ISO 8601
UTC, milliseconds), ``params`` (the version of the fleet's live parameters the worker runs; 0:
the environment's). The hash carries a PX TTL that every `update` resets, so a worker that stops
updating (SIGKILL, partition) drops out of the registry on its own after `ttl_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from coordination._wire import (
    DEFAULT_TIMEOUT_S,
    LuaScript,
    bounded,
    call_deadline,
    parse_iso,
    text,
    utc_iso,
)
from coordination.keys import Keyspace

_SCAN_COUNT = 500
_REGISTER = LuaScript("register")


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker as Redis sees it now. `pttl_ms` is what is left of its entry's TTL."""

    worker_id: str
    state: str
    symbol: str | None
    pid: int
    host: str
    heartbeat_at: datetime
    pttl_ms: int
    #: version of the live parameters it runs (0: the environment's; None: not reported)
    params_version: int | None = None


class WorkerRegistry:
    """Register, refresh and list workers. Every call is bounded by `timeout_s`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        ttl_ms: int,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be a positive integer, got {ttl_ms!r}")
        self.redis = redis
        self.keys = keys
        self.ttl_ms = ttl_ms
        self.timeout_s = timeout_s
        self._deadline_s = call_deadline(redis, timeout_s)

    async def update(
        self,
        worker_id: str,
        *,
        state: str,
        symbol: str | None,
        pid: int,
        host: str,
        heartbeat_at: datetime,
        params_version: int | None = None,
    ) -> None:
        """Write every field and reset the entry's TTL, atomically, as one command."""
        key = self.keys.worker(worker_id)
        extra: tuple[str | int, ...] = ()
        if params_version is not None:
            extra = ("params", params_version)
        async with bounded(f"register {worker_id}", self._deadline_s):
            await _REGISTER(
                self.redis,
                1,
                key,
                self.ttl_ms,
                "state",
                state,
                "symbol",
                symbol or "",
                "pid",
                pid,
                "host",
                host,
                "heartbeat_at",
                utc_iso(heartbeat_at),
                *extra,
            )

    async def remove(self, worker_id: str) -> bool:
        """Drop the worker's entry (clean shutdown). True if it existed."""
        async with bounded(f"unregister {worker_id}", self.timeout_s):
            return int(await self.redis.delete(self.keys.worker(worker_id))) == 1

    async def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker (SCAN), sorted by id."""
        found: list[WorkerInfo] = []
        cursor: int = 0
        while True:
            async with bounded("scan workers", self.timeout_s):
                cursor, batch = await self.redis.scan(
                    cursor, match=self.keys.worker_pattern, count=_SCAN_COUNT
                )
                found += await self._describe([text(key) for key in batch])
            if int(cursor) == 0:
                break
        return sorted(found, key=lambda info: info.worker_id)

    async def _describe(self, worker_keys: list[str]) -> list[WorkerInfo]:
        if not worker_keys:
            return []
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in worker_keys:
                pipe.hgetall(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        infos = []
        for i, key in enumerate(worker_keys):
            raw: dict[Any, Any] = replies[2 * i]
            if not raw:  # expired between SCAN and HGETALL
                continue
            fields = {text(k): text(v) for k, v in raw.items()}
            infos.append(
                WorkerInfo(
                    worker_id=self.keys.worker_id_of(key),
                    state=fields.get("state", ""),
                    symbol=fields.get("symbol") or None,
                    pid=int(fields.get("pid") or 0),
                    host=fields.get("host", ""),
                    heartbeat_at=parse_iso(fields["heartbeat_at"]),
                    pttl_ms=int(replies[2 * i + 1]),
                    params_version=_int_or_none(fields.get("params")),
                )
            )
        return infos


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None

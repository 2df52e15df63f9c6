"""Finding leases whose owner stopped renewing them: `LeaseReaper` (the Redis side).

Every acquisition writes ``{prefix}:lease:{symbol}`` (no TTL) beside the lock key (PX TTL); a
release deletes both. A lease meta key whose lock key is gone therefore names a lease that
expired: its owner died (SIGKILL), stalled past its TTL, or lost Redis. `expired` lists them
(SCAN), `reap` declares one expired atomically (deletes the meta key only if it is unchanged,
appends ``lock.expired``, remembers it in ``{prefix}:reaped``), and `recovered` announces
``lock.recovered`` once a live worker holds the symbol again.

Every step is one Lua script that re-checks its condition, so any number of reapers may run at
once: a lease is reaped once and its recovery announced once. Postgres is not touched here; see
`worker.reaper` for the ledger side.

A meta key holding bad data (another type, a value that is no lease) names no lease that could
have expired: `expired` reports it (`coordination.bad_data`) and deletes it, if it still holds
that bad data, instead of failing the pass for every symbol.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, bounded, now_iso, text
from coordination.bad_data import BadData, OnBadData, report
from coordination.fences import lua
from coordination.keys import Keyspace

_SCAN_COUNT = 500


def split_value(value: str) -> tuple[str, int]:
    """``{worker_id}:{fence}`` -> (worker_id, fence); worker ids may contain ``:``."""
    worker_id, sep, fence = value.rpartition(":")
    if not sep or not fence.isdigit():
        raise ValueError(f"not a lease value: {value!r}")
    return worker_id, int(fence)


@dataclass(frozen=True)
class ExpiredLease:
    """A lease whose lock key is gone while its meta key still names it."""

    symbol: str
    worker_id: str
    fence: int

    @property
    def value(self) -> str:
        return f"{self.worker_id}:{self.fence}"


class LeaseReaper:
    """Reaps expired leases under one prefix. Every call is bounded by `timeout_s`; bad data is
    reported through `on_bad_data(kind, key)`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        events_maxlen: int = 100_000,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_bad_data: OnBadData | None = None,
    ) -> None:
        if events_maxlen <= 0:
            raise ValueError(f"events_maxlen must be positive, got {events_maxlen!r}")
        self.redis = redis
        self.keys = keys
        self.events_maxlen = events_maxlen
        self.timeout_s = timeout_s
        self._on_bad_data = on_bad_data
        self._reap = redis.register_script(lua("reap"))
        self._recover = redis.register_script(lua("recover"))
        self._drop_bad_lease = redis.register_script(lua("drop_bad_lease"))

    async def expired(self) -> list[ExpiredLease]:
        """Leases whose lock key is absent now (SCAN of the meta keys), sorted by symbol."""
        found: list[ExpiredLease] = []
        cursor: int = 0
        while True:
            async with bounded("scan leases", self.timeout_s):
                cursor, batch = await self.redis.scan(
                    cursor, match=self.keys.lease_pattern, count=_SCAN_COUNT
                )
                found += await self._without_lock([text(key) for key in batch])
            if int(cursor) == 0:
                break
        return sorted(found, key=lambda lease: lease.symbol)

    async def _without_lock(self, lease_keys: list[str]) -> list[ExpiredLease]:
        if not lease_keys:
            return []
        symbols = [self.keys.symbol_of_lease(key) for key in lease_keys]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, symbol in zip(lease_keys, symbols, strict=True):
                pipe.get(key)
                pipe.exists(self.keys.lock(symbol))
            # a meta key of the wrong type fails its GET alone, not the pipeline
            replies = await pipe.execute(raise_on_error=False)
        found = []
        for i, symbol in enumerate(symbols):
            value, locked = replies[2 * i], replies[2 * i + 1]
            if isinstance(locked, Exception):
                raise locked  # EXISTS fails on no type of key: a real error
            if value is None:
                continue  # released meanwhile
            try:
                if isinstance(value, Exception):
                    raise ValueError(str(value))
                worker_id, fence = split_value(text(value))
            except ValueError:  # UnicodeDecodeError is one too
                await self._drop_bad(lease_keys[i])
                continue
            if not int(locked):  # else the lease is alive
                found.append(ExpiredLease(symbol, worker_id, fence))
        return found

    async def _drop_bad(self, key: str) -> None:
        """Delete the meta key `key` if it still holds bad data; report what it held."""
        problem = text(await self._drop_bad_lease(keys=[key]))
        if problem:
            report(self._on_bad_data, BadData.LEASE, key, f"{problem}: deleted")

    async def reap(self, lease: ExpiredLease) -> bool:
        """Declare `lease` expired: True if this call did (and appended ``lock.expired``);
        False if the lease is live again, was taken over, or another reaper got there first."""
        k = self.keys
        keys: list[str] = [k.lock(lease.symbol), k.lease(lease.symbol), k.reaped, k.events]
        args: list[EncodableT] = [lease.value, lease.symbol, now_iso(), self.events_maxlen]
        async with bounded(f"reap {lease.symbol}", self.timeout_s):
            return int(await self._reap(keys=keys, args=args)) == 1

    async def recovered(
        self, symbol: str, worker_id: str, fence: int, recovered_from: str | None = None
    ) -> ExpiredLease | None:
        """`worker_id` now owns `symbol` with `fence`: if that takes over an expired lease
        (reaped earlier, or `recovered_from` as reported by the acquire), append
        ``lock.recovered`` and return the lease taken over; else None.

        A reaped lease is announced once however many callers race; a `recovered_from` lease
        is announced on every call, so call it once per acquisition.
        """
        k = self.keys
        keys: list[str] = [k.reaped, k.events]
        args: list[EncodableT] = [
            symbol,
            worker_id,
            fence,
            recovered_from or "",
            now_iso(),
            self.events_maxlen,
        ]
        async with bounded(f"recover {symbol}", self.timeout_s):
            previous = text(await self._recover(keys=keys, args=args))
        if not previous:
            return None
        old_worker, old_fence = split_value(previous)
        return ExpiredLease(symbol, old_worker, old_fence)

    async def holders(self, symbols: list[str]) -> dict[str, tuple[str, int]]:
        """(worker_id, fence) of the current lock on each of `symbols` that is held."""
        if not symbols:
            return {}
        async with bounded("lock holders", self.timeout_s):
            values = await self.redis.mget([self.keys.lock(s) for s in symbols])
        held = {}
        for symbol, value in zip(symbols, values, strict=True):
            if value is None:  # free, or not a string (MGET answers nil for those)
                continue
            try:
                worker_id, fence = split_value(text(value))
            except ValueError:
                continue  # bad data: repaired by whoever acquires or renews it
            if fence > 0:  # fence 0: quarantined (coordination.keys), nobody holds it
                held[symbol] = (worker_id, fence)
        return held

    async def pending_recoveries(self) -> dict[str, ExpiredLease]:
        """Reaped leases whose symbol no live worker has announced taking over yet."""
        async with bounded("pending recoveries", self.timeout_s):
            raw = await self.redis.hgetall(self.keys.reaped)
        pending = {}
        for field, value in raw.items():
            symbol = text(field)
            try:
                worker_id, fence = split_value(text(value))
            except ValueError:
                continue
            pending[symbol] = ExpiredLease(symbol, worker_id, fence)
        return pending

"""Per-symbol locks in Redis with fencing tokens: `RedisSymbolLock`.

One worker owns a symbol while ``{prefix}:lock:{symbol}`` holds ``{worker_id}:{fence}``. Every
acquisition INCRs ``{prefix}:fence:{symbol}``, so fences are strictly increasing per symbol and
anything downstream (ledger, broker gateway) can refuse a writer whose fence is older than the
newest one issued. All state changes happen in Lua scripts (``coordination/lua``), each one
atomic and one round trip; acquire and release also append their notice to the events stream in
the same script, so the stream never disagrees with the keys.

Local validity: Redis expires a lease `ttl_ms` after the last successful renew as measured by the
*server's* clock. Locally we only know when we *sent* that renew (monotonic time), which is
earlier, so ``valid_until = sent_at + ttl - safety``: the safety margin covers the clock-rate
difference between the two machines and the time the holder needs to stop acting. Past
`valid_until` a holder must assume another worker may own the symbol.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT

from coordination._wire import DEFAULT_TIMEOUT_S, bounded, now_iso, text, utc_iso
from coordination.keys import Keyspace
from market.clock import Clock

# Keys examined per SCAN step by live_locks.
_SCAN_COUNT = 500


def script_source(name: str) -> str:
    """The text of ``coordination/lua/{name}.lua``."""
    return (resources.files("coordination") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def parse_value(value: str) -> tuple[str, int]:
    """Split a lock value ``{worker_id}:{fence}``; worker ids may themselves contain ``:``."""
    worker_id, sep, fence = value.rpartition(":")
    if not sep or not fence.isdigit():
        raise ValueError(f"not a lock value: {value!r}")
    return worker_id, int(fence)


@dataclass(frozen=True)
class Lease:
    """Ownership of one symbol, as last confirmed by Redis.

    `acquired_at` and `valid_until` are `time.monotonic()` seconds. `recovered_from` is the value
    of the previous lease when it had expired without being released (its owner died or
    stalled): the new owner should adopt what that worker left behind.
    """

    symbol: str
    worker_id: str
    fence: int
    ttl_ms: int
    acquired_at: float
    valid_until: float
    recovered_from: str | None = None

    @property
    def value(self) -> str:
        """The lock key's value while this lease holds it."""
        return f"{self.worker_id}:{self.fence}"

    def remaining_s(self, now: float | None = None) -> float:
        """Seconds of local validity left (negative once past `valid_until`)."""
        return self.valid_until - (time.monotonic() if now is None else now)


@dataclass(frozen=True)
class LockInfo:
    """A live lock as Redis sees it now."""

    symbol: str
    worker_id: str
    fence: int
    pttl_ms: int


def _check_ttl(ttl_ms: int) -> int:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be a positive integer, got {ttl_ms!r}")
    return ttl_ms


class RedisSymbolLock:
    """Symbol locks for one worker id, over one Redis client.

    Every method is one round trip, bounded by `timeout_s`, and raises only
    `coordination.errors` exceptions. A `BackendUnavailable` from `acquire` means the outcome is
    unknown: the lock may have been taken and will then expire after `ttl_ms`.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keyspace,
        worker_id: str,
        ttl_ms: int = 10_000,
        safety_ms: int | None = None,
        events_maxlen: int = 100_000,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Clock | None = None,
    ) -> None:
        self.ttl_ms = _check_ttl(ttl_ms)
        self.safety_ms = max(1, ttl_ms // 10) if safety_ms is None else safety_ms
        if not 0 <= self.safety_ms < ttl_ms:
            raise ValueError(f"safety_ms must be in [0, ttl_ms), got {safety_ms!r}")
        if events_maxlen <= 0:
            raise ValueError(f"events_maxlen must be positive, got {events_maxlen!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        keys.worker(worker_id)  # validates the id
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.events_maxlen = events_maxlen
        self.timeout_s = timeout_s
        self._clock = clock
        self._acquire = redis.register_script(script_source("acquire"))
        self._acquire_first = redis.register_script(script_source("acquire_first"))
        self._renew = redis.register_script(script_source("renew"))
        self._release = redis.register_script(script_source("release"))

    def _ts(self) -> str:
        return now_iso() if self._clock is None else utc_iso(self._clock.now())

    def _script_head(self) -> list[EncodableT]:
        """ARGV[1..4] of the acquire scripts: worker_id, ttl_ms, ts, stream MAXLEN."""
        return [self.worker_id, self.ttl_ms, self._ts(), self.events_maxlen]

    def _lease(self, symbol: str, fence: int, sent_at: float, expired: Any) -> Lease:
        recovered = text(expired) if expired else None
        return Lease(
            symbol=symbol,
            worker_id=self.worker_id,
            fence=fence,
            ttl_ms=self.ttl_ms,
            acquired_at=sent_at,
            valid_until=sent_at + (self.ttl_ms - self.safety_ms) / 1000,
            recovered_from=recovered,
        )

    async def acquire(self, symbol: str) -> Lease | None:
        """Take `symbol` if nobody owns it: a new lease with a fresh fence, else None."""
        k = self.keys
        keys = [k.lock(symbol), k.fence(symbol), k.lease(symbol), k.events]
        args = [*self._script_head(), symbol]
        sent_at = time.monotonic()
        async with bounded(f"acquire {symbol}", self.timeout_s):
            fence, expired = await self._acquire(keys=keys, args=args)
        if int(fence) == 0:
            return None
        return self._lease(symbol, int(fence), sent_at, expired)

    async def acquire_first(self, symbols: Sequence[str]) -> Lease | None:
        """Take the first free symbol of a ranked list in one round trip; None if all are taken."""
        if isinstance(symbols, str):
            raise TypeError("acquire_first takes a sequence of symbols, not one str")
        if not symbols:
            return None
        k = self.keys
        keys = [k.events]
        for symbol in symbols:
            keys += [k.lock(symbol), k.fence(symbol), k.lease(symbol)]
        args = [*self._script_head(), *symbols]
        sent_at = time.monotonic()
        async with bounded(f"acquire_first of {len(symbols)}", self.timeout_s):
            index, fence, expired = await self._acquire_first(keys=keys, args=args)
        if int(index) == 0:
            return None
        return self._lease(symbols[int(index) - 1], int(fence), sent_at, expired)

    async def renew(self, leases: Sequence[Lease]) -> list[Lease | None]:
        """Reset each lease's TTL to its `ttl_ms` if it is still ours, in one round trip.

        Returns, position by position, the lease with `valid_until` moved forward, or None if it
        was lost (key expired, released, or now holding another value).
        """
        if not leases:
            return []
        keys = [self.keys.lock(lease.symbol) for lease in leases]
        args: list[EncodableT] = []
        for lease in leases:
            args += [lease.value, _check_ttl(lease.ttl_ms)]
        sent_at = time.monotonic()
        async with bounded(f"renew {len(leases)} leases", self.timeout_s):
            flags = await self._renew(keys=keys, args=args)
        return [
            replace(lease, valid_until=sent_at + (lease.ttl_ms - self.safety_ms) / 1000)
            if int(flag) == 1
            else None
            for lease, flag in zip(leases, flags, strict=True)
        ]

    async def release(self, lease: Lease) -> bool:
        """Delete the lock if this exact lease still holds it. False if it was already lost."""
        k = self.keys
        keys = [k.lock(lease.symbol), k.lease(lease.symbol), k.events]
        args: list[EncodableT] = [lease.value, lease.symbol, self._ts(), self.events_maxlen]
        async with bounded(f"release {lease.symbol}", self.timeout_s):
            released = await self._release(keys=keys, args=args)
        return int(released) == 1

    async def holder(self, symbol: str) -> LockInfo | None:
        """Who owns `symbol` now, with the ms left before its lock expires; None if free."""
        key = self.keys.lock(symbol)
        async with (
            bounded(f"holder {symbol}", self.timeout_s),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = await pipe.execute()
        if value is None:
            return None
        worker_id, fence = parse_value(text(value))
        return LockInfo(symbol=symbol, worker_id=worker_id, fence=fence, pttl_ms=int(pttl))

    async def live_locks(self) -> list[LockInfo]:
        """Every lock key under the prefix (SCAN), sorted by symbol."""
        found: list[LockInfo] = []
        cursor: int = 0
        while True:
            async with bounded("scan locks", self.timeout_s):
                cursor, batch = await self.redis.scan(
                    cursor, match=self.keys.lock_pattern, count=_SCAN_COUNT
                )
                found += await self._describe([text(key) for key in batch])
            if int(cursor) == 0:
                break
        return sorted(found, key=lambda info: info.symbol)

    async def _describe(self, lock_keys: list[str]) -> list[LockInfo]:
        if not lock_keys:
            return []
        # MULTI so each GET/PTTL pair describes the same instant.
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in lock_keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        infos = []
        for i, key in enumerate(lock_keys):
            value, pttl = replies[2 * i], replies[2 * i + 1]
            if value is None:  # expired or released between SCAN and GET
                continue
            worker_id, fence = parse_value(text(value))
            symbol = self.keys.symbol_of_lock(key)
            infos.append(LockInfo(symbol, worker_id, fence, int(pttl)))
        return infos

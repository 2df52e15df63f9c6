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

Bad data at a symbol's keys (`coordination.bad_data`: a lock key of the wrong type or holding
no lease, a fence counter that is not a number) costs that symbol alone, never the call: the
scripts report it, and it is logged at ERROR, counted through `on_bad_data`, and repaired or
skipped. A lock key holding no lease is quarantined for one TTL (the lease it overwrote is lost;
its holder learns so at its next renew, and the symbol is free again once any holder is past its
local deadline); a bad fence counter is reseeded from the ledger through `reseed_fence` before
the symbol is tried once more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from coordination._wire import (
    DEFAULT_TIMEOUT_S,
    LuaScript,
    bounded,
    call_deadline,
    lua_source,
    now_iso,
    text,
    utc_iso,
)
from coordination.bad_data import BadData, OnBadData, report, script_reports
from coordination.errors import BackendUnavailable, translate
from coordination.keys import Keyspace
from coordination.lease import Lease, LockInfo, check_ttl, parse_value, renewed
from market.clock import Clock

__all__ = ["Lease", "LockInfo", "RedisSymbolLock", "ReseedFence", "parse_value", "script_source"]

ReseedFence = Callable[[str], Awaitable[object]]
"""``reseed_fence(symbol)``: repair the symbol's fence counter from the ledger's floor, so that
it never goes backwards (`coordination.fences.FenceSeeder.reseeder`). Raises on failure."""

# Keys examined per SCAN step by live_locks.
_SCAN_COUNT = 500
# Symbols whose key names a lock keeps encoded (KRX lists ~2,700); past this it starts over.
_KEY_CACHE_MAX = 8_192


def script_source(name: str) -> str:
    """The text of ``coordination/lua/{name}.lua``."""
    return lua_source(name)


# (symbol, lock key, fence key, lease key) encoded, then the lock key as str.
_SymbolKeys = tuple[bytes, bytes, bytes, bytes, str]


_ACQUIRE = LuaScript("acquire")
_ACQUIRE_FIRST = LuaScript("acquire_first")
_RENEW = LuaScript("renew")
_RELEASE = LuaScript("release")


class RedisSymbolLock:
    """Symbol locks for one worker id, over one Redis client.

    Every method is one round trip (acquiring: two, around a reseed, when a fence counter had
    to be repaired) and raises only `coordination.errors` exceptions. Each call
    is bounded in time: by the client's own socket timeouts when they are no longer than
    `timeout_s` and it does not retry (clients from `coordination.connection.connect`), else by
    an explicit `timeout_s` deadline (see `coordination._wire.call_deadline`). A
    `BackendUnavailable` from `acquire` means the outcome is unknown: the lock may have been
    taken and will then expire after `ttl_ms`.

    `on_bad_data(kind, key)` is called for each piece of bad data met (after it is logged at
    ERROR); `reseed_fence(symbol)` repairs a fence counter that is not a number. Without it such
    a symbol is skipped (logged and counted on every attempt) until someone repairs it.
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
        on_bad_data: OnBadData | None = None,
        reseed_fence: ReseedFence | None = None,
    ) -> None:
        self.ttl_ms = check_ttl(ttl_ms)
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
        self._on_bad_data = on_bad_data
        self._reseed_fence = reseed_fence
        self._deadline_s = call_deadline(redis, timeout_s)
        self._execute: Callable[..., Awaitable[Any]] = redis.execute_command
        # Constant script arguments, encoded once.
        self._worker_b = worker_id.encode()
        self._ttl_b = str(ttl_ms).encode()
        self._maxlen_b = str(events_maxlen).encode()
        self._events_b = keys.events.encode()
        self._prefix_b = f"{keys.prefix}:".encode()
        self._valid_s = (ttl_ms - self.safety_ms) / 1000
        # symbol -> its validated key names (see _SymbolKeys).
        self._symbol_keys: dict[str, _SymbolKeys] = {}
        # Worker ids of leases passed to renew that were checked for whitespace.
        self._checked_ids = {worker_id}

    def _ts(self) -> str:
        return now_iso() if self._clock is None else utc_iso(self._clock.now())

    def _keys_of(self, symbol: str) -> _SymbolKeys:
        found = self._symbol_keys.get(symbol)
        if found is None:
            k = self.keys
            lock = k.lock(symbol)  # validates the symbol
            found = (
                symbol.encode(),
                lock.encode(),
                k.fence(symbol).encode(),
                k.lease(symbol).encode(),
                lock,
            )
            if len(self._symbol_keys) >= _KEY_CACHE_MAX:
                self._symbol_keys.clear()
            self._symbol_keys[symbol] = found
        return found

    async def _call(self, what: str, script: LuaScript, *keys_and_args: EncodableT) -> Any:
        """Run `script`, bounded in time, with Redis errors translated (`coordination.errors`)."""
        deadline = self._deadline_s
        if deadline is None:  # the client's socket timeouts bound the call
            # EVALSHA inline rather than through LuaScript.__call__: one coroutine frame less
            # on every lock operation.
            try:
                try:
                    return await self._execute(b"EVALSHA", script.sha, *keys_and_args)
                except NoScriptError:  # the script ran not at all: EVAL it (and cache it)
                    return await self._execute(b"EVAL", script.source, *keys_and_args)
            except Exception as exc:
                ours = translate(what, exc)
                if ours is None:
                    raise
                raise ours from exc
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                return await script(self.redis, *keys_and_args)
        except Exception as exc:
            if timeout.expired():
                raise BackendUnavailable(f"{what}: no reply within {deadline:g} s") from exc
            ours = translate(what, exc)
            if ours is None:
                raise
            raise ours from exc

    def _lease(self, symbol: str, reply: Any, sent_at: float) -> Lease:
        """The lease from an acquire reply: fence, or [fence, expired] (see acquire.lua)."""
        if isinstance(reply, int):
            fence, recovered = reply, None
        else:
            fence, recovered = int(reply[0]), text(reply[1])
        return Lease(
            symbol, self.worker_id, fence, self.ttl_ms, sent_at, sent_at + self._valid_s, recovered
        )

    async def _run_acquire(self, symbol: str) -> tuple[Any, float]:
        """acquire.lua on `symbol`: (its reply, when it was sent)."""
        symbol_b, lock, fence, lease, _ = self._keys_of(symbol)
        ts = self._ts()
        sent_at = time.monotonic()
        reply = await self._call(
            f"acquire {symbol}",
            _ACQUIRE,
            4,
            lock,
            fence,
            lease,
            self._events_b,
            self._worker_b,
            self._ttl_b,
            ts,
            self._maxlen_b,
            symbol_b,
        )
        return reply, sent_at

    async def acquire(self, symbol: str) -> Lease | None:
        """Take `symbol` if nobody owns it: a new lease with a fresh fence, else None.

        Bad data at its keys: a lock key holding no lease is quarantined (None; the symbol is
        free again one TTL later); a fence counter that is not a number is reseeded through
        `reseed_fence` and the symbol tried once more (None without it, or if it fails); a lease
        meta key holding garbage is replaced (the lock is taken as usual).
        """
        for retry in (True, False):
            reply, sent_at = await self._run_acquire(symbol)
            if reply == 0:
                return None
            if type(reply) is not list or len(reply) == 2:
                return self._lease(symbol, reply, sent_at)
            fence, expired = int(reply[0]), text(reply[1])
            bad = script_reports(self._on_bad_data, reply[2:])
            if fence:
                return self._lease(symbol, [fence, expired] if expired else fence, sent_at)
            bad_fence = any(kind == BadData.FENCE for kind, _, _ in bad)
            if not (retry and bad_fence and await self._reseed(symbol)):
                return None
        return None

    async def _reseed(self, symbol: str) -> bool:
        """Repair `symbol`'s fence counter through `reseed_fence`; False if that is not possible.

        Any failure (Redis, or the ledger behind the callable) costs this symbol alone.
        """
        if self._reseed_fence is None:
            logger.error("fence of {} is bad and no reseed_fence was given: skipped", symbol)
            return False
        try:
            await self._reseed_fence(symbol)
        except Exception as exc:
            logger.error("reseeding the fence of {} failed, skipped: {!r}", symbol, exc)
            return False
        return True

    async def _run_acquire_first(self, symbols: Sequence[str]) -> tuple[Any, float]:
        """acquire_first.lua over `symbols` (validated): (its reply, when it was sent)."""
        ts = self._ts()
        sent_at = time.monotonic()
        reply = await self._call(
            f"acquire_first of {len(symbols)}",
            _ACQUIRE_FIRST,
            1,
            self._events_b,
            self._worker_b,
            self._ttl_b,
            ts,
            self._maxlen_b,
            self._prefix_b,
            " ".join(symbols),
        )
        return reply, sent_at

    def _first_lease(
        self, symbols: Sequence[str], reply: Any, sent_at: float
    ) -> tuple[Lease | None, list[str]]:
        """The lease from an acquire_first reply (None if no candidate was taken), and the
        symbols reported with a bad fence counter, in rank order."""
        if reply == 0:
            return None, []
        if len(reply) <= 3:
            fence = reply[1] if len(reply) == 2 else [reply[1], reply[2]]
            return self._lease(symbols[int(reply[0]) - 1], fence, sent_at), []
        found, fence, expired = int(reply[0]), int(reply[1]), text(reply[2])
        bad = script_reports(self._on_bad_data, reply[3:])
        bad_fences = [self.keys.symbol_of_fence(key) for kind, key, _ in bad if kind == "fence"]
        if not found:
            return None, bad_fences
        lease = self._lease(symbols[found - 1], [fence, expired] if expired else fence, sent_at)
        return lease, bad_fences

    async def acquire_first(self, symbols: Sequence[str]) -> Lease | None:
        """Take the first free symbol of a ranked list in one round trip; None if all are taken.

        A candidate with bad data is skipped and the walk goes on to the next (see `acquire`).
        Candidates skipped for a bad fence counter are reseeded through `reseed_fence`; if no
        candidate was taken, those reseeded are tried once more, in rank order.
        """
        if isinstance(symbols, str):
            raise TypeError("acquire_first takes a sequence of symbols, not one str")
        if not symbols:
            return None
        cached = self._symbol_keys
        for symbol in symbols:
            if symbol not in cached:
                self._keys_of(symbol)  # validates: no whitespace, so spaces can separate them
        reply, sent_at = await self._run_acquire_first(symbols)
        lease, bad_fences = self._first_lease(symbols, reply, sent_at)
        if not bad_fences:
            return lease
        reseeded = [symbol for symbol in bad_fences if await self._reseed(symbol)]
        if lease is not None or not reseeded:
            return lease
        reply, sent_at = await self._run_acquire_first(reseeded)
        return self._first_lease(reseeded, reply, sent_at)[0]

    async def renew(self, leases: Sequence[Lease]) -> list[Lease | None]:
        """Reset each lease's TTL to its `ttl_ms` if it is still ours, in one round trip.

        Returns, position by position, the lease with `valid_until` moved forward, or None if it
        was lost (key expired, released, or now holding another value).
        """
        if not leases:
            return []
        what = f"renew {len(leases)} leases"
        ttl = leases[0].ttl_ms
        if all(lease.ttl_ms == ttl for lease in leases):
            # Compact form: one "{lock key} {value} " string (see renew.lua).
            cached, checked = self._symbol_keys, self._checked_ids
            parts = []
            for lease in leases:
                keys = cached.get(lease.symbol) or self._keys_of(lease.symbol)
                if lease.worker_id not in checked:
                    self.keys.worker(lease.worker_id)  # no whitespace in a value either
                    checked.add(lease.worker_id)
                parts.append(f"{keys[4]} {lease.worker_id}:{lease.fence} ")
            ttl_arg = self._ttl_b if ttl == self.ttl_ms else str(check_ttl(ttl)).encode()
            sent_at = time.monotonic()
            reply = await self._call(what, _RENEW, 0, ttl_arg, "".join(parts))
        else:
            args: list[EncodableT] = [len(leases)]
            args += [self._keys_of(lease.symbol)[1] for lease in leases]
            for lease in leases:
                args += [lease.value, check_ttl(lease.ttl_ms)]
            sent_at = time.monotonic()
            reply = await self._call(what, _RENEW, *args)
        if type(reply) is list:  # a lost lease's key held bad data: it is repaired, not ours
            script_reports(self._on_bad_data, reply[1:])
            reply = reply[0]
        flags = text(reply)
        return [
            renewed(lease, sent_at + (lease.ttl_ms - self.safety_ms) / 1000)
            if flag == "1"
            else None
            for lease, flag in zip(leases, flags, strict=True)
        ]

    async def release(self, lease: Lease) -> bool:
        """Delete the lock if this exact lease still holds it. False if it was already lost.

        A lock key found holding no lease is quarantined for the lease's TTL; a lease meta key
        holding garbage is deleted (both logged and counted)."""
        symbol_b, lock, _, meta, _ = self._keys_of(lease.symbol)
        ttl = self._ttl_b if lease.ttl_ms == self.ttl_ms else str(check_ttl(lease.ttl_ms))
        released = await self._call(
            f"release {lease.symbol}",
            _RELEASE,
            3,
            lock,
            meta,
            self._events_b,
            f"{lease.worker_id}:{lease.fence}",
            symbol_b,
            self._ts(),
            self._maxlen_b,
            ttl,
        )
        if type(released) is list:
            script_reports(self._on_bad_data, released[1:])
            released = released[0]
        return bool(released == 1)

    async def holder(self, symbol: str) -> LockInfo | None:
        """Who owns `symbol` now, with the ms left before its lock expires; None if free.

        A lock key holding no lease is reported as bad data and read as free (the next acquire
        or renew that meets it repairs it, not this read). A quarantined key reads as worker
        ``quarantine`` with fence 0.
        """
        key = self.keys.lock(symbol)
        async with (
            bounded(f"holder {symbol}", self.timeout_s),
            self.redis.pipeline(transaction=True) as pipe,
        ):
            pipe.get(key)
            pipe.pttl(key)
            value, pttl = await pipe.execute(raise_on_error=False)
        return self._info(symbol, key, value, pttl)

    def _info(self, symbol: str, key: str, value: Any, pttl: Any) -> LockInfo | None:
        if value is None:  # free, or expired between SCAN and GET
            return None
        if isinstance(value, Exception):  # WRONGTYPE: not a string
            report(self._on_bad_data, BadData.LOCK, key, f"not a string ({value})")
            return None
        try:
            worker_id, fence = parse_value(text(value))
        except ValueError as exc:  # UnicodeDecodeError is one too
            report(self._on_bad_data, BadData.LOCK, key, str(exc))
            return None
        return LockInfo(symbol, worker_id, fence, int(pttl))

    async def live_locks(self) -> list[LockInfo]:
        """Every lock key under the prefix (SCAN), sorted by symbol. Keys holding no lease are
        reported as bad data and left out (see `holder`)."""
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
            replies = await pipe.execute(raise_on_error=False)
        infos = []
        for i, key in enumerate(lock_keys):
            symbol = self.keys.symbol_of_lock(key)
            info = self._info(symbol, key, replies[2 * i], replies[2 * i + 1])
            if info is not None:
                infos.append(info)
        return infos

"""Keeping leases alive: `LeaseKeeper` renews every held lease in one batch per interval and
stops the holder's work the moment a lease is lost.

Run `LeaseKeeper.run` as a sibling task in the worker's task group and wrap each symbol's HOLD
work in `guard(symbol)` (or `scope(symbol)`)::

    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        lease = await lock.acquire("005930")
        keeper.add(lease)
        async with keeper.guard("005930"):   # raises LockLost if the lease goes
            await manage_position(lease)

A lease is lost when a renew finds its key gone or holding another value, or when its local
deadline (`Lease.valid_until`) passes without a successful renew — Redis unreachable, slow, or
refusing. The deadline is enforced twice: the renew loop drops the lease, and every guard scope
carries the deadline itself, so the holder's work is cancelled on time even if the loop is late.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import anyio
from loguru import logger

from coordination.errors import BackendUnavailable, CoordinationError, LockLost
from coordination.locks import Lease, RedisSymbolLock
from coordination.notices import Notices, NoticeType

OnLost = Callable[[Lease, str], Awaitable[None]]


class LeaseKeeper:
    """Renews the leases of one `RedisSymbolLock` and reports the ones it loses.

    `interval_s` defaults to a third of the TTL, so two renewals in a row may fail before a
    healthy lease lapses. `on_lost(lease, reason)` is awaited once per lost lease, after the
    lease is dropped and its scopes cancelled; its exceptions are logged, not raised.
    """

    def __init__(
        self,
        lock: RedisSymbolLock,
        interval_s: float | None = None,
        on_lost: OnLost | None = None,
        *,
        notices: Notices | None = None,
    ) -> None:
        self.lock = lock
        self.interval_s = lock.ttl_ms / 3000 if interval_s is None else interval_s
        usable_s = (lock.ttl_ms - lock.safety_ms) / 1000
        if not 0 < self.interval_s < usable_s:
            raise ValueError(
                f"interval_s must be in (0, {usable_s}) (TTL minus safety margin), "
                f"got {interval_s!r}"
            )
        self.on_lost = on_lost
        # Publishing lock.lost must not hold up the next renewal for long.
        self._notices = notices or Notices(
            lock.redis,
            lock.keys,
            lock.events_maxlen,
            timeout_s=min(lock.timeout_s, self.interval_s),
        )
        self._held: dict[str, Lease] = {}
        self._lost: dict[str, str] = {}
        self._scopes: dict[str, weakref.WeakSet[anyio.CancelScope]] = {}

    # -- bookkeeping (synchronous, safe to call from any task of the same event loop) --

    def add(self, lease: Lease) -> None:
        """Start renewing `lease` (replacing any older lease on the same symbol)."""
        self._held[lease.symbol] = lease
        self._lost.pop(lease.symbol, None)
        self._move_deadlines(lease)

    def remove(self, symbol: str) -> Lease | None:
        """Stop renewing `symbol` (before releasing it). Returns the lease it held, if any.

        Open scopes on the symbol keep their current deadline: work still running after the
        lease stops being renewed is cancelled when the lease would have lapsed.
        """
        self._scopes.pop(symbol, None)
        return self._held.pop(symbol, None)

    def lease(self, symbol: str) -> Lease | None:
        """The current lease on `symbol` (with the latest `valid_until`), if held."""
        return self._held.get(symbol)

    def held(self) -> list[Lease]:
        return list(self._held.values())

    def valid(self, symbol: str) -> bool:
        """True while the lease is held, not lost, and inside its local deadline.

        Purely local: it needs no Redis round trip, so it stays truthful when Redis is down.
        """
        lease = self._held.get(symbol)
        return lease is not None and time.monotonic() < lease.valid_until

    # -- cancellation --

    def scope(self, symbol: str) -> anyio.CancelScope:
        """A cancel scope for HOLD work on `symbol`, cancelled when its lease is lost or its
        local deadline passes. Already cancelled if the symbol is not validly held now."""
        lease = self._held.get(symbol)
        scope = anyio.CancelScope()
        if lease is None or not self.valid(symbol):
            scope.cancel()
            return scope
        scope.deadline = _loop_deadline(lease)
        self._scopes.setdefault(symbol, weakref.WeakSet()).add(scope)
        return scope

    @asynccontextmanager
    async def guard(self, symbol: str) -> AsyncIterator[Lease]:
        """Run the block while `symbol` is validly held; raise `LockLost` if the lease is lost
        (the block is cancelled at that moment) or is not held on entry."""
        lease = self._held.get(symbol)
        if lease is None or not self.valid(symbol):
            raise LockLost(symbol, self._lost.get(symbol, "not held"))
        with self.scope(symbol) as scope:
            yield lease
        if scope.cancelled_caught:
            raise LockLost(symbol, self._lost.get(symbol, "local lease deadline passed"))

    def _move_deadlines(self, lease: Lease) -> None:
        deadline = _loop_deadline(lease)
        for scope in self._scopes.get(lease.symbol, ()):
            scope.deadline = deadline

    # -- renewal --

    async def run(self) -> NoReturn:
        """Renew every held lease each `interval_s`, forever (cancel the task to stop)."""
        while True:
            started = time.monotonic()
            await self.renew_once()
            # Pace by start times, so a slow renew does not stretch the period.
            await anyio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def renew_once(self) -> None:
        """One batch renewal of every held lease, with the loss handling described above."""
        leases = list(self._held.values())
        if not leases:
            return
        try:
            renewed = await self.lock.renew(leases)
        except CoordinationError as exc:
            log = logger.warning if isinstance(exc, BackendUnavailable) else logger.error
            log("Renewing {} leases failed: {}", len(leases), exc)
            now = time.monotonic()
            for lease in leases:
                if now >= lease.valid_until:
                    await self._lose(
                        lease, f"local deadline passed without a renewal ({exc})", publish=False
                    )
            return
        for old, new in zip(leases, renewed, strict=True):
            if self._held.get(old.symbol) is not old:
                continue  # removed or replaced while the renew was in flight
            if new is None:
                await self._lose(old, "lock key gone or owned by another worker", publish=True)
            else:
                self._held[old.symbol] = new
                self._move_deadlines(new)

    async def _lose(self, lease: Lease, reason: str, *, publish: bool) -> None:
        if self._held.get(lease.symbol) is not lease:
            return
        del self._held[lease.symbol]
        self._lost[lease.symbol] = reason
        for scope in self._scopes.pop(lease.symbol, ()):
            scope.cancel()
        logger.error(
            "Lock on {} lost (worker {}, fence {}): {}",
            lease.symbol,
            lease.worker_id,
            lease.fence,
            reason,
        )
        if publish:
            try:
                await self._notices.publish(
                    NoticeType.LOCK_LOST,
                    lease.worker_id,
                    lease.symbol,
                    {"fence": lease.fence, "reason": reason},
                )
            except CoordinationError as exc:
                logger.warning("Could not publish lock.lost for {}: {}", lease.symbol, exc)
        if self.on_lost is not None:
            try:
                await self.on_lost(lease, reason)
            except Exception:
                logger.exception("on_lost callback failed for {}", lease.symbol)


def _loop_deadline(lease: Lease) -> float:
    """`lease.valid_until` (time.monotonic) on the event loop's clock, which anyio scopes use."""
    return anyio.current_time() + (lease.valid_until - time.monotonic())

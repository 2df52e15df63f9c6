"""A tenure: one lease's whole life, owned by one object.

    async with Tenure.open(ctx, lease) as tenure:   # grant -> mirror -> reconcile
        ...tenure.place(...)...                     # every BUY and SELL, inside tenure.scope()
    # one `finally`: position handed off if still held, own NEW rows withdrawn, lease released

A tenure exists only after the Redis grant (the lease), the mirror commit (`stock_locks` shows
this worker's fence; the ledger fences every order against that row) and the reconciliation of
every unfinished order on the symbol, whatever its fence: the position and unfinished orders are
moved to this worker (fenced), other workers' never-sent NEW rows are withdrawn (fenced), and
the tracker drives every order that may be at the broker to its final state. Only then does the
holder size anything, so it acts on what the broker says is held.

State is changed only after the I/O that backs it: the tenure is handed to the worker once
open, and its exit releases the lease only after the ledger knows what happened to the position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from coordination.errors import CoordinationError
from coordination.heartbeat import LeaseKeeper
from coordination.locks import Lease, RedisSymbolLock
from ledger.errors import LedgerError, StaleFence
from ledger.records import OrderRecord, PositionRecord
from ledger.repository import Ledger
from market.clock import Clock
from trading.metrics import WorkerMetrics
from trading.orders import LeaseInvalid, OrderPlacer, Placement
from trading.tracker import OrderTracker

#: a submit needs at least this much of the lease's local validity left
SUBMIT_MARGIN_S = 0.25
#: `Tenure.lost` once the ledger refused the tenure's fence: nothing to re-verify
FENCE_REFUSED = "fence refused by the ledger"


class TenureRefused(Exception):
    """The ledger already knows a newer fence for the symbol: the grant came from counters that
    Redis lost; the lease was given back."""


@dataclass
class TenureContext:
    """What every tenure of one worker shares."""

    worker_id: str
    lock: RedisSymbolLock
    keeper: LeaseKeeper
    ledger: Ledger
    tracker: OrderTracker
    placer: OrderPlacer
    clock: Clock
    metrics: WorkerMetrics
    log: Any
    #: reseeds Redis fence counters from the ledger when Redis lost them (a restart)
    ensure_fences: Callable[[], Awaitable[object]]


class Tenure:
    """One worker's ownership of one symbol, from the grant to the release."""

    def __init__(self, ctx: TenureContext, lease: Lease) -> None:
        self.ctx = ctx
        self.lease = lease
        self.lost: str | None = None  # why the lease was lost, once it was
        self.degraded = False  # Redis unreachable: orders fenced by the ledger alone
        # the last position read and what vouched for it: the keeper's lease object (replaced
        # on every renewal, gone once lost) and the tracker's change count
        self._held: tuple[PositionRecord | None, Lease, int] | None = None

    @property
    def symbol(self) -> str:
        return self.lease.symbol

    @property
    def fence(self) -> int:
        return self.lease.fence

    @property
    def log(self) -> Any:
        """The worker's logger bound to this tenure's symbol and (current) fence."""
        return self.ctx.log.bind(symbol=self.symbol, fence=self.fence)

    # -- life ---------------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls, ctx: TenureContext, lease: Lease, *, reconcile_until: datetime | None = None
    ) -> AsyncIterator[Tenure]:
        """Mirror the grant, reconcile the symbol, yield the tenure; release in one finally.

        Raises `TenureRefused` when the ledger refuses the fence.
        """
        tenure = cls(ctx, lease)
        ctx.keeper.add(lease)
        mirrored = False
        try:
            mirrored = await ctx.ledger.lock_acquired(
                lease.symbol, ctx.worker_id, lease.fence, lease.ttl_ms, datetime.now(UTC)
            )
            if not mirrored:
                tenure.log.error("fence {} on {} is behind the ledger; giving it back",
                                 lease.fence, lease.symbol)  # fmt: skip
                raise TenureRefused(f"{lease.symbol}: fence {lease.fence} behind the ledger")
            ctx.metrics.lock_acquired()
            with ctx.keeper.scope(lease.symbol) as scope:
                await tenure._reconcile(reconcile_until)
            if scope.cancelled_caught:
                raise LeaseInvalid(f"lease on {lease.symbol} lost while reconciling")
            yield tenure
        finally:
            with anyio.CancelScope(shield=True):
                await tenure._close(mirrored)

    async def _reconcile(self, until: datetime | None) -> None:
        ctx, now = self.ctx, self.ctx.clock.now()
        try:
            # never-sent intents first (kept under their author's name), then the position and
            # whatever may be at the broker move to this worker
            withdrawn = await ctx.ledger.withdraw_orders(self.symbol, ctx.worker_id, self.fence,
                                                         now)  # fmt: skip
            adopted = await ctx.ledger.adopt_position(self.symbol, ctx.worker_id, self.fence)
        except StaleFence as exc:
            raise LeaseInvalid(str(exc)) from exc
        for order in withdrawn:
            self.log.bind(client_order_id=order.client_order_id).warning(
                "withdrew never-sent order {} of {} on {}",
                order.client_order_id, order.worker_id, self.symbol)  # fmt: skip
        settled = await ctx.tracker.resolve(self.symbol, until)
        if adopted:
            self.log.warning("adopted the position on {} (fence {})", self.symbol, self.fence)
        if not settled:
            raise LeaseInvalid(f"orders on {self.symbol} still unresolved at the deadline")

    async def _close(self, mirrored: bool) -> None:
        """Release everything, logging (not raising) what fails: the lease then expires in
        Redis and the reaper cleans its mirror row."""
        ctx, symbol, fence = self.ctx, self.symbol, self.fence
        if mirrored:
            try:
                position = await ctx.ledger.open_position(symbol)
                if (
                    position is not None
                    and position.qty > 0
                    and await ctx.ledger.mark_position_orphaned(symbol, ctx.worker_id, fence)
                ):
                    self.log.warning("handing off {} x{} for adoption", symbol, position.qty)
            except LedgerError as exc:
                self.log.error("could not hand off {}: {}", symbol, exc)
        ctx.keeper.remove(symbol)
        try:
            released = await ctx.lock.release(self.lease)
        except CoordinationError as exc:
            self.log.error("release of {} failed, it will expire: {}", symbol, exc)
            released = False
        if not mirrored:
            return
        try:
            await ctx.ledger.lock_released(symbol, ctx.worker_id, fence, datetime.now(UTC),
                                           event="released" if released else "lost")  # fmt: skip
        except LedgerError as exc:
            self.log.error("mirror of {} not released (the reaper will): {}", symbol, exc)

    # -- acting -------------------------------------------------------------------------------

    def scope(self) -> anyio.CancelScope:
        """A cancel scope cancelled the moment the lease is lost or its local deadline passes
        (already cancelled when the lease is not validly held). In degraded mode (Redis away,
        re-verified) an open scope: the ledger's fence alone guards the orders."""
        if self.degraded:
            return anyio.CancelScope()
        return self.ctx.keeper.scope(self.symbol)

    def may_submit(self) -> bool:
        """The lease is inside its local deadline with a margin (or degraded and re-verified)."""
        if self.degraded:
            return True  # re-verified: Redis cannot say, the ledger's fence guards the order
        if self.lost is not None:
            return False
        lease = self.ctx.keeper.lease(self.symbol)
        return lease is not None and lease.remaining_s() > SUBMIT_MARGIN_S

    async def place(
        self, p: Placement, cancel_at: datetime, *, buy_cutoff: datetime | None = None
    ) -> OrderRecord:
        """Place one order under this tenure's fence, after every earlier order on the symbol
        is final (at most one working order per symbol); wait until it is final."""
        self._held = None
        try:
            await self.settle()
            return await self.ctx.placer.place(p, cancel_at, self.may_submit,
                                               buy_cutoff=buy_cutoff)  # fmt: skip
        finally:
            self._held = None

    async def settle(self) -> None:
        """Cancel and drive to their end any orders still working on the symbol."""
        if self.ctx.tracker.working(self.symbol):
            await self.ctx.tracker.resolve(self.symbol)

    async def position(self) -> PositionRecord | None:
        """The open position on the symbol (None when flat). Raises `LeaseInvalid` when the
        ledger shows it in another worker's hands (it was adopted under a newer fence).

        Read from the ledger again whenever anything could have moved it since the last read:
        a status the tracker applied, an order placed through this tenure, a lease renewal (a
        new lease object: an adoption elsewhere needs the lease, so it is seen by the renewal
        at the latest), a lost or re-verified lease; always while degraded (Redis away).
        """
        ctx = self.ctx
        lease = None if self.degraded or self.lost is not None else ctx.keeper.lease(self.symbol)
        held = self._held
        if held is not None and held[1] is lease and held[2] == ctx.tracker.changes:
            return held[0]
        self._held = None
        changes = ctx.tracker.changes
        position = await self._read_position()
        if lease is not None and ctx.keeper.lease(self.symbol) is lease:
            self._held = (position, lease, changes)
        return position

    async def _read_position(self) -> PositionRecord | None:
        position = await self.ctx.ledger.open_position(self.symbol)
        if position is None or position.qty <= 0:
            return None
        if position.worker_id != self.ctx.worker_id:
            raise LeaseInvalid(f"{self.symbol} is held by {position.worker_id} now")
        return position

    # -- ownership checks ---------------------------------------------------------------------

    def mark_lost(self, why: str) -> None:
        self.lost = why

    async def reverify(self) -> str:
        """After the scope was cancelled: "ok" (renewed, or re-acquired with a higher fence and
        mirrored), "away" (Redis cannot say: degraded), or "lost" (someone else owns it)."""
        ctx = self.ctx
        self._held = None
        if self.lost == FENCE_REFUSED:
            return "lost"
        try:
            [renewed] = await ctx.lock.renew([self.lease])
            if renewed is None:  # a restarted Redis must get its fences back first
                await ctx.ensure_fences()
            fresh = renewed or await ctx.lock.acquire(self.symbol)
        except CoordinationError as exc:
            self.log.warning("cannot re-verify {} ({}): Redis unreachable", self.symbol, exc)
            self.degraded = True
            return "away"
        if fresh is None:
            return "lost"
        if fresh.fence != self.lease.fence:
            mirrored = await ctx.ledger.lock_acquired(
                fresh.symbol, ctx.worker_id, fresh.fence, fresh.ttl_ms, datetime.now(UTC)
            )
            if not mirrored:
                return "lost"
            # re-acquired under a new fence: what the old fence left is this tenure's again
            await ctx.ledger.withdraw_orders(fresh.symbol, ctx.worker_id, fresh.fence,
                                             ctx.clock.now())  # fmt: skip
            await ctx.ledger.adopt_position(fresh.symbol, ctx.worker_id, fresh.fence)
        self.lease = fresh
        ctx.keeper.add(fresh)
        self.degraded = False
        self.lost = None
        self.log.warning("ownership of {} re-verified (fence {})", fresh.symbol, fresh.fence)
        return "ok"

"""One worker's day: IDLE -> SCAN -> HOLD -> SCAN ... -> EXIT.

SCAN lives in `trading.entries` (mixed in), selling in `trading.exits`.

`Worker.run` opens one task group: the lease keeper (heartbeat) and the registry heartbeat run
beside the main loop. The main loop paces itself on the injected clock and subtracts the work
time from each pause. HOLD work runs inside a cancel scope that the keeper cancels the moment
the lease is lost, so no order is sent for a symbol the worker no longer owns.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from loguru import logger

from broker.errors import BrokerUnavailable
from broker.port import Broker, MarketData
from coordination.errors import BackendUnavailable, CoordinationError
from coordination.fences import FenceSeeder
from coordination.heartbeat import LeaseKeeper
from coordination.locks import Lease, RedisSymbolLock
from coordination.notices import Notices, NoticeType
from coordination.registry import WorkerRegistry
from ledger.errors import LedgerUnavailable
from ledger.repository import Ledger
from market.calendar import Session
from market.clock import Clock
from market.costs import CostModel
from market.types import Board, Tier
from strategy.signals import (
    HeldPosition,
    evaluate_sell_signal,
)
from trading.config import TradingConfig
from trading.entries import EntryPhase
from trading.exits import AFTER_CLOSE_GRACE, sell_until_flat
from trading.metrics import NULL_METRICS, WorkerMetrics
from trading.orders import LeaseInvalid, OrderExecutor
from trading.poller import poll_position
from trading.state import WorkerEvent, WorkerState, next_state

_MAX_TICK_FAILURES = 150  # ~12 minutes of backoff capped at 5 s before the worker gives up
_FENCE_REFUSED = "fence refused by the ledger"
_REDIS_AWAY = object()  # `_reverify`: Redis could not say who owns the symbol
_TRANSIENT = (BrokerUnavailable, LedgerUnavailable, BackendUnavailable)


@dataclass(frozen=True)
class Deps:
    config: TradingConfig
    clock: Clock
    session: Session
    broker: Broker
    market: MarketData
    ledger: Ledger
    lock: RedisSymbolLock
    registry: WorkerRegistry
    notices: Notices
    costs: CostModel
    boards: dict[str, Board]
    tiers: dict[str, Tier]
    fences: FenceSeeder
    metrics: WorkerMetrics = NULL_METRICS


class Worker(EntryPhase):
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        s = deps.config
        self.id = s.worker_id
        self.state = WorkerState.IDLE
        self.lease: Lease | None = None
        self.held: HeldPosition | None = None
        # time.monotonic() when the main loop last began a step (None before the open): the
        # health check's evidence that the loop is alive.
        self.last_tick_at: float | None = None
        self.metrics = deps.metrics
        self.log = logger.bind(worker=self.id if len(self.id) <= 16 else self.id[:8])
        self.keeper = LeaseKeeper(deps.lock, interval_s=s.heartbeat_s, on_lost=self._on_lost)
        self.orders = OrderExecutor(
            worker_id=self.id,
            broker=deps.broker,
            ledger=deps.ledger,
            notices=deps.notices,
            clock=deps.clock,
            boards=deps.boards,
            trading_day=deps.session.open,
            capital_limit=s.capital_limit,
            daily_loss_limit=s.daily_loss_limit,
            poll_s=s.order_poll_s,
            metrics=deps.metrics,
        )
        self.scan_params = s.scan
        self.signal_params = s.signals
        self.liquidation_start = deps.session.liquidation_start(
            timedelta(minutes=s.liquidation_lead_min)
        )
        self.thin_liquidation_start = deps.session.liquidation_start(
            timedelta(minutes=max(s.thin_liquidation_lead_min, s.liquidation_lead_min))
        )
        self._stop = anyio.Event()
        self._pause_scope: anyio.CancelScope | None = None
        self._hold_scope: anyio.CancelScope | None = None
        self._lost: str | None = None
        self._degraded = False  # holding through a Redis outage, fenced by the ledger alone
        self._halt_published = False

    # ----- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM): finish the current step, hand off holdings, EXIT."""
        self._stop.set()
        if self._pause_scope is not None:
            self._pause_scope.cancel()

    async def run(self) -> None:
        await self.d.ledger.register_worker(
            self.id,
            os.getpid(),
            socket.gethostname(),
            self.d.config.capital_limit,
            datetime.now(UTC),
        )
        await self._publish_state(None, WorkerEvent.START)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.keeper.run)
            tg.start_soon(self._heartbeat_loop)
            try:
                await self._main()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._exit()
                tg.cancel_scope.cancel()

    async def _main(self) -> None:
        session = self.d.session
        wait = (session.open - self.d.clock.now()).total_seconds()
        if wait > 0:
            self.log.info("waiting {:.0f}s (clock) for the open at {}", wait, session.open)
            await self._pause(wait)
        if self._stop.is_set() or self.d.clock.now() >= session.close:
            return
        await self._fire(WorkerEvent.START)
        failures = 0
        while not self._stop.is_set():
            self.last_tick_at = time.monotonic()
            started = self.d.clock.now()
            try:
                interval = await self._tick(started)
            except _TRANSIENT as exc:
                # A server or the broker is away: nothing was half-done that the ledger does
                # not know about; try again after a backoff, give up after a bounded run.
                failures += 1
                self.log.error("{} tick failed ({} in a row): {!r}", self.state, failures, exc)
                if failures >= _MAX_TICK_FAILURES:
                    raise
                await anyio.sleep(min(0.05 * 2**failures, 5.0))
                continue
            failures = 0
            if interval is None or self.d.clock.now() >= session.close + AFTER_CLOSE_GRACE:
                break
            spent = (self.d.clock.now() - started).total_seconds()
            await self._pause(interval - spent)

    async def _tick(self, started: datetime) -> float | None:
        """One step of SCAN or HOLD; the clock seconds to pause, or None when the day is done."""
        if self.state is WorkerState.SCAN:
            view = await self.d.ledger.scan_view(self.d.session.day)
            if started >= self.liquidation_start:
                if not await self._adopt_orphan(view):
                    return None  # no new buys from here; nothing left to manage
            else:
                scan_started = time.monotonic()
                await self._scan_tick(view)
                self.metrics.scan_done(time.monotonic() - scan_started)
            return self.d.config.scan_interval_s
        await self._hold_tick()
        return self.d.config.hold_interval_s

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._stop.is_set():
            return
        with anyio.CancelScope() as scope:
            self._pause_scope = scope
            await self.d.clock.sleep(seconds)
        self._pause_scope = None

    async def _exit(self) -> None:
        if self.lease is not None and self.held is not None:
            # Still holding (SIGTERM mid-day, or the close came first): leave the position to be
            # adopted by a live worker, or by this one on restart (Invariant 4).
            self.log.warning("handing off {} x{} for adoption", self.held.symbol, self.held.qty)
            await self.d.ledger.mark_position_orphaned(self.held.symbol, self.id)
        await self._release()
        if self.state is not WorkerState.EXIT:
            await self._fire(WorkerEvent.STOP)
        await self.d.ledger.summarize_day(self.d.session.day)
        try:
            await self.d.registry.remove(self.id)
        except CoordinationError as exc:
            self.log.error("could not remove the registry entry: {}", exc)

    # ----- transitions -----------------------------------------------------------------------

    async def _fire(self, event: WorkerEvent) -> None:
        old = self.state
        self.state = next_state(old, event)
        self.metrics.state_changed(self.state)
        symbol = self.lease.symbol if self.lease else None
        self.log.info("state {} -> {} on {}", old, self.state, event)
        await self.d.ledger.set_worker_status(self.id, self.state.value, symbol, datetime.now(UTC))
        await self._publish_state(old, event)

    async def _publish_state(self, old: WorkerState | None, event: WorkerEvent) -> None:
        symbol = self.lease.symbol if self.lease else None
        try:
            await self.d.notices.publish(
                NoticeType.WORKER_STATE,
                self.id,
                symbol,
                {"from": old.value if old else None, "to": self.state.value, "event": event.value},
            )
            await self._registry_update()
        except CoordinationError as exc:
            self.log.error("state notice not published: {}", exc)

    async def _registry_update(self) -> None:
        await self.d.registry.update(
            self.id,
            state=self.state.value,
            symbol=self.lease.symbol if self.lease else None,
            pid=os.getpid(),
            host=socket.gethostname(),
            heartbeat_at=datetime.now(UTC),
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self.d.config.heartbeat_s)
            try:
                await self._registry_update()
                now = datetime.now(UTC)
                await self.d.ledger.worker_heartbeat(self.id, now)
                if self.lease is not None:
                    lease = self.lease
                    await self.d.ledger.lock_heartbeat(lease.symbol, self.id, lease.fence, now)
            except CoordinationError as exc:
                self.log.error("registry heartbeat failed: {}", exc)

    # ----- leases ----------------------------------------------------------------------------

    async def _on_lost(self, lease: Lease, why: str) -> None:
        if self.lease is None or self.lease.symbol != lease.symbol:
            return
        self._lost = why
        if self._hold_scope is not None:
            self._hold_scope.cancel()

    async def _take(self, lease: Lease) -> bool:
        """Own `lease`: renew it and mirror it. False (and released) when the ledger already
        knows a newer fence for the symbol, i.e. Redis granted from unseeded counters."""
        self.lease = lease
        self._lost = None
        self.keeper.add(lease)
        mirrored = await self.d.ledger.lock_acquired(
            lease.symbol, self.id, lease.fence, lease.ttl_ms, datetime.now(UTC)
        )
        if not mirrored:
            self.log.error(
                "fence {} on {} is behind the ledger; giving it back", lease.fence, lease.symbol
            )
            await self._release()
        else:
            self.metrics.lock_acquired()
        return mirrored

    async def _release(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        self.keeper.remove(lease.symbol)
        try:
            released = await self.d.lock.release(lease)
        except CoordinationError as exc:
            self.log.error("release of {} failed, it will expire: {}", lease.symbol, exc)
            released = False
        event = "released" if released else "lost"
        await self.d.ledger.lock_released(
            lease.symbol, self.id, lease.fence, datetime.now(UTC), event=event
        )

    async def _lease_lost(self) -> None:
        held = self.held
        self.log.error(
            "lease on {} lost ({}); position goes to recovery",
            held.symbol if held else "?",
            self._lost,
        )
        self.metrics.lease_lost()
        if held is not None:
            await self.d.ledger.mark_position_orphaned(held.symbol, self.id)
        self.held = None
        await self._release()
        await self._fire(WorkerEvent.LOCK_LOST)

    # ----- HOLD ------------------------------------------------------------------------------

    async def _hold_tick(self) -> None:
        held, lease = self.held, self.lease
        assert held is not None
        assert lease is not None
        # The keeper cancels this scope the moment the lease is lost or its local deadline
        # passes, so nothing below can send an order for a symbol we no longer own.
        with self.keeper.scope(lease.symbol) as scope:
            self._hold_scope = scope
            await self._hold_step(held, lease)
        self._hold_scope = None
        if not (scope.cancelled_caught or self._lost is not None):
            return
        if self._lost == _FENCE_REFUSED:
            await self._lease_lost()
            return
        # The lease lapsed or its key vanished: ask Redis who owns the symbol now.
        owned = await self._reverify(lease)
        if owned is _REDIS_AWAY:
            await self._hold_degraded(held, lease)
        elif owned is None:
            await self._lease_lost()

    async def _reverify(self, lease: Lease) -> Lease | object | None:
        """Still ours (renewed), ours again (re-acquired, higher fence), someone else's (None),
        or `_REDIS_AWAY` when Redis cannot say."""
        try:
            [renewed] = await self.d.lock.renew([lease])
            if renewed is None:  # a restarted Redis must get its fences back first
                await self.d.fences.ensure(self.d.ledger.max_fences)
            fresh = renewed or await self.d.lock.acquire(lease.symbol)
        except CoordinationError as exc:
            self.log.warning("cannot re-verify {} ({}): Redis unreachable", lease.symbol, exc)
            return _REDIS_AWAY
        if fresh is None or not await self._take(fresh):
            return None
        self._degraded = False
        self.log.warning("ownership of {} re-verified (fence {})", fresh.symbol, fresh.fence)
        return fresh

    async def _hold_degraded(self, held: HeldPosition, lease: Lease) -> None:
        """Redis is away: nobody can take the symbol meanwhile, and the ledger still fences
        every order with the Postgres mirror, so keep protecting the position through the
        broker. A refused fence ends it (someone took over once Redis came back)."""
        if not self._degraded:
            self._degraded = True
            self.log.warning(
                "Redis unreachable: protecting {} x{} through the broker under fence {}",
                held.symbol, held.qty, lease.fence,
            )  # fmt: skip
        self._lost = None
        await self._hold_step(held, lease)
        if self._lost == _FENCE_REFUSED:
            await self._lease_lost()

    async def _hold_step(self, held: HeldPosition, lease: Lease) -> None:
        now = self.d.clock.now()
        quote = await poll_position(self.d.market, held.symbol, self.d.config.short_ma_bars)
        thin = self.d.tiers.get(held.symbol) is Tier.THIN
        liq = self.thin_liquidation_start if thin else self.liquidation_start
        if self._stop.is_set():
            return
        signal = evaluate_sell_signal(held, quote, now, self.signal_params, liq)
        if signal is None:
            return
        self.log.info("sell signal on {}: {} at {}", held.symbol, signal.reason, quote.price)
        try:
            flat = await sell_until_flat(self.d, self.orders, self.log, held, lease, signal)
        except LeaseInvalid:
            self._lost = _FENCE_REFUSED
            return
        if flat:
            self.held = None
            await self._release()
            await self._fire(WorkerEvent.SOLD)

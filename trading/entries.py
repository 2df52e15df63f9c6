"""SCAN for a `Worker`: adopt what nobody owns, rank the universe, lock the best free
candidate, buy within the capital limit. Kept apart from `trading.loop`, mixed into `Worker`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio

from broker.port import Side
from coordination.errors import CoordinationError
from coordination.locks import Lease
from coordination.notices import NoticeType
from ledger.records import ScanView
from market.types import Tier
from strategy.scan import ScanParams
from strategy.signals import (
    HeldPosition,
    SignalParams,
    buy_order,
    entry_signal,
)
from trading.metrics import WorkerMetrics
from trading.orders import BuyRefused, LeaseInvalid, OrderExecutor, Placement
from trading.poller import poll_candidates
from trading.state import WorkerEvent

if TYPE_CHECKING:
    from trading.loop import Deps


class EntryPhase:
    """The SCAN half of `Worker`. The attributes and methods below the line are the
    `Worker`'s own; they are declared here for the type checker."""

    d: Deps
    id: str
    log: Any
    lease: Lease | None
    held: HeldPosition | None
    orders: OrderExecutor
    metrics: WorkerMetrics
    scan_params: ScanParams
    signal_params: SignalParams
    liquidation_start: datetime
    thin_liquidation_start: datetime
    _halt_published: bool

    async def _take(self, lease: Lease) -> bool:
        raise NotImplementedError

    async def _release(self) -> None:
        raise NotImplementedError

    async def _fire(self, event: WorkerEvent) -> None:
        raise NotImplementedError

    async def _scan_tick(self, view: ScanView) -> None:
        if await self._adopt_orphan(view):
            return
        if await self._halted(view):
            return
        candidates = await poll_candidates(
            self.d.market, self.scan_params, self.d.config.n_bars, self.signal_params
        )
        taken = set(view.positions)
        # thin names are liquidated earlier, so they stop being bought earlier too
        no_thin = self.d.clock.now() >= self.thin_liquidation_start
        ranked = [
            c for c in candidates if c.symbol not in taken and not (no_thin and c.tier is Tier.THIN)
        ]
        if not ranked:
            return
        try:
            await self.d.fences.ensure(self.d.ledger.max_fences)
            lease = await self.d.lock.acquire_first([c.symbol for c in ranked])
        except CoordinationError as exc:
            self.log.error("cannot acquire (no buys while Redis is away): {}", exc)
            return
        if lease is None or lease.symbol != ranked[0].symbol:
            self.metrics.lock_contended()
        if lease is None:
            self.log.warning("contention: all {} candidates are owned", len(ranked))
            return
        if lease.symbol != ranked[0].symbol:
            self.log.warning(
                "contention: {} owned elsewhere, took {}", ranked[0].symbol, lease.symbol
            )
        if not await self._take(lease):
            return
        candidate = next(c for c in ranked if c.symbol == lease.symbol)
        try:
            bought = await self._buy(lease, entry_signal(candidate), candidate.price)
        except BaseException:
            # Interrupted mid-entry: give the symbol up so that whoever takes it next (maybe
            # this worker) reconciles the half-done order with the broker before acting.
            with anyio.CancelScope(shield=True):
                await self._release()
            raise
        if not bought:
            self.log.info("no entry on {} ({})", lease.symbol, "; ".join(candidate.reasons))
            await self._release()

    async def _buy(self, lease: Lease, reason: str, signal_price: Decimal) -> bool:
        quote = await self.d.market.quote(lease.symbol)
        order_type, price = buy_order(quote)
        qty = self.d.costs.max_buy_qty(self.d.config.capital_limit, price)
        if qty < 1:
            return False
        tier = self.d.tiers.get(lease.symbol)
        placement = Placement(
            lease.symbol,
            Side.BUY,
            qty,
            order_type,
            price,
            lease.fence,
            reason,
            signal_price,
            int(tier) if tier is not None else None,
        )
        deadline = self.d.clock.now() + timedelta(seconds=self.d.config.order_timeout_s)
        thin = tier is Tier.THIN
        cutoff = self.thin_liquidation_start if thin else self.liquidation_start
        try:
            await self.orders.execute(placement, deadline, buy_cutoff=cutoff)
        except BuyRefused as exc:
            if self.d.clock.now() < cutoff:
                await self._risk_halt(str(exc))
            else:
                self.log.warning("buy of {} refused: {}", lease.symbol, exc)
        except LeaseInvalid:
            pass
        position = await self.d.ledger.open_position(lease.symbol)
        if position is None or position.qty <= 0:
            return False
        self.held = HeldPosition(lease.symbol, position.qty, position.avg_price, position.opened_at)
        self.log.info(
            "bought {} x{} @ {} ({})", lease.symbol, position.qty, position.avg_price, reason
        )
        await self._fire(WorkerEvent.BOUGHT)
        return True

    async def _halted(self, view: ScanView) -> bool:
        realized = view.realized_pnl
        if realized > -self.d.config.daily_loss_limit:
            return False
        await self._risk_halt(f"realized {realized} <= -{self.d.config.daily_loss_limit}")
        return True

    async def _risk_halt(self, why: str) -> None:
        if self._halt_published:
            return
        self._halt_published = True
        self.metrics.risk_halted()
        self.log.warning("risk halt: daily loss limit reached, no new buys ({})", why)
        try:
            await self.d.notices.publish(NoticeType.RISK_HALT, self.id, None, {"why": why})
        except CoordinationError as exc:
            self.log.error("risk.halt notice not published: {}", exc)

    async def _adopt_orphan(self, view: ScanView) -> bool:
        """Take over what nobody owns: an open position, or unfinished orders, on a symbol
        whose lock is free (its owner crashed, handed off, or is this worker restarting).
        A live owner always holds the lock, so a free lock means an orphan."""
        orphans = {**view.unfinished, **view.positions}
        if self.lease is not None or not orphans:
            return False
        try:  # once per pass, not per symbol: one round trip when nothing needs seeding
            await self.d.fences.ensure(self.d.ledger.max_fences)
        except CoordinationError as exc:
            self.log.error("adoption skipped, Redis unavailable: {}", exc)
            return False
        for symbol, owner in orphans.items():
            try:
                lease = await self.d.lock.acquire(symbol)
            except CoordinationError as exc:
                self.log.error("adoption skipped, Redis unavailable: {}", exc)
                return False
            if lease is None or not await self._take(lease):
                continue
            await self.d.ledger.adopt_position(symbol, self.id)
            await self._reconcile_orders(symbol)
            fresh = await self.d.ledger.open_position(symbol)
            if fresh is None or fresh.qty <= 0:
                self.log.warning("reconciled {}'s orders on {}: nothing held", owner, symbol)
                await self._release()
                continue
            self.held = HeldPosition(fresh.symbol, fresh.qty, fresh.avg_price, fresh.opened_at)
            self.log.warning("adopted {} x{} from {}", fresh.symbol, fresh.qty, owner)
            await self._fire(WorkerEvent.ADOPTED)
            return True
        return False

    async def _reconcile_orders(self, symbol: str) -> None:
        from trading.recovery import reconcile_unfinished

        await reconcile_unfinished(
            self.orders, self.d.ledger, self.d.broker, self.id, symbol, self.log
        )

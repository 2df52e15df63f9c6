"""One worker's day: IDLE -> SCAN -> HOLD -> SCAN ... -> EXIT.

`Worker.run` opens one task group: the lease keeper (heartbeat), the registry heartbeat and the
order tracker run beside the main loop. The main loop paces itself on the injected clock and
subtracts the work time from each pause. Owning a symbol is one `Tenure` (`async with`): the
entry or the adoption, HOLD and the exit all run inside it, and leaving it releases everything.
Workers stay up through the liquidation window, adopting and closing orphans until the close.

Faults are transient: a server or the broker away is logged and retried with a backoff (while
holding, until the close); one worker's failure is its own and never cancels its siblings in
the same process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import anyio
from loguru import logger

from broker.errors import BrokerUnavailable
from broker.port import PriceWatch
from coordination.errors import BackendUnavailable, CoordinationError
from coordination.heartbeat import LeaseKeeper
from coordination.locks import Lease
from coordination.notices import NoticeType
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.records import ScanView
from market.types import Quote, Tier
from strategy.base import Candidate, sell_signal_at
from strategy.signals import HeldPosition
from strategy.triggers import HasSellLevels
from trading.deps import Deps
from trading.entries import Entries
from trading.exits import AFTER_CLOSE_GRACE, sell_until_flat
from trading.live import WatchedSource
from trading.orders import LeaseExpired, LeaseInvalid, Limits, OrderPlacer
from trading.poller import poll_position
from trading.state import WorkerEvent, WorkerState, next_state
from trading.tenure import FENCE_REFUSED, Tenure, TenureContext, TenureRefused
from trading.tracker import OrderTracker

PARAMS_POLL_S = 0.25  # wall seconds a step waits for the live parameters' version at most
_MAX_TICK_FAILURES = 150  # ~12 minutes of backoff capped at 5 s before an idle worker gives up
_TRANSIENT = (BrokerUnavailable, LedgerUnavailable, BackendUnavailable)


def _backoff_s(failures: int) -> float:
    return min(0.05 * 2.0**failures, 5.0)


class Worker:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        c = deps.config
        self.id = c.worker_id
        self.state = WorkerState.IDLE
        self.tenure: Tenure | None = None
        # time.monotonic() when the main loop last began a step (None before the open): the
        # health check's evidence that the loop is alive.
        self.last_tick_at: float | None = None
        self.crashed: BaseException | None = None
        self.metrics = deps.metrics
        # every line of this worker: its id, state and, while it owns one, symbol and fence
        self.log = logger.bind(worker=self.id).patch(self._log_context)
        self.keeper = LeaseKeeper(deps.lock, interval_s=c.heartbeat_s, on_lost=self._on_lost)
        self.tracker = OrderTracker(
            worker_id=self.id, broker=deps.broker, ledger=deps.ledger, notices=deps.notices,
            clock=deps.clock, boards=deps.boards, trading_day=deps.session.day,
            poll_s=c.order_poll_s, listing_lag_s=c.listing_lag_s, log=self.log,
            metrics=deps.metrics,
        )  # fmt: skip
        self.placer = OrderPlacer(
            worker_id=self.id, broker=deps.broker, ledger=deps.ledger, tracker=self.tracker,
            clock=deps.clock, trading_day=deps.session.open,
            limits=Limits(c.capital_limit, c.daily_loss_limit), log=self.log,
        )  # fmt: skip
        self.ctx = TenureContext(self.id, deps.lock, self.keeper, deps.ledger, self.tracker,
                                 self.placer, deps.clock, deps.metrics, self.log,
                                 partial(deps.fences.ensure, deps.ledger.max_fences))  # fmt: skip
        session = deps.session
        self.liquidation_start = session.liquidation_start(
            timedelta(minutes=c.liquidation_lead_min)
        )
        self.thin_liquidation_start = session.liquidation_start(
            timedelta(minutes=max(c.thin_liquidation_lead_min, c.liquidation_lead_min))
        )
        self.entries = Entries(deps, self.log, self.liquidation_start,
                               self.thin_liquidation_start)  # fmt: skip
        self._stop = anyio.Event()
        self._pause_scope: anyio.CancelScope | None = None
        # HOLD: what the last step saw (for the sell levels to wait on), whether the last wait
        # ended on a trade, how many such wake-ups in a row fired nothing at one clock instant
        # (a strategy whose levels do not match its rules would spin), and the surge state
        self._held: tuple[HeldPosition, Quote, datetime] | None = None
        self._woke_on_trade = False
        self._idle_wakes = 0
        self._idle_at: datetime | None = None
        self._surging = False
        # (market data, strategy, both if they can watch prices): `_price_watch`
        self._watch_kinds: tuple[object, object, tuple[PriceWatch, HasSellLevels] | None] | None
        self._watch_kinds = None

    @property
    def symbol(self) -> str | None:
        return self.tenure.symbol if self.tenure is not None else None

    def _log_context(self, record: Any) -> None:
        extra = record["extra"]
        extra.setdefault("state", self.state.value)
        if self.tenure is not None:
            extra.setdefault("symbol", self.tenure.symbol)
            extra.setdefault("fence", self.tenure.fence)

    # ----- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM): finish the current step, hand off holdings, EXIT."""
        self._stop.set()
        if self._pause_scope is not None:
            self._pause_scope.cancel()

    async def run(self) -> None:
        """The worker's whole day. Never raises: a failure is logged and kept in `crashed`, so
        sibling workers of the same process go on."""
        try:
            await self._register()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.keeper.run)
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self.tracker.run)
                if isinstance(self.d.params, WatchedSource):
                    tg.start_soon(self.d.params.watch)
                try:
                    await self._main()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._exit()
                    tg.cancel_scope.cancel()
        except Exception as exc:
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]
            self.crashed = cause
            self.log.opt(exception=exc).error("worker {} failed: {!r}", self.id, cause)

    async def _register(self) -> None:
        failures = 0
        while True:
            try:
                await self.d.ledger.register_worker(self.id, os.getpid(), socket.gethostname(),
                                                    self.d.config.capital_limit,
                                                    datetime.now(UTC))  # fmt: skip
                break
            except LedgerUnavailable as exc:
                failures += 1
                if failures >= _MAX_TICK_FAILURES:
                    raise
                self.log.error("cannot register ({} in a row): {}", failures, exc)
                await anyio.sleep(_backoff_s(failures))
        await self._publish_state(None, WorkerEvent.START)

    async def _main(self) -> None:
        session = self.d.session
        wait = (session.open - self.d.clock.now()).total_seconds()
        if wait > 0:
            self.log.info("waiting {:.0f}s (clock) for the open at {}", wait, session.open)
            await self._pause(wait)
        else:
            # ready at the open: a virtual clock (market.vclock) lets its fleet start together,
            # in turn order, once every worker waits here
            await self.d.clock.sleep(0)
        if self._stop.is_set() or self.d.clock.now() >= session.close:
            return
        await self._fire(WorkerEvent.START)
        failures = 0
        while not self._stop.is_set():
            self.last_tick_at = time.monotonic()
            await self._follow_params()
            started = self.d.clock.now()
            if started >= session.close + AFTER_CLOSE_GRACE:
                break
            try:
                await self._scan_tick(started)
            except _TRANSIENT as exc:
                # A server or the broker is away: nothing was half-done that the ledger does
                # not know about; try again after a backoff, give up after a bounded run.
                failures += 1
                if failures == 1 or failures % 20 == 0:  # the outage, not every retry
                    self.log.error("{} tick failed ({} in a row): {!r}", self.state, failures, exc)
                if failures >= _MAX_TICK_FAILURES:
                    raise
                await anyio.sleep(_backoff_s(failures))
                continue
            failures = 0
            spent = (self.d.clock.now() - started).total_seconds()
            await self._pause(self.d.config.scan_interval_s - spent)

    async def _pause(
        self, seconds: float, wake: Callable[[float], Awaitable[bool]] | None = None
    ) -> bool:
        """Sleep `seconds` of the clock, or until `wake(seconds)` returns; a stop request cuts
        either short. True when `wake` said it ended early."""
        if seconds <= 0 or self._stop.is_set():
            return False
        woke = False
        try:
            with anyio.CancelScope() as scope:
                self._pause_scope = scope
                if wake is None:
                    await self.d.clock.sleep(seconds)
                else:
                    woke = await wake(seconds)
        finally:
            self._pause_scope = None
        return woke

    async def _exit(self) -> None:
        if self.state is not WorkerState.EXIT:
            await self._fire(WorkerEvent.STOP)
        try:
            await self.d.ledger.summarize_day(self.d.session.day)
        except LedgerError as exc:
            self.log.error("day summary not written (the next worker to exit writes it): {}",
                           exc)  # fmt: skip
        try:
            await self.d.registry.remove(self.id)
        except CoordinationError as exc:
            self.log.error("could not remove the registry entry: {}", exc)

    # ----- transitions -----------------------------------------------------------------------

    async def _fire(self, event: WorkerEvent) -> None:
        old = self.state
        new = next_state(old, event)
        try:
            await self.d.ledger.set_worker_status(self.id, new.value, self.symbol,
                                                  datetime.now(UTC))  # fmt: skip
        except LedgerError as exc:
            self.log.error("worker status {} not recorded: {}", new, exc)
        self.state = new
        self.metrics.state_changed(new)
        self.log.info("state {} -> {} on {}", old, new, event)
        await self._publish_state(old, event)

    async def _publish_state(self, old: WorkerState | None, event: WorkerEvent) -> None:
        try:
            await self.d.notices.publish(
                NoticeType.WORKER_STATE,
                self.id,
                self.symbol,
                {"from": old.value if old else None, "to": self.state.value, "event": event.value},
            )
            await self._registry_update()
        except CoordinationError as exc:
            self.log.error("state notice not published: {}", exc)

    async def _registry_update(self) -> None:
        await self.d.registry.update(self.id, state=self.state.value, symbol=self.symbol,
                                     pid=os.getpid(), host=socket.gethostname(),
                                     heartbeat_at=datetime.now(UTC),
                                     params_version=self.d.params.version)  # fmt: skip

    async def _follow_params(self) -> None:
        """The top of each step: a new version of the fleet's live parameters (`trading.live`)
        applies from this step on, and the registry shows it at once.

        Never at a protected position's expense: while the tenure is degraded (Redis away) the
        poll is skipped, and a poll that gets no answer within `PARAMS_POLL_S` leaves the
        parameters as they are until the next step (Redis's own timeout is 2 s a call)."""
        if self.tenure is not None and self.tenure.degraded:
            return
        config = None
        with anyio.move_on_after(PARAMS_POLL_S):
            config = await self.d.params.poll()
        if config is None:
            return
        old, self.d = self.d.config, replace(self.d, config=config)
        self.entries.d = self.d
        self.placer.limits = Limits(config.capital_limit, config.daily_loss_limit)
        self.log.info("live parameters v{} applied ({} changed)", self.d.params.version,
                      "config" if old != config else "nothing")  # fmt: skip
        try:
            await self._registry_update()
        except CoordinationError as exc:
            self.log.error("registry not told of parameters v{}: {}", self.d.params.version, exc)

    async def _heartbeat_loop(self) -> None:
        failing = 0  # heartbeats failed in a row: an outage is logged when it starts and ends
        while True:
            await anyio.sleep(self.d.config.heartbeat_s)
            try:
                await self._registry_update()
                now = datetime.now(UTC)
                await self.d.ledger.worker_heartbeat(self.id, now)
                tenure = self.tenure
                if tenure is not None:
                    await self.d.ledger.lock_heartbeat(tenure.symbol, self.id, tenure.fence, now)
            except (CoordinationError, LedgerError) as exc:
                failing += 1
                if failing == 1:
                    self.log.error("heartbeat failed (retrying every period): {}", exc)
                continue
            if failing:
                self.log.warning("heartbeat back after {} failed period(s)", failing)
                failing = 0

    async def _on_lost(self, lease: Lease, why: str) -> None:
        tenure = self.tenure
        if tenure is not None and tenure.symbol == lease.symbol:
            tenure.mark_lost(why)

    # ----- SCAN ------------------------------------------------------------------------------

    async def _scan_tick(self, started: datetime) -> None:
        view = await self.d.ledger.scan_view(self.d.session.day)
        if await self._adopt_orphan(view):
            return
        if started >= self.liquidation_start:
            return  # no new buys from here; orphans are still adopted until the close
        if await self.entries.check_halt(view):
            return
        scan_started = time.monotonic()
        ranked = await self.entries.candidates(view)
        self.metrics.scan_done(time.monotonic() - scan_started)
        if not ranked:
            return
        lease = await self.entries.choose(ranked)
        if lease is not None:
            candidate = next(c for c in ranked if c.symbol == lease.symbol)
            await self._own(lease, candidate)

    async def _adopt_orphan(self, view: ScanView) -> bool:
        """Take over what nobody owns: an open position, or unfinished orders, on a symbol
        whose lock is free (its owner crashed, handed off, or is this worker restarting).
        A live owner always holds the lock, so a free lock means an orphan."""
        orphans = {**view.unfinished, **view.positions}
        if not orphans:
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
            if lease is None:
                continue
            self.log.warning("taking over {} from {}", symbol, owner)
            if await self._own(lease, None):
                return True
        return False

    # ----- owning a symbol -------------------------------------------------------------------

    async def _own(self, lease: Lease, candidate: Candidate | None) -> bool:
        """One tenure on `lease`: buy `candidate` (or adopt what is there), HOLD, sell.
        True when the worker held a position during it."""
        c = self.d.config
        until = self.d.clock.now() + timedelta(seconds=2 * c.listing_lag_s + c.order_timeout_s)
        outcome: WorkerEvent | None = None
        try:
            async with Tenure.open(self.ctx, lease, reconcile_until=until) as tenure:
                self.tenure = tenure
                held = await tenure.position()
                if held is None and candidate is not None:
                    if not await self.entries.buy(tenure, candidate):
                        self.log.info("no entry on {} ({})", lease.symbol,
                                      "; ".join(candidate.reasons))  # fmt: skip
                        return False
                    await self._fire(WorkerEvent.BOUGHT)
                elif held is None:
                    self.log.info("reconciled {}: nothing held", lease.symbol)
                    return False
                else:
                    self.log.warning("adopted {} x{}", held.symbol, held.qty)
                    await self._fire(WorkerEvent.ADOPTED)
                outcome = await self._hold(tenure)
        except TenureRefused:
            return False
        except LeaseInvalid as exc:
            self.log.warning("tenure on {} ended: {}", lease.symbol, exc)
            if self.state is WorkerState.HOLD:
                outcome = WorkerEvent.LOCK_LOST
        finally:
            self.tenure = None
        if outcome is not None and outcome is not WorkerEvent.STOP:
            await self._fire(outcome)
        return True

    async def _hold(self, tenure: Tenure) -> WorkerEvent:
        """HOLD until flat (SOLD), the lease is lost (LOCK_LOST) or the worker stops (STOP)."""
        failures = 0
        while True:
            if self._stop.is_set():
                return WorkerEvent.STOP
            self.last_tick_at = time.monotonic()
            await self._follow_params()
            started = self.d.clock.now()
            if started >= self.d.session.close + AFTER_CLOSE_GRACE:
                self.log.error("{} still held after the close", tenure.symbol)
                return WorkerEvent.STOP
            try:
                if tenure.degraded and await self._verify(tenure) == "lost":
                    return WorkerEvent.LOCK_LOST
                with tenure.scope() as scope:
                    flat = await self._hold_step(tenure)
                if flat:
                    return WorkerEvent.SOLD
                if (scope.cancelled_caught or tenure.lost) and await self._verify(tenure) == "lost":
                    return WorkerEvent.LOCK_LOST
            except LeaseExpired:
                # the lease lapsed locally before a submit: ask Redis who owns the symbol now
                if await self._verify(tenure) == "lost":
                    return WorkerEvent.LOCK_LOST
                continue
            except LeaseInvalid as exc:
                self.log.error("lease on {} invalid ({}); position goes to recovery",
                               tenure.symbol, exc)  # fmt: skip
                tenure.mark_lost(FENCE_REFUSED)
                self.metrics.lease_lost()
                return WorkerEvent.LOCK_LOST
            except (*_TRANSIENT, CoordinationError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:  # the outage, not every retry
                    self.log.error("HOLD step on {} failed ({} in a row): {!r}", tenure.symbol,
                                   failures, exc)  # fmt: skip
                await anyio.sleep(_backoff_s(failures))
                continue
            failures = 0
            spent = (self.d.clock.now() - started).total_seconds()
            await self._hold_wait(tenure, self._hold_interval(tenure) - spent)

    def _hold_interval(self, tenure: Tenure) -> float:
        """HOLD_INTERVAL_S, or VOL_SURGE_HOLD_S while the held symbol's last minute ranged
        VOL_SURGE_RATIO times its average minute or more (`Quote.range_ratio`)."""
        c = self.d.config
        ratio = None if self._held is None else self._held[1].range_ratio
        surging = ratio is not None and ratio >= c.vol_surge_ratio
        if surging != self._surging:
            self._surging = surging
            if surging:
                self.log.info("volatility surge on {}: last minute {:.1f}x its average range; "
                              "checking every {:g}s", tenure.symbol, ratio,
                              min(c.hold_interval_s, c.vol_surge_hold_s))  # fmt: skip
            else:
                self.log.info("volatility on {} back to normal", tenure.symbol)
        return min(c.hold_interval_s, c.vol_surge_hold_s) if surging else c.hold_interval_s

    async def _hold_wait(self, tenure: Tenure, seconds: float) -> None:
        """Until the next HOLD step: on market data that can watch prices (`PriceWatch`), until
        a trade reaches a sell level or `seconds` pass; otherwise a plain pause."""
        c = self.d.config
        self._woke_on_trade = False
        watching = self._price_watch()
        if (
            not c.tick_stops
            or self._held is None
            or watching is None
            or self._idle_wakes >= 2  # woken twice at one instant for nothing: poll this once
        ):
            self._idle_wakes = 0
            await self._pause(seconds)
            return
        market, strategy = watching
        held, quote, now = self._held
        levels = strategy.sell_levels(held, quote, now)
        watch = partial(market.wait_price, tenure.symbol, levels.below, levels.above)
        started = self.d.clock.now()
        try:
            self._woke_on_trade = await self._pause(seconds, watch)
        except _TRANSIENT as exc:  # the watch is an optimisation: poll instead
            self.log.warning("price watch on {} unavailable ({!r}); polling", tenure.symbol, exc)
            spent = (self.d.clock.now() - started).total_seconds()
            await self._pause(seconds - spent)

    def _price_watch(self) -> tuple[PriceWatch, HasSellLevels] | None:
        """The market data and strategy if they can watch prices for sell levels; checked once
        per pair (a runtime protocol check costs more than the rest of a HOLD step's wait)."""
        market, strategy = self.d.market, self.d.config.strategy
        kept = self._watch_kinds
        if kept is None or kept[0] is not market or kept[1] is not strategy:
            both = None
            if isinstance(market, PriceWatch) and isinstance(strategy, HasSellLevels):
                both = (market, strategy)
            kept = self._watch_kinds = (market, strategy, both)
        return kept[2]

    async def _verify(self, tenure: Tenure) -> str:
        was_degraded = tenure.degraded
        verdict = await tenure.reverify()
        if verdict == "lost":
            self.log.error("lease on {} lost ({}); position goes to recovery", tenure.symbol,
                           tenure.lost)  # fmt: skip
            self.metrics.lease_lost()
        elif verdict == "away" and not was_degraded:
            self.log.warning("Redis unreachable: protecting {} through the broker under fence "
                             "{}", tenure.symbol, tenure.fence)  # fmt: skip
        return verdict

    async def _hold_step(self, tenure: Tenure) -> bool:
        """Check the sell rules once; sell until flat when one fires. True once flat."""
        d = self.d
        position = await tenure.position()
        if position is None:
            return True
        now = d.clock.now()
        quote = await poll_position(d.market, tenure.symbol, d.config.strategy.quote_ma_bars)
        self.metrics.position_marked(position.qty, position.avg_price, quote.price)
        thin = d.tiers.get(tenure.symbol) is Tier.THIN
        liq = self.thin_liquidation_start if thin else self.liquidation_start
        if self._stop.is_set():
            return False
        held = HeldPosition(position.symbol, position.qty, position.avg_price, position.opened_at)
        self._held = (held, quote, now)
        signal = sell_signal_at(d.config.strategy, held, quote, now, liq)
        if signal is None:
            if self._woke_on_trade:  # the levels moved (a new minute's MA): wait on the new
                self._idle_wakes = self._idle_wakes + 1 if now == self._idle_at else 1
                self._idle_at = now
            return False
        self._idle_wakes = 0
        if self._woke_on_trade:
            self.metrics.tick_stop()
        self.log.info("sell signal on {}: {} at {}", held.symbol, signal.reason, quote.price)
        return await sell_until_flat(d, tenure, signal, self.log)

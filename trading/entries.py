"""SCAN: rank the universe, lock the best free candidate, buy within the capital limit; and the
daily loss limit's halt, which stops new buys for the rest of the day.

A symbol with an open account drift (`trading.reconcile`: the broker's holdings differ from
the ledger's, unexplained) is no candidate, and the ledger refuses a BUY on it anyway
(`DriftRefused`), so a drift recorded between the scan and the order still stops the buy."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from coordination.errors import CoordinationError
from coordination.locks import Lease
from coordination.notices import NoticeType
from ledger.errors import LedgerError
from ledger.records import ScanView
from market.orders import Side
from market.types import Tier
from strategy.base import Candidate
from strategy.signals import buy_order
from trading.deps import Deps
from trading.orders import BuyRefused, DriftRefused, LeaseInvalid, Placement
from trading.poller import scan_candidates
from trading.tenure import Tenure


class Entries:
    """The buying half of one worker."""

    def __init__(self, deps: Deps, log: Any, liquidation_start: datetime,
                 thin_liquidation_start: datetime) -> None:  # fmt: skip
        self.d = deps
        self.log = log
        self.liquidation_start = liquidation_start
        self.thin_liquidation_start = thin_liquidation_start
        self.halted = False

    async def candidates(self, view: ScanView) -> list[Candidate]:
        """Ranked candidates the buy rule accepts that nobody holds and that no open account
        drift blocks, best first."""
        c = self.d.config
        ranked = await scan_candidates(self.d.market, c.strategy, c.n_bars)
        taken = set(view.positions) | set(view.unfinished) | set(view.drifted)
        # thin names are liquidated earlier, so they stop being bought earlier too
        no_thin = self.d.clock.now() >= self.thin_liquidation_start
        return [
            x for x in ranked if x.symbol not in taken and not (no_thin and x.tier is Tier.THIN)
        ]

    async def choose(self, ranked: list[Candidate]) -> Lease | None:
        """Lock the best candidate nobody owns (one round trip for the whole list)."""
        try:
            await self.d.fences.ensure(self.d.ledger.max_fences)
            lease = await self.d.lock.acquire_first([x.symbol for x in ranked])
        except (CoordinationError, LedgerError) as exc:
            self.log.error("cannot acquire (no buys while a server is away): {}", exc)
            return None
        if lease is None or lease.symbol != ranked[0].symbol:
            self.d.metrics.lock_contended()
        if lease is None:
            self.log.warning("contention: all {} candidates are owned", len(ranked))
        elif lease.symbol != ranked[0].symbol:
            self.log.warning("contention: {} owned elsewhere, took {}", ranked[0].symbol,
                             lease.symbol)  # fmt: skip
        return lease

    async def buy(self, tenure: Tenure, candidate: Candidate) -> bool:
        """Buy `candidate` under `tenure`; True when a position is held afterwards."""
        d, symbol = self.d, tenure.symbol
        quote = await d.market.quote(symbol)
        order_type, price = buy_order(quote)
        qty = d.costs.max_buy_qty(d.config.capital_limit, price)
        if qty < 1:
            return False
        tier = d.tiers.get(symbol)
        reason = d.config.strategy.buy_signal(candidate) or "signal"
        placement = Placement(symbol, Side.BUY, qty, order_type, price, tenure.fence, reason,
                              candidate.price, int(tier) if tier is not None else None)  # fmt: skip
        cancel_at = d.clock.now() + timedelta(seconds=d.config.order_timeout_s)
        cutoff = self.thin_liquidation_start if tier is Tier.THIN else self.liquidation_start
        try:
            with tenure.scope():
                await tenure.place(placement, cancel_at, buy_cutoff=cutoff)
        except DriftRefused as exc:  # this symbol only: no halt
            self.log.warning("buy of {} refused: {}", symbol, exc)
        except BuyRefused as exc:
            if d.clock.now() < cutoff:
                await self.halt(str(exc))
            else:
                self.log.warning("buy of {} refused: {}", symbol, exc)
        except LeaseInvalid as exc:
            self.log.warning("buy of {} stopped: {}", symbol, exc)
        position = await tenure.position()
        if position is None:
            return False
        self.log.info("bought {} x{} @ {} ({})", symbol, position.qty, position.avg_price, reason)
        return True

    async def check_halt(self, view: ScanView) -> bool:
        """True once the day's loss limit has been reached (latched for the day)."""
        if self.halted:
            return True
        limit = self.d.config.daily_loss_limit
        if view.halted:
            await self.halt("the day's loss limit was reached earlier (ledger)")
        elif view.low_pnl <= -limit:
            # the day's low, not the current figure: a later recovery does not reopen buying
            await self.halt(f"realized pnl reached {view.low_pnl} <= -{limit} today")
        return self.halted

    async def halt(self, why: str) -> None:
        """Latch the halt: recorded once for the day in the ledger, announced once."""
        if self.halted:
            return
        self.halted = True
        d = self.d
        d.metrics.risk_halted()
        self.log.warning("risk halt: daily loss limit reached, no new buys ({})", why)
        try:
            realized = await d.ledger.realized_pnl(d.session.day)
            first = await d.ledger.record_halt(d.session.day, d.clock.now(), realized,
                                               d.config.daily_loss_limit, d.config.worker_id,
                                               why)  # fmt: skip
        except LedgerError as exc:
            self.log.error("risk halt not recorded in the ledger: {}", exc)
            first = True
        if not first:
            return
        try:
            await d.notices.publish(NoticeType.RISK_HALT, d.config.worker_id, None, {"why": why})
        except CoordinationError as exc:
            self.log.error("risk.halt notice not published: {}", exc)

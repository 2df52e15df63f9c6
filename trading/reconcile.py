"""Account reconciliation: the broker's account (cash, holdings) against the ledger, at the
start of the day and every `ReconcileConfig.interval_s`, by one `AccountReconciler` per fleet
(per account: it runs under the fleet-wide lease `coordination.singleton`, see `run_exclusive`).

One pass (`reconcile_once`):

1. **Fills the ledger lacks, on orders it knows.** Every unfinished order the broker
   acknowledged (SENT, PARTIALLY_FILLED) is asked about (`order_status`). When the broker
   reports more than the ledger holds (more fills, or the order done) and its report last
   changed at least `catch_up_after_s` ago, the ledger has fallen behind: the owner's tracker
   polls every few seconds and an adopter takes over a dead owner's orders within a lock TTL,
   so a report that old that nobody applied means the owner is stuck or gone (or a notice was
   lost and nothing polled). It is applied through the tracker's path (`OrderTracker.apply`
   -> `Ledger.apply_order_status`): idempotent by cumulative filled quantity, so a fill the
   owner's tracker applies at the same time, or a second pass, is applied exactly once.
   Fresher reports are left to the owner (applying them here would take the order, and with
   it the position, out of the adoption path).
2. **The account, bracketed.** The ledger's view is read, then the broker's account, then the
   ledger's view again. A symbol is *busy*, and skipped this pass, when either read shows an
   unfinished order on it (in flight: sent, claimed, looked up or not yet sent, so the broker
   and the ledger may legitimately differ) or when the two reads differ on it (an order was
   placed, filled or applied while the broker was read). Every other symbol was still in the
   ledger while the broker answered, so the two must agree.
3. **Holdings.** For every quiet symbol the broker holds, the ledger holds (live positions,
   summed over workers), or an open drift names: the broker's quantity must equal the ledger's.
   A difference is an unexplained drift: holdings the ledger does not know (an order placed
   outside the fleet, a transfer in) or a ledger position the broker does not have (a manual
   sell, a transfer out, a fill the ledger counted that never happened). It raises the alarm
   and blocks new BUYs on the symbol (see below) until a later pass finds the symbol consistent
   again, which clears it (recorded: when, by whom, why).
4. **Cash**, only in a pass where no symbol is busy. The ledger knows money flows, not the
   balance: the first quiet pass takes the broker's cash and the ledger's cash flow of the day
   (sell amounts − buy amounts − fees − taxes, from the fills) as the baseline; later quiet
   passes expect `baseline cash + (cash flow now − cash flow then)`. The broker's figure is the
   deposit after today's executions settle (KIS ``prvs_rcdl_excc_amt``, D+2), so unsettled
   trades are not drift. Tolerance: `cash_tolerance_won` + `cash_tolerance_rate` × the won
   traded since the baseline, for fees and taxes the broker rounds per execution while the
   ledger rounds per fill, and a commission rate that differs slightly. A larger difference (a
   deposit or withdrawal, a fee the ledger does not know) is an alarm but blocks nothing; it
   clears when the difference comes back within the tolerance, or with a new baseline (a new
   day, or the lease moving to another process, which starts from the broker's figure).
   Skipped for a broker that does not model cash (`AccountSnapshot.cash` None).

The alarm, once per episode (or when its figures change): an ERROR log with the figures, an
``account.drift`` notice on ``fleet:events`` (shaped like ``risk.halt``: ``data.why`` says
what, plus the figures), the `AccountMetrics` hook (``account_drift_total{kind,symbol}``) and
an ``account_drifts`` row. While a holding drift is open, the scan skips the symbol and the
ledger's fenced BUY insert refuses it (`SymbolDrifted`), so no BUY lands on it even if the drift
is recorded between a scan and its order. Selling is never blocked. Clearing publishes
``account.drift_cleared``.

Never raises from `run`: a broker, ledger or Redis failure is logged and the pass retried at
the next interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import anyio
from loguru import logger

from broker.errors import BrokerError, UnknownOrder
from broker.port import Broker
from coordination.errors import CoordinationError
from coordination.notices import Notices, NoticeType
from coordination.singleton import RedisSingleton
from ledger.drift import CASH, HOLDING, AccountView, DriftObservation
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.orders import OrderState
from ledger.repository import Ledger
from market.account import AccountSnapshot
from market.calendar import Session
from market.clock import Clock
from market.types import Board
from trading.metrics import NULL_ACCOUNT_METRICS, NULL_METRICS, AccountMetrics
from trading.tracker import OrderTracker

#: orders acknowledged by the broker whose fills the reconciliation may apply
_AT_BROKER = frozenset({OrderState.SENT, OrderState.PARTIALLY_FILLED})
#: the `coordination.singleton` name of the reconciler's fleet-wide lease
LEASE_NAME = "reconciler"


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    """How often, and how much cash difference is tolerated (see the module docstring)."""

    interval_s: float = 180.0  # clock seconds between passes
    #: a broker report the ledger has lacked this long (clock s) is applied here
    catch_up_after_s: float = 600.0
    cash_tolerance_won: Decimal = Decimal(1_000)
    cash_tolerance_rate: Decimal = Decimal("0.0005")  # of the won traded since the baseline


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one pass did."""

    at: datetime
    applied_fills: int = 0
    checked: tuple[str, ...] = ()  # symbols compared
    busy: tuple[str, ...] = ()  # skipped: in flight, or the ledger moved during the read
    drifted: tuple[str, ...] = ()  # symbols with a holding drift open after the pass
    cleared: tuple[str, ...] = ()  # drifts cleared by this pass ('' for cash)
    cash_checked: bool = False
    cash_difference: Decimal | None = None  # broker − expected, when checked
    alarms: int = 0  # drifts recorded (new or changed) by this pass


@dataclass
class _Baseline:
    cash: Decimal  # the broker's
    flow: Decimal  # the ledger's cash flow of the day then
    traded: Decimal  # the ledger's won traded that day then


@dataclass
class _Pass:
    at: datetime
    applied: int = 0
    alarms: int = 0
    cleared: list[str] = field(default_factory=list)


class AccountReconciler:
    """Compares one account with the ledger (see the module docstring)."""

    def __init__(
        self,
        *,
        reconciler_id: str,
        broker: Broker,
        ledger: Ledger,
        notices: Notices,
        clock: Clock,
        session: Session,
        boards: dict[str, Board],
        config: ReconcileConfig | None = None,
        metrics: AccountMetrics = NULL_ACCOUNT_METRICS,
        log: Any = None,
    ) -> None:
        self.id = reconciler_id
        self.broker = broker
        self.ledger = ledger
        self.notices = notices
        self.clock = clock
        self.session = session
        self.config = config or ReconcileConfig()
        if not self.config.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.config.interval_s}")
        self.metrics = metrics
        self.log = log or logger.bind(worker=f"reconciler:{reconciler_id[:8]}")
        # only its `apply` is used: the tracker's idempotent path into the ledger, with the
        # order.filled notices it publishes
        self._applier = OrderTracker(
            worker_id=reconciler_id, broker=broker, ledger=ledger, notices=notices, clock=clock,
            boards=boards, trading_day=session.day, poll_s=1.0, listing_lag_s=0.0, log=self.log,
            metrics=NULL_METRICS,
        )  # fmt: skip
        self._baseline: _Baseline | None = None

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        """A pass now (the start of the day for a process started before the open), one at the
        open, then one every `interval_s` of the clock, until cancelled."""
        while True:
            started = self.clock.now()
            try:
                await self.reconcile_once()
            except (BrokerError, LedgerError, CoordinationError) as exc:
                self.metrics.account_reconciled("failed")
                self.log.warning("account reconciliation failed, retrying in {:g} s: {!r}",
                                 self.config.interval_s, exc)  # fmt: skip
            now = self.clock.now()
            wait = self.config.interval_s - (now - started).total_seconds()
            if started < self.session.open:
                wait = min(wait, (self.session.open - now).total_seconds())
            await self.clock.sleep(max(0.0, wait))

    # -- one pass ---------------------------------------------------------------------------

    async def reconcile_once(self) -> ReconcileReport:
        """One pass (see the module docstring)."""
        p = _Pass(self.clock.now())
        day = self.session.day
        await self._catch_up(p, await self.ledger.account_view(day))
        before = await self.ledger.account_view(day)
        account = await self.broker.account()
        after = await self.ledger.account_view(day)
        busy = _busy(before, after)
        drifts = {(d.kind, d.symbol): d for d in await self.ledger.open_drifts()}
        subjects = (
            set(account.holdings)
            | {s for s, b in after.symbols.items() if b.qty}
            | {symbol for kind, symbol in drifts if kind == HOLDING}
        )
        checked = sorted(subjects - busy)
        for symbol in checked:
            await self._check_holding(p, symbol, account, after, (HOLDING, symbol) in drifts)
        cash_difference = None
        if not busy and account.cash is not None:
            cash_difference = await self._check_cash(p, account, after, (CASH, "") in drifts)
        still_open = await self.ledger.open_drifts()
        self.metrics.account_drifts_open(len(still_open))
        self.metrics.account_reconciled("drift" if still_open else "consistent")
        report = ReconcileReport(
            at=p.at,
            applied_fills=p.applied,
            checked=tuple(checked),
            busy=tuple(sorted(busy)),
            drifted=tuple(d.symbol for d in still_open if d.kind == HOLDING),
            cleared=tuple(p.cleared),
            cash_checked=cash_difference is not None,
            cash_difference=cash_difference,
            alarms=p.alarms,
        )
        self.log.debug("account reconciled: {}", report)
        return report

    async def _catch_up(self, p: _Pass, view: AccountView) -> None:
        """Apply what the broker reports on the unfinished orders it acknowledged."""
        stale = p.at - timedelta(seconds=self.config.catch_up_after_s)
        for order in view.unfinished:
            if order.broker_order_id is None or order.status not in _AT_BROKER:
                continue
            try:
                status = await self.broker.order_status(order.broker_order_id)
            except UnknownOrder:
                continue  # not listed yet: its owner's tracker asks again
            if status.filled_qty <= order.filled_qty and not status.done:
                continue  # nothing the ledger lacks
            if status.updated_at > stale:
                continue  # fresh: its owner's tracker (or its adopter) applies it
            try:
                record = await self._applier.apply(order.client_order_id, status)
            except LedgerUnavailable:
                raise
            except LedgerError as exc:
                # the report contradicts the ledger: an alarm for this order, not the pass's end
                self.log.error("order {}: broker report refused by the ledger: {}",
                               order.client_order_id, exc)  # fmt: skip
                continue
            if record.filled_qty > order.filled_qty:
                p.applied += 1
                self.log.warning(
                    "fill the ledger lacked applied: order {} ({} {} {}) {} -> {} filled",
                    order.client_order_id, order.side, order.qty, order.symbol,
                    order.filled_qty, record.filled_qty,
                )  # fmt: skip

    async def _check_holding(
        self, p: _Pass, symbol: str, account: AccountSnapshot, view: AccountView, is_open: bool
    ) -> None:
        broker_qty, ledger_qty = account.qty(symbol), view.qty(symbol)
        if broker_qty == ledger_qty:
            if is_open:
                await self._clear(p, HOLDING, symbol, f"the broker and the ledger both hold "
                                  f"{ledger_qty} again")  # fmt: skip
            return
        held = account.holdings.get(symbol)
        book = view.symbols.get(symbol)
        what = (
            "holdings the ledger does not know"
            if broker_qty > ledger_qty
            else "a ledger position the broker does not have"
        )
        why = (
            f"{symbol}: the broker holds {broker_qty}, the ledger {ledger_qty} with no order in "
            f"flight ({what}); no new BUY on it until explained"
        )
        observed = DriftObservation(
            kind=HOLDING, symbol=symbol, trading_day=self.session.day, at=p.at, detail=why,
            recorded_by=self.id, broker_qty=broker_qty, ledger_qty=ledger_qty,
            broker_avg_price=_price(held.avg_price) if held is not None else None,
            ledger_avg_price=_price(book.avg_price) if book is not None else None,
        )  # fmt: skip
        await self._alarm(p, observed)

    async def _check_cash(
        self, p: _Pass, account: AccountSnapshot, view: AccountView, is_open: bool
    ) -> Decimal | None:
        assert account.cash is not None
        base = self._baseline
        if base is None:
            self._baseline = _Baseline(account.cash, view.cash_flow, view.traded)
            self.log.info("cash baseline: broker {} won, ledger flow {} won", account.cash,
                          view.cash_flow)  # fmt: skip
            return Decimal(0)
        expected = base.cash + (view.cash_flow - base.flow)
        difference = account.cash - expected
        tolerance = self.config.cash_tolerance_won + self.config.cash_tolerance_rate * (
            view.traded - base.traded
        )
        if abs(difference) <= tolerance:
            if is_open:
                await self._clear(p, CASH, "", f"cash {account.cash} within {tolerance} of the "
                                  f"expected {expected} again")  # fmt: skip
            return difference
        why = (
            f"cash: the broker reports {account.cash} won, the ledger's fills since the baseline "
            f"explain {expected} won (difference {difference}, tolerance {tolerance}); buys "
            "are not blocked"
        )
        observed = DriftObservation(
            kind=CASH, symbol="", trading_day=self.session.day, at=p.at, detail=why,
            recorded_by=self.id, broker_cash=account.cash, expected_cash=expected,
        )  # fmt: skip
        await self._alarm(p, observed, tolerance=tolerance)
        return difference

    # -- alarm and clearing -----------------------------------------------------------------

    async def _alarm(
        self, p: _Pass, o: DriftObservation, *, tolerance: Decimal | None = None
    ) -> None:
        # shielded: a lease lost mid-alarm must not leave a recorded drift unannounced
        with anyio.CancelScope(shield=True):
            if tolerance is not None and await self._same_cash_drift(o, tolerance):
                return
            record, what = await self.ledger.record_drift(o)
            if what == "same":
                return
            p.alarms += 1
            self.log.error(
                "account drift {} ({}): {} [record {}, broker qty {}, ledger qty {}, broker avg "
                "{}, ledger avg {}, broker cash {}, expected cash {}]",
                o.symbol or "cash", what, o.detail, record.id, o.broker_qty, o.ledger_qty,
                o.broker_avg_price, o.ledger_avg_price, o.broker_cash, o.expected_cash,
            )  # fmt: skip
            self.metrics.account_drifted(o.kind, o.symbol)
            data = {
                "why": o.detail, "kind": o.kind, "drift_id": record.id, "change": what,
                "broker_qty": o.broker_qty, "ledger_qty": o.ledger_qty,
                "broker_cash": o.broker_cash, "expected_cash": o.expected_cash,
            }  # fmt: skip
            try:
                await self.notices.publish(NoticeType.ACCOUNT_DRIFT, self.id, o.symbol or None,
                                           data)  # fmt: skip
            except CoordinationError as exc:
                self.log.error("account.drift notice not published: {}", exc)

    async def _same_cash_drift(self, o: DriftObservation, tolerance: Decimal) -> bool:
        """A cash drift already open with a difference within `tolerance` of this one: the
        same episode (the figures move with every trade; the difference is what matters)."""
        for d in await self.ledger.open_drifts():
            if d.kind == CASH and d.broker_cash is not None and d.expected_cash is not None:
                new = (o.broker_cash or Decimal(0)) - (o.expected_cash or Decimal(0))
                return abs(new - (d.broker_cash - d.expected_cash)) <= tolerance
        return False

    async def _clear(self, p: _Pass, kind: str, symbol: str, reason: str) -> None:
        with anyio.CancelScope(shield=True):
            cleared = await self.ledger.clear_drift(kind, symbol, p.at, self.id, reason)
            if cleared is None:
                return
            p.cleared.append(symbol)
            self.log.warning("account drift {} cleared: {} (record {})", symbol or "cash",
                             reason, cleared.id)  # fmt: skip
            data = {"why": reason, "kind": kind, "drift_id": cleared.id}
            try:
                await self.notices.publish(NoticeType.ACCOUNT_DRIFT_CLEARED, self.id,
                                           symbol or None, data)  # fmt: skip
            except CoordinationError as exc:
                self.log.error("account.drift_cleared notice not published: {}", exc)


def _busy(before: AccountView, after: AccountView) -> set[str]:
    """Symbols with an order in flight in either read, or whose ledger figures moved between
    the two reads."""
    symbols = set(before.symbols) | set(after.symbols)
    return {
        s
        for s in symbols
        if before.symbols.get(s) != after.symbols.get(s)
        or any(v.symbols[s].unfinished for v in (before, after) if s in v.symbols)
    }


def _price(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("0.0001"))


async def run_exclusive(lease: RedisSingleton, reconciler: AccountReconciler) -> None:
    """Run `reconciler` only while this process holds the fleet's reconciler lease; every other
    process stands by and takes over within one lease TTL when the holder dies."""
    await lease.exclusive(reconciler.run)

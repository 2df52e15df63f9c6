"""The in-flight tracker: every non-final order of a live worker is driven to a final state from
the broker's truth, by one loop that does not depend on the coroutine that placed the order.

    placer:  create_order -> begin_submit -> submit_order -> hand(cid, cancel_at) -> final(cid)
    tracker: every ORDER_POLL_S while it follows anything:
             SENT / PARTIALLY_FILLED  order_status (cancel once cancel_at passed) -> apply
             SUBMITTING / UNKNOWN     find_orders -> link to the broker's order, or, once the
                                      broker had LISTING_LAG_S to list it, "not placed"

The placer may unwind at any point (lease lost, cancel scope, ledger error): the order stays in
the ledger as unfinished and the tracker keeps following it until the broker says it is final.
An order whose outcome is unknown stays UNKNOWN and is looked up again; it is never called "not
placed" after one empty lookup, and never sent again. Errors of the broker or the ledger are
transient here: logged, retried on the next pass, never fatal.

Fill hints: a broker that hears of its orders' fills (KIS's fill notices, routed by the gateway:
`broker.kis.feed.HintedBroker`) offers `FillHints`; the tracker then follows them beside its
loop, and each hint (`refresh_order`) makes it ask the broker about that order at once instead
of at the next poll. A hint is never a fill: the broker's answer is applied, as on a poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NoReturn, Protocol, runtime_checkable

import anyio

from broker.errors import BrokerError, UnknownOrder
from broker.port import Broker
from coordination.errors import CoordinationError
from coordination.notices import Notices, NoticeType
from ledger.applying import target_state
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.orders import TERMINAL, OrderState
from ledger.records import OrderRecord
from ledger.repository import Ledger
from market.clock import Clock
from market.orders import ClientOrderId, OrderStatus, canonical_broker_order_id
from market.types import Board
from market.vclock import participating, wait_event
from trading.metrics import NOT_PLACED, NULL_METRICS, WorkerMetrics

#: orders whose broker id is still missing: asked about with find_orders
_LOOKUP = frozenset({OrderState.SUBMITTING, OrderState.UNKNOWN})
#: how often the tracker re-reads the ledger for orders it does not know yet (clock seconds)
_REFRESH_S = 300.0


@runtime_checkable
class FillHints(Protocol):
    """A broker that tells a worker which of its orders just changed (a hint to ask now)."""

    def fill_hints(self, worker_id: str) -> AsyncIterator[str]:
        """Broker order ids, as the broker hears of them, forever."""
        ...


@dataclass
class _Followed:
    order: OrderRecord
    cancel_at: datetime | None  # None: cancel whatever is working at once (not ours to wait on)
    done: anyio.Event = field(default_factory=anyio.Event)
    final: OrderRecord | None = None


def _applied(order: OrderRecord, status: OrderStatus) -> bool:
    """Whether `status` is what `order` (the ledger's record as last read or written here)
    already says: the same broker order, fills and state, so `Ledger.apply_order_status` would
    change nothing (its "already applied" case). Anything else goes to the ledger, which checks
    it and answers with the current record."""
    return (
        order.broker_order_id is not None
        and order.status not in TERMINAL
        and canonical_broker_order_id(order.broker_order_id)
        == canonical_broker_order_id(status.broker_order_id)
        and (status.symbol, status.side, status.qty) == (order.symbol, order.side, order.qty)
        and status.filled_qty == order.filled_qty
        and status.filled_amount == order.filled_amount
        and target_state(order.qty, status) is order.status
    )


class OrderTracker:
    """Follows the unfinished orders of one worker (its own and the ones it adopted)."""

    def __init__(
        self,
        *,
        worker_id: str,
        broker: Broker,
        ledger: Ledger,
        notices: Notices,
        clock: Clock,
        boards: dict[str, Board],
        trading_day: date,
        poll_s: float,
        listing_lag_s: float,
        log: Any,
        metrics: WorkerMetrics = NULL_METRICS,
    ) -> None:
        self.worker_id = worker_id
        self.broker = broker
        self.ledger = ledger
        self.notices = notices
        self.clock = clock
        self.boards = boards
        self.trading_day = trading_day
        self.poll_s = poll_s
        self.listing_lag = timedelta(seconds=listing_lag_s)
        self.log = log
        self.metrics = metrics
        self._followed: dict[str, _Followed] = {}
        # cid -> symbol of orders being submitted right now by a placer: hands off
        self._in_hand: dict[str, str] = {}
        self._wake = anyio.Event()
        self._refreshed_at: datetime | None = None
        # broker order ids hinted and not asked about yet -> when the hint came (clock)
        self._hinted: dict[str, datetime] = {}
        self._hint = anyio.Event()
        self.hinted_passes = 0  # orders asked about because of a hint
        # bumped before and after every status applied to the ledger: a position read while it
        # stood still saw no fill of this worker's orders (`Tenure.position` caches on it)
        self.changes = 0

    # -- the placer's side ----------------------------------------------------------------

    def claim(self, cid: str, symbol: str) -> None:
        """A placer is about to create and submit `cid`: leave it alone until `hand`."""
        self._in_hand[cid] = symbol

    def hand(self, order: OrderRecord, cancel_at: datetime | None) -> None:
        """Follow `order` from now on; cancel what is still working at `cancel_at`."""
        self._in_hand.pop(order.client_order_id, None)
        known = self._followed.get(order.client_order_id)
        if known is None:
            self._followed[order.client_order_id] = _Followed(order, cancel_at)
        else:
            known.order, known.cancel_at = order, cancel_at
        self._wake.set()
        if order.broker_order_id in self._hinted:  # its notice came before the hand-over
            self._hint.set()

    def refresh_order(self, broker_order_id: str) -> None:
        """The broker hinted that this order changed: ask about it now (if it is followed
        here, or handed over within the next poll interval), not at the next poll."""
        self._hinted[broker_order_id] = self.clock.now()
        self._hint.set()

    def release_claim(self, cid: str) -> None:
        """The placer never got the order into the ledger: nothing to follow."""
        self._in_hand.pop(cid, None)

    async def final(self, cid: str) -> OrderRecord:
        """Wait until the tracker has seen `cid` reach a final state; return that record."""
        followed = self._followed[cid]
        await wait_event(self.clock, followed.done)  # on a virtual clock, without holding time
        assert followed.final is not None
        return followed.final

    def working(self, symbol: str) -> bool:
        """Whether an order of this worker on `symbol` is in flight (claimed or followed)."""
        return symbol in self._in_hand.values() or any(
            f.order.symbol == symbol for f in self._followed.values()
        )

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        # its polls decide when fills reach the ledger: a participant of a virtual clock
        with participating(self.clock, f"{self.worker_id}/tracker"):
            if not isinstance(self.broker, FillHints):
                await self._loop()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow_hints, self.broker)
                await self._loop()
        raise AssertionError("the tracker loop never ends")  # pragma: no cover

    async def _follow_hints(self, source: FillHints) -> None:
        async for broker_order_id in source.fill_hints(self.worker_id):
            self.refresh_order(broker_order_id)

    async def _loop(self) -> NoReturn:
        while True:
            try:
                await self.refresh_if_due()
                await self.pass_once()
            except (LedgerError, BrokerError) as exc:
                self.log.warning("order tracker pass failed, retrying: {!r}", exc)
            if self._followed:
                await self._sleep_answering_hints(self.poll_s)
            else:
                # nothing to follow: sleep until a placer hands an order over (or a refresh
                # is due, in clock seconds)
                self._wake = anyio.Event()
                await wait_event(self.clock, self._wake, _REFRESH_S)

    async def refresh_if_due(self) -> None:
        now = self.clock.now()
        if self._refreshed_at is None or (now - self._refreshed_at).total_seconds() >= _REFRESH_S:
            await self.refresh()

    async def refresh(self) -> None:
        """Pick up the worker's unfinished orders that nobody here follows yet (a restart, an
        adoption, a placer that unwound before handing its order over)."""
        self._refreshed_at = self.clock.now()
        for order in await self.ledger.unfinished_orders(self.worker_id):
            cid = order.client_order_id
            if cid in self._followed or cid in self._in_hand:
                continue
            if order.status is OrderState.NEW:
                continue  # never submitted: its symbol's next tenure withdraws it
            self._followed[cid] = _Followed(order, None)

    async def _sleep_answering_hints(self, seconds: float) -> None:
        """Sleep `seconds` (clock), asking the broker at once about each hinted order."""
        slept = anyio.Event()

        async def sleeper() -> None:
            await self.clock.sleep(seconds)
            slept.set()
            self._hint.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            while True:
                await self._hint.wait()
                self._hint = anyio.Event()
                if slept.is_set():
                    break
                await self._answer_hints()

    async def _answer_hints(self) -> None:
        now = self.clock.now()
        for followed in list(self._followed.values()):
            bid = followed.order.broker_order_id
            hinted = bid is not None and self._hinted.pop(bid, None) is not None
            if hinted and not followed.done.is_set():
                self.hinted_passes += 1
                await self._drive_logged(followed.order.client_order_id, followed)
        # hints of orders not handed over yet wait one poll interval for their hand-over
        for oid, at in list(self._hinted.items()):
            if (now - at).total_seconds() > self.poll_s:
                del self._hinted[oid]

    async def pass_once(self) -> None:
        for cid in list(self._followed):
            followed = self._followed.get(cid)
            if followed is None or followed.done.is_set():
                continue
            await self._drive_logged(cid, followed)

    async def _drive_logged(self, cid: str, followed: _Followed) -> None:
        """`drive` with the broker's and the ledger's errors logged (asked again later)."""
        try:
            await self.drive(followed)
        except LedgerUnavailable as exc:
            self.log.warning("order {}: ledger unavailable, retrying: {}", cid, exc)
        except LedgerError as exc:
            # the broker's report contradicts the ledger: an alarm, never applied, asked
            # again next pass (the tenure gives the symbol up if it stays unresolved)
            self.log.error("order {}: broker report refused by the ledger: {}", cid, exc)
        except BrokerError as exc:
            self.log.warning("order {}: broker error, retrying: {!r}", cid, exc)

    async def resolve(self, symbol: str, deadline: datetime | None = None) -> bool:
        """Drive every followed order on `symbol` until final (cancelling what works), or
        until `deadline` (clock). True when none is left unfinished."""
        await self.refresh()
        while True:
            pending = [
                f
                for f in self._followed.values()
                if f.order.symbol == symbol and not f.done.is_set()
            ]
            if not pending:
                return True
            for f in pending:
                f.cancel_at = None  # the tenure starts from a clean slate on the symbol
            await self.pass_once()
            if all(f.done.is_set() for f in pending):
                return True
            if deadline is not None and self.clock.now() >= deadline:
                return False
            await self.clock.sleep(self.poll_s)

    # -- one order --------------------------------------------------------------------------

    async def drive(self, followed: _Followed) -> None:
        order = followed.order
        if order.status in _LOOKUP or order.broker_order_id is None:
            order = await self._look_up(order)
            followed.order = order
            if order.broker_order_id is None:
                if order.status in (OrderState.REJECTED, OrderState.WITHDRAWN):
                    self._finish(followed, order, NOT_PLACED)
                    await self._announce_failure(order)
                return
        assert order.broker_order_id is not None
        try:
            status = await self.broker.order_status(order.broker_order_id)
            now = self.clock.now()
            cancel_due = followed.cancel_at is None or now >= followed.cancel_at
            if not status.done and cancel_due:
                status = await self.broker.cancel_order(order.broker_order_id)
        except UnknownOrder:
            # acknowledged but not listed yet (brokers list late): ask again next pass
            self.log.warning("order {} ({}) not listed yet", order.client_order_id,
                             order.broker_order_id)  # fmt: skip
            return
        if _applied(order, status):
            return  # the ledger holds this report already: nothing to write or re-read
        record = await self.apply(order.client_order_id, status)
        followed.order = record
        if record.status in TERMINAL:
            self._finish(followed, record, record.status.value)
            await self._announce_failure(record)

    def _finish(self, followed: _Followed, record: OrderRecord, outcome: str) -> None:
        followed.final = record
        followed.done.set()
        self._followed.pop(record.client_order_id, None)
        latency = (self.clock.now() - record.created_at).total_seconds()
        placed = outcome != NOT_PLACED
        self.metrics.order_done(record.side, outcome, latency if placed else None)

    async def _look_up(self, order: OrderRecord) -> OrderRecord:
        """Find a SUBMITTING/UNKNOWN order at the broker. Linked when found; "not placed" only
        once the broker had the listing lag to show it; otherwise left UNKNOWN."""
        cid = ClientOrderId(order.client_order_id)
        fresh = await self.ledger.order(cid)  # the placer may have linked it meanwhile
        if fresh is not None and (fresh.broker_order_id is not None or fresh.status in TERMINAL):
            return fresh
        known = await self.ledger.known_broker_order_ids(order.symbol, self.trading_day)
        since = order.created_at - timedelta(seconds=1)
        asked_at = self.clock.now()
        found = await self.broker.find_orders(order.symbol, order.side, order.qty, since)
        for status in found:
            if status.broker_order_id not in known:
                self.log.info("order {} found at the broker as {}", cid, status.broker_order_id)
                return await self.ledger.mark_order_sent(cid, status.broker_order_id, asked_at)
        if asked_at - order.created_at >= self.listing_lag:
            self.log.warning("order {} not listed {} after its submit: not placed", cid,
                             self.listing_lag)  # fmt: skip
            return await self.ledger.mark_order(
                cid, OrderState.REJECTED, asked_at, "not placed (not listed after the lag)"
            )
        if order.status is not OrderState.UNKNOWN:
            return await self.ledger.mark_order(cid, OrderState.UNKNOWN, asked_at, "not listed yet")
        return order

    async def apply(self, cid: str, status: OrderStatus) -> OrderRecord:
        """Apply the broker's cumulative report to the ledger (idempotent) and announce fills."""
        board = self.boards.get(status.symbol)
        if board is None:
            # outside this process's universe: the 2026 sell tax totals the same on both
            # boards; only its split differs
            self.log.warning("board of {} unknown; taxing it as KOSPI", status.symbol)
            board = Board.KOSPI
        self.changes += 1
        try:
            result = await self.ledger.apply_order_status(
                ClientOrderId(cid), status, board, self.clock.now()
            )
        finally:
            self.changes += 1
        if result.closed_trade is not None:
            self.metrics.trade_closed(result.closed_trade.pnl)
        for fill in result.new_fills:
            await self._announce(cid, status, fill.qty, str(fill.price), fill.cum_qty)
        record = await self.ledger.order(cid)
        assert record is not None
        return record

    async def _announce(
        self, cid: str, status: OrderStatus, qty: int, price: str, cum_qty: int
    ) -> None:
        data = {
            "client_order_id": cid,
            "broker_order_id": status.broker_order_id,
            "side": status.side.value,
            "qty": qty,
            "price": price,
            "cum_qty": cum_qty,
        }
        try:
            await self.notices.publish(NoticeType.ORDER_FILLED, self.worker_id, status.symbol, data)
        except CoordinationError as exc:
            # the ledger holds the fill; the notice is for watchers and must not stop a sale
            # while Redis is away
            self.log.error("order.filled notice for {} not published: {}", cid, exc)

    async def _announce_failure(self, order: OrderRecord) -> None:
        """``order.failed`` for an order that ended REJECTED (refused by the broker, or not
        placed after the client's retries): the fleet's alerts tell a person."""
        if order.status is not OrderState.REJECTED:
            return
        data = {
            "client_order_id": order.client_order_id,
            "broker_order_id": order.broker_order_id,
            "side": order.side.value,
            "order_type": order.order_type.value,
            "qty": order.qty,
            "price": order.price,
            "status_reason": order.status_reason,
        }
        try:
            await self.notices.publish(NoticeType.ORDER_FAILED, self.worker_id, order.symbol, data)
        except CoordinationError as exc:
            self.log.error("order.failed notice for {} not published: {}",
                           order.client_order_id, exc)  # fmt: skip

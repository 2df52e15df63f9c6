"""The order path: intent row first, then the broker, then fills applied from broker status.

    create_order (fenced INSERT)  ->  submit_order  ->  mark_order_sent  ->  poll order_status
                                                                            -> apply_order_status
The ledger row exists before the broker is called, and the database refuses it when the
worker's fence is not the newest for the symbol (Invariant 1), or for a BUY once the day's loss
limit is reached (Invariant 5). A submit whose outcome is unknown is never resent: the order
is looked up with `find_orders` and either linked or marked not placed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import anyio
from loguru import logger

from broker.errors import (
    BrokerError,
    BrokerUnavailable,
    OrderOutcomeUnknown,
    OrderRejected,
    UnknownOrder,
)
from broker.port import (
    Broker,
    BrokerOrderId,
    ClientOrderId,
    OrderAck,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
)
from coordination.errors import CoordinationError
from coordination.notices import Notices, NoticeType
from ledger.applying import target_state
from ledger.errors import LossLimitReached, StaleFence
from ledger.orders import OrderState
from ledger.records import OrderIntent
from ledger.repository import Ledger
from market.clock import Clock
from market.types import Board
from trading.metrics import NOT_PLACED, NULL_METRICS, WorkerMetrics

_MAX_STATUS_FAILURES = 20


class LeaseInvalid(Exception):
    """The worker may no longer act on the symbol (lease lost or fence stale)."""


class BuyRefused(Exception):
    """The risk guard refused a BUY (daily loss limit)."""


@dataclass(frozen=True, slots=True)
class Placement:
    symbol: str
    side: Side
    qty: int
    order_type: OrderType
    price: Decimal | None
    fence: int
    reason: str
    signal_price: Decimal | None
    tier: int | None = None


class OrderExecutor:
    """Carries one order from intent to its final broker state, for one worker."""

    def __init__(
        self,
        *,
        worker_id: str,
        broker: Broker,
        ledger: Ledger,
        notices: Notices,
        clock: Clock,
        boards: dict[str, Board],
        trading_day: datetime,
        capital_limit: Decimal,
        daily_loss_limit: Decimal,
        poll_s: float,
        metrics: WorkerMetrics = NULL_METRICS,
    ) -> None:
        self.worker_id = worker_id
        self.broker = broker
        self.ledger = ledger
        self.notices = notices
        self.clock = clock
        self.boards = boards
        self.trading_day = trading_day.date()
        self.capital_limit = capital_limit
        self.daily_loss_limit = daily_loss_limit
        self.poll_s = poll_s
        self.metrics = metrics
        self.log = logger.bind(worker=worker_id if len(worker_id) <= 16 else worker_id[:8])

    async def execute(
        self, p: Placement, deadline: datetime, *, buy_cutoff: datetime | None = None
    ) -> OrderStatus | None:
        """Place one order and follow it until done or `deadline` (then cancel the rest).

        Returns the final status, or None when nothing was placed (rejected, broker down).
        Raises `LeaseInvalid` when the ledger refuses the fence, `BuyRefused` on the loss limit.
        """
        cid = ClientOrderId(str(uuid.uuid4()))
        now = self.clock.now()
        buy = p.side is Side.BUY
        if buy and buy_cutoff is not None and now >= buy_cutoff:
            # checked against the very instant recorded as the order's created_at
            raise BuyRefused(f"no new buys from {buy_cutoff:%H:%M:%S} (liquidation window)")
        intent = OrderIntent(
            client_order_id=cid,
            worker_id=self.worker_id,
            symbol=p.symbol,
            side=p.side,
            order_type=p.order_type,
            qty=p.qty,
            price=p.price,
            fence=p.fence,
            reason=p.reason,
            signal_price=p.signal_price,
            trading_day=self.trading_day,
            created_at=now,
            capital_limit=self.capital_limit if buy else None,
            daily_loss_limit=self.daily_loss_limit if buy else None,
            tier=p.tier,
        )
        try:
            await self.ledger.create_order(intent)
        except StaleFence as exc:
            self.log.error("order refused by the ledger: stale fence {} on {}", p.fence, p.symbol)
            raise LeaseInvalid(str(exc)) from exc
        except LossLimitReached as exc:
            raise BuyRefused(str(exc)) from exc
        request = OrderRequest(p.symbol, p.side, p.qty, p.order_type, p.price)
        ack = await self._submit(cid, request, now)
        if ack is None:
            self.metrics.order_done(p.side, NOT_PLACED, None)
            return None
        await self.ledger.mark_order_sent(cid, ack.broker_order_id, self.clock.now())
        final = await self.follow(cid, ack.broker_order_id, deadline)
        latency_s = (self.clock.now() - now).total_seconds()
        self.metrics.order_done(p.side, target_state(p.qty, final).value, latency_s)
        return final

    async def _submit(
        self, cid: ClientOrderId, request: OrderRequest, created_at: datetime
    ) -> OrderAck | None:
        try:
            return await self.broker.submit_order(request)
        except OrderRejected as exc:
            self.log.warning("order rejected on {}: {}", request.symbol, exc.reason)
            await self.ledger.mark_order(cid, OrderState.REJECTED, self.clock.now(), exc.reason)
            return None
        except BrokerUnavailable as exc:
            self.log.error("broker unavailable, {} not placed: {}", request.symbol, exc)
            reason = f"not placed: {exc}"
            await self.ledger.mark_order(cid, OrderState.REJECTED, self.clock.now(), reason)
            return None
        except OrderOutcomeUnknown as exc:
            self.log.error("order outcome unknown on {}: {}; reconciling", request.symbol, exc)
            await self.ledger.mark_order(cid, OrderState.UNKNOWN, self.clock.now(), str(exc))
            return await self.reconcile(cid, request, created_at)

    async def reconcile(
        self, cid: ClientOrderId, request: OrderRequest, since: datetime
    ) -> OrderAck | None:
        """Resolve an unknown outcome by looking the order up; never resend blindly."""
        known = await self.ledger.known_broker_order_ids(request.symbol, self.trading_day)
        for attempt in range(5):
            try:
                found = await self.broker.find_orders(
                    request.symbol, request.side, request.qty, since - timedelta(seconds=1)
                )
            except BrokerError as exc:
                self.log.warning("reconcile lookup failed (attempt {}): {}", attempt + 1, exc)
                await anyio.sleep(0.05 * 2**attempt)
                continue
            for status in found:
                if status.broker_order_id not in known:
                    self.log.info("reconciled {} as broker order {}", cid, status.broker_order_id)
                    return OrderAck(status.broker_order_id, status.ordered_at)
            await self.ledger.mark_order(
                cid, OrderState.REJECTED, self.clock.now(), "not placed (reconciled)"
            )
            return None
        self.log.error("order {} left UNKNOWN: broker lookup failed", cid)
        return None

    async def follow(
        self, cid: ClientOrderId, broker_id: BrokerOrderId, deadline: datetime
    ) -> OrderStatus:
        """Poll the broker and apply fills until the order is done; cancel it at `deadline`."""
        failures = 0
        while True:
            try:
                status = await self.broker.order_status(broker_id)
                if not status.done and self.clock.now() >= deadline:
                    status = await self.broker.cancel_order(broker_id)
            except (BrokerUnavailable, UnknownOrder) as exc:
                # UnknownOrder right after a submit: some brokers list an order a moment late
                failures += 1
                self.log.warning("order status unavailable ({}): {!r}", failures, exc)
                if failures >= _MAX_STATUS_FAILURES:
                    raise
                await anyio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            await self.apply(cid, status)
            if status.done:
                return status
            await self.clock.sleep(self.poll_s)

    async def apply(self, cid: ClientOrderId, status: OrderStatus) -> None:
        board = self.boards.get(status.symbol)
        if board is None:
            # outside this process's universe (e.g. adopted from another KIS universe): the
            # 2026 sell tax totals the same on both boards; only its split differs
            self.log.warning("board of {} unknown; taxing it as KOSPI", status.symbol)
            board = Board.KOSPI
        result = await self.ledger.apply_order_status(cid, status, board, self.clock.now())
        if result.closed_trade is not None:
            self.metrics.trade_closed(result.closed_trade.pnl)
        for fill in result.new_fills:
            data = {
                "client_order_id": cid,
                "broker_order_id": status.broker_order_id,
                "side": status.side.value,
                "qty": fill.qty,
                "price": str(fill.price),
                "cum_qty": fill.cum_qty,
            }
            try:
                await self.notices.publish(
                    NoticeType.ORDER_FILLED, self.worker_id, status.symbol, data
                )
            except CoordinationError as exc:
                # the ledger holds the fill; the notice is for watchers and must not stop a
                # sale while Redis is away
                self.log.error("order.filled notice for {} not published: {}", cid, exc)
